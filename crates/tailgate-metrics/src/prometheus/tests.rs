//! Goal: the exposition names, labels and numbers are the collector's exporter's, and
//! OpenMetrics carries the exemplars. Method: a hand-built flush, rendered.

use serde_json::json;
use tailgate_otlp::{SpanId, TraceId};

use super::*;

fn store(extra: serde_json::Value) -> PrometheusStore {
    let mut cfg = json!({"endpoint": "127.0.0.1:8889"});
    cfg.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    PrometheusStore::new(&serde_json::from_value(cfg).unwrap())
}

fn attrs(list: &[(&str, &str)]) -> Attributes {
    list.iter()
        .map(|(k, v)| (k.to_string(), AttrValue::Str(v.to_string())))
        .collect::<Vec<_>>()
        .into()
}

fn batch(temporality: Temporality, calls: u64) -> MetricsBatch {
    let point = attrs(&[("service.name", "svc"), ("span.name", "GET /")]);
    let exemplar = Exemplar {
        trace_id: TraceId([0xab; 16]),
        span_id: SpanId([0xcd; 8]),
        value: 3.0,
        time_unix_nano: 2_000_000_000,
    };
    MetricsBatch {
        resources: vec![ResourceMetrics {
            resource: attrs(&[("service.name", "svc"), ("host.name", "h1")]),
            scope_name: "spanmetricsconnector",
            metrics: vec![
                Metric {
                    name: "traces.span.metrics.calls".into(),
                    unit: "",
                    temporality,
                    data: MetricData::Sum(vec![SumPoint {
                        attributes: point.clone(),
                        start_unix_nano: 1_000_000_000,
                        time_unix_nano: 2_000_000_000,
                        value: calls,
                        exemplars: vec![exemplar],
                    }]),
                },
                Metric {
                    name: "traces.span.metrics.duration".into(),
                    unit: "ms",
                    temporality,
                    data: MetricData::Histogram {
                        bounds: vec![2.0, 4.0].into(),
                        points: vec![HistogramPoint {
                            attributes: point,
                            start_unix_nano: 1_000_000_000,
                            time_unix_nano: 2_000_000_000,
                            count: 3,
                            sum: 7.5,
                            bucket_counts: vec![1, 1, 1],
                            exemplars: vec![exemplar],
                        }],
                    },
                },
            ],
        }],
    }
}

const LABELS: &str = r#"job="svc",otel_scope_name="spanmetricsconnector",otel_scope_schema_url="",otel_scope_version="",service_name="svc",span_name="GET /""#;

#[test]
fn text_format_uses_the_collectors_names_and_labels() {
    let mut s = store(json!({}));
    s.apply(&batch(Temporality::Cumulative, 5), Duration::ZERO);
    let text = s.render(false);
    let labels = LABELS;
    let want = format!(
        "# HELP target_info Target metadata\n# TYPE target_info gauge\ntarget_info{{host_name=\"h1\",job=\"svc\"}} 1\n\
# TYPE traces_span_metrics_calls_total counter\ntraces_span_metrics_calls_total{{{labels}}} 5\n\
# TYPE traces_span_metrics_duration_milliseconds histogram\n\
traces_span_metrics_duration_milliseconds_bucket{{{labels},le=\"2\"}} 1\n\
traces_span_metrics_duration_milliseconds_bucket{{{labels},le=\"4\"}} 2\n\
traces_span_metrics_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} 3\n\
traces_span_metrics_duration_milliseconds_sum{{{labels}}} 7.5\n\
traces_span_metrics_duration_milliseconds_count{{{labels}}} 3\n"
    );
    assert_eq!(text, want);
}

#[test]
fn open_metrics_carries_exemplars_and_created_times() {
    let mut s = store(json!({"enable_open_metrics": true}));
    s.apply(&batch(Temporality::Cumulative, 5), Duration::ZERO);
    let text = s.render(true);
    let ex = format!(
        "# {{span_id=\"{}\",trace_id=\"{}\"}} 3.0 2.0",
        "cd".repeat(8),
        "ab".repeat(16)
    );
    assert!(
        text.contains("# TYPE traces_span_metrics_calls counter\n"),
        "{text}"
    );
    assert!(text.contains(&format!("}} 5.0 {ex}\n")), "{text}");
    assert!(
        text.contains("traces_span_metrics_calls_created{"),
        "{text}"
    );
    // 3 ms falls in (2, 4]: the exemplar is on that bucket only.
    assert!(text.contains(&format!("le=\"4.0\"}} 2 {ex}\n")), "{text}");
    assert!(!text.contains(&format!("le=\"2.0\"}} 1 {ex}")), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn deltas_add_up_and_idle_series_expire() {
    let mut s = store(json!({"metric_expiration": "1m", "namespace": "tg"}));
    s.apply(&batch(Temporality::Delta, 2), Duration::ZERO);
    s.apply(&batch(Temporality::Delta, 3), Duration::from_secs(10));
    assert!(s.render(false).contains("} 5\n"), "{}", s.render(false));
    assert!(
        s.render(false)
            .contains("tg_traces_span_metrics_calls_total{")
    );
    s.expire(Duration::from_secs(69));
    assert!(s.render(false).contains("calls_total"));
    s.expire(Duration::from_secs(71));
    assert_eq!(s.render(false), "");
}

#[test]
fn go_float_formats_as_the_collector_writes_numbers() {
    assert_eq!(go_float(2.0), "2");
    assert_eq!(go_float(15000.0), "15000");
    assert_eq!(go_float(0.25), "0.25");
    assert_eq!(go_float(1e21), "1e+21");
    assert_eq!(go_float(0.00001), "1e-05");
}
