//! Goal: the connector's series, counts and buckets are the collector's, and exemplars name
//! only kept traces. Method: spans built with the generated types, scanned, aggregated;
//! flushes read back.

use std::collections::BTreeSet;

use serde_json::json;
use tailgate_otlp::proto::common::v1::any_value::Value;
use tailgate_otlp::proto::trace::v1::Span;
use tailgate_otlp::scan_export_request;
use tailgate_test_support::{encoded, kv, status, string};

use super::*;

const S: Duration = Duration::from_secs(1);

fn config(v: serde_json::Value) -> SpanMetricsConfig {
    serde_json::from_value(v).unwrap()
}

/// `(trace, span, name, kind, status, duration ms, attributes)`.
type SpanSpec<'a> = (u8, u8, &'a str, i32, i32, u64, Vec<(&'a str, Value)>);

/// Spans under service `svc`.
fn spans(list: &[SpanSpec<'_>]) -> Vec<EncodedSpan> {
    let spans = list
        .iter()
        .map(|(t, n, name, kind, code, ms, attrs)| Span {
            trace_id: vec![*t; 16],
            span_id: vec![*n; 8],
            name: (*name).into(),
            kind: *kind,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            status: status(*code),
            attributes: attrs.iter().map(|(k, v)| kv(k, v.clone())).collect(),
            ..Default::default()
        })
        .collect();
    let body = encoded(
        vec![
            kv("service.name", string("svc")),
            kv("host.name", string("h1")),
        ],
        spans,
    );
    scan_export_request(&body).unwrap().spans
}

fn label(attrs: &[(String, AttrValue)], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_label())
}

fn calls(batch: &MetricsBatch) -> Vec<(String, String, u64)> {
    let mut out: Vec<(String, String, u64)> = Vec::new();
    for r in &batch.resources {
        if let MetricData::Sum(points) = &r.metrics[0].data {
            for p in points {
                out.push((
                    label(&p.attributes, "span.name").unwrap_or_default(),
                    label(&p.attributes, "status.code").unwrap_or_default(),
                    p.value,
                ));
            }
        }
    }
    out.sort();
    out
}

fn flush_all_kept(m: &mut SpanMetrics, now: Duration) -> MetricsBatch {
    m.flush(now, 42, &mut |_, _| Fate::Kept, &mut Vec::new())
}

#[test]
fn calls_and_durations_per_label_set_as_the_collector_counts_them() {
    let mut m = SpanMetrics::new(&config(json!({})), "instance-1".into(), 1);
    let batch = spans(&[
        (1, 1, "GET /", 2, 0, 3, vec![]),
        (1, 2, "GET /", 2, 0, 7, vec![]),
        (2, 1, "GET /", 2, 2, 120, vec![]),
        (3, 1, "query", 3, 0, 1, vec![]),
    ]);
    m.ingest(&batch, S, 10, &mut Vec::new());
    // A cumulative sum's first flush reports 0, as the collector's does.
    let first = flush_all_kept(&mut m, 2 * S);
    assert!(calls(&first).iter().all(|(_, _, v)| *v == 0));
    let second = flush_all_kept(&mut m, 3 * S);
    assert_eq!(
        calls(&second),
        [
            ("GET /".into(), "STATUS_CODE_ERROR".into(), 1),
            ("GET /".into(), "STATUS_CODE_UNSET".into(), 2),
            ("query".into(), "STATUS_CODE_UNSET".into(), 1),
        ]
    );
    let r = &second.resources[0];
    assert_eq!(r.metrics[1].name, "traces.span.metrics.duration");
    assert_eq!(r.metrics[1].unit, "ms");
    let MetricData::Histogram { bounds, points } = &r.metrics[1].data else {
        panic!("a histogram");
    };
    assert_eq!(bounds[0], 2.0);
    let ok = points
        .iter()
        .find(|p| {
            label(&p.attributes, "span.name").as_deref() == Some("GET /")
                && label(&p.attributes, "status.code").as_deref() == Some("STATUS_CODE_UNSET")
        })
        .unwrap();
    assert_eq!((ok.count, ok.sum), (2, 10.0));
    // 3 ms in (2, 4], 7 ms in (6, 8].
    assert_eq!(&ok.bucket_counts[..5], &[0, 1, 0, 1, 0]);
    assert_eq!(
        label(&ok.attributes, "span.kind").as_deref(),
        Some("SPAN_KIND_SERVER")
    );
    assert_eq!(
        label(&ok.attributes, "collector.instance.id").as_deref(),
        Some("instance-1")
    );
    assert_eq!(label(&r.resource, "host.name").as_deref(), Some("h1"));
}

#[test]
fn dimensions_take_the_span_then_the_resource_then_the_default() {
    let cfg = config(json!({
        "dimensions": [
            {"name": "http.route"},
            {"name": "host.name"},
            {"name": "tier", "default": "free"}
        ],
        "exclude_dimensions": ["span.kind"]
    }));
    let mut m = SpanMetrics::new(&cfg, "i".into(), 1);
    m.ingest(
        &spans(&[
            (1, 1, "a", 2, 0, 1, vec![("http.route", string("/x"))]),
            (1, 2, "a", 2, 0, 1, vec![("tier", string("paid"))]),
        ]),
        S,
        10,
        &mut Vec::new(),
    );
    let b = flush_all_kept(&mut m, 2 * S);
    let MetricData::Sum(points) = &b.resources[0].metrics[0].data else {
        panic!()
    };
    let sets: BTreeSet<Vec<String>> = points
        .iter()
        .map(|p| {
            p.attributes
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_label()))
                .collect()
        })
        .collect();
    let want: BTreeSet<Vec<String>> = [
        vec![
            "service.name=svc",
            "span.name=a",
            "status.code=STATUS_CODE_UNSET",
            "collector.instance.id=i",
            "http.route=/x",
            "host.name=h1",
            "tier=free",
        ],
        vec![
            "service.name=svc",
            "span.name=a",
            "status.code=STATUS_CODE_UNSET",
            "collector.instance.id=i",
            "host.name=h1",
            "tier=paid",
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(sets, want);
}

#[test]
fn past_the_cardinality_limit_spans_count_in_the_overflow_series() {
    let cfg = config(json!({"aggregation_cardinality_limit": 2, "histogram": {"disable": true}}));
    let mut m = SpanMetrics::new(&cfg, "i".into(), 1);
    m.ingest(
        &spans(&[
            (1, 1, "a", 1, 0, 1, vec![]),
            (1, 2, "b", 1, 0, 1, vec![]),
            (1, 3, "c", 1, 0, 1, vec![]),
            (1, 4, "d", 1, 0, 1, vec![]),
        ]),
        S,
        10,
        &mut Vec::new(),
    );
    flush_all_kept(&mut m, 2 * S);
    let b = flush_all_kept(&mut m, 3 * S);
    let MetricData::Sum(points) = &b.resources[0].metrics[0].data else {
        panic!()
    };
    let overflow: Vec<u64> = points
        .iter()
        .filter(|p| p.attributes[0].0 == OVERFLOW_ATTRIBUTE)
        .map(|p| p.value)
        .collect();
    assert_eq!(overflow, [2]);
    assert_eq!(
        points.iter().map(|p| p.value).sum::<u64>(),
        4,
        "every span counted"
    );
}

#[test]
fn exemplars_name_only_kept_traces_and_wait_for_undecided_ones() {
    let cfg = config(json!({"exemplars": {"enabled": true, "max_per_data_point": 2}}));
    let mut m = SpanMetrics::new(&cfg, "i".into(), 1);
    let mut watched = Vec::new();
    m.ingest(
        &spans(&[
            (1, 1, "a", 2, 0, 1, vec![]),
            (2, 1, "a", 2, 0, 1, vec![]),
            (3, 1, "a", 2, 0, 1, vec![]),
        ]),
        S,
        10,
        &mut watched,
    );
    assert_eq!(
        watched.len(),
        6,
        "each span is a candidate of calls and duration"
    );
    let kept = TraceId([1; 16]);
    let undecided = TraceId([3; 16]);
    let mut fate = |id: &TraceId, _: Duration| {
        if *id == kept {
            Fate::Kept
        } else if *id == undecided {
            Fate::Undecided
        } else {
            Fate::Gone
        }
    };
    let mut finished = Vec::new();
    let b = m.flush(2 * S, 42, &mut fate, &mut finished);
    let MetricData::Sum(points) = &b.resources[0].metrics[0].data else {
        panic!()
    };
    let ids: Vec<TraceId> = points[0].exemplars.iter().map(|e| e.trace_id).collect();
    assert_eq!(ids, [kept]);
    assert!(!finished.contains(&undecided), "still waiting");
    // The undecided trace is kept by the next flush.
    let b = m.flush(3 * S, 43, &mut |_, _| Fate::Kept, &mut finished);
    let MetricData::Sum(points) = &b.resources[0].metrics[0].data else {
        panic!()
    };
    let ids: Vec<TraceId> = points[0].exemplars.iter().map(|e| e.trace_id).collect();
    assert_eq!(ids, [undecided]);
}

#[test]
fn delta_temporality_reports_each_interval_once() {
    let cfg = config(json!({"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"}));
    let mut m = SpanMetrics::new(&cfg, "i".into(), 1);
    m.ingest(
        &spans(&[(1, 1, "a", 2, 0, 1, vec![])]),
        S,
        10,
        &mut Vec::new(),
    );
    let b = flush_all_kept(&mut m, 2 * S);
    assert_eq!(calls(&b), [("a".into(), "STATUS_CODE_UNSET".into(), 1)]);
    m.ingest(
        &spans(&[(1, 2, "a", 2, 0, 1, vec![])]),
        3 * S,
        50,
        &mut Vec::new(),
    );
    let b = m.flush(4 * S, 60, &mut |_, _| Fate::Kept, &mut Vec::new());
    let MetricData::Sum(points) = &b.resources[0].metrics[0].data else {
        panic!()
    };
    assert_eq!((points[0].value, points[0].start_unix_nano), (1, 42));
    assert!(
        calls(&flush_all_kept(&mut m, 5 * S)).is_empty(),
        "nothing new, nothing sent"
    );
}

/// Each point's labels (as one string) and count.
type CountsByLabels = Vec<(String, u64)>;

/// The calls' and the durations' counts by labels, of the first resource.
fn counts_by_labels(batch: &MetricsBatch) -> (CountsByLabels, CountsByLabels) {
    let labels = |attrs: &[(String, AttrValue)]| {
        attrs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_label()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let metrics = &batch.resources[0].metrics;
    let MetricData::Sum(calls) = &metrics[0].data else {
        panic!("calls first")
    };
    let MetricData::Histogram { points, .. } = &metrics[1].data else {
        panic!("duration second")
    };
    let mut calls: CountsByLabels = calls
        .iter()
        .map(|p| (labels(&p.attributes), p.value))
        .collect();
    let mut durations: CountsByLabels = points
        .iter()
        .map(|p| (labels(&p.attributes), p.count))
        .collect();
    calls.sort();
    durations.sort();
    (calls, durations)
}

#[test]
fn durations_keep_step_with_calls_through_overflow_and_expiry() {
    // Keyed alike, the duration histogram shares the calls table's lookup: the two must name
    // the same series with the same counts whatever comes and goes.
    let cfg = config(json!({
        "aggregation_cardinality_limit": 2,
        "aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"
    }));
    let mut m = SpanMetrics::new(&cfg, "i".into(), 1);
    let names = |list: &[&'static str], first: u8| -> Vec<SpanSpec<'static>> {
        list.iter()
            .enumerate()
            .map(|(i, n)| (1, first + i as u8, *n, 1, 0, 1 + i as u64, vec![]))
            .collect()
    };
    m.ingest(
        &spans(&names(&["a", "b", "c", "d", "a"], 1)),
        S,
        10,
        &mut Vec::new(),
    );
    let (calls, durations) = counts_by_labels(&flush_all_kept(&mut m, 2 * S));
    assert_eq!(calls, durations);
    assert_eq!(calls.iter().map(|c| c.1).sum::<u64>(), 5);
    assert!(
        calls
            .iter()
            .any(|c| c.0.starts_with(OVERFLOW_ATTRIBUTE) && c.1 == 2)
    );
    // Delta: what was not seen since goes; new names take the freed places.
    m.ingest(
        &spans(&names(&["b", "e", "f", "b"], 10)),
        3 * S,
        20,
        &mut Vec::new(),
    );
    let (calls, durations) = counts_by_labels(&flush_all_kept(&mut m, 4 * S));
    assert_eq!(calls, durations);
    assert_eq!(calls.iter().map(|c| c.1).sum::<u64>(), 4);
    // `a` expired at that flush (the tables shifted); the next spans still land alike.
    m.ingest(&spans(&names(&["b", "g"], 20)), 5 * S, 30, &mut Vec::new());
    let (calls, durations) = counts_by_labels(&flush_all_kept(&mut m, 6 * S));
    assert_eq!(calls, durations);
    assert_eq!(calls.iter().map(|c| c.1).sum::<u64>(), 2);
}
