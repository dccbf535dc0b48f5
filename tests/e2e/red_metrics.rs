//! Goal: the issue's promise end to end with the real OpenTelemetry Python SDK — RED metrics
//! count every span sent while the backend keeps 5%, exemplars open only traces the backend
//! has whole, and a backend re-weighting kept spans by their `ot=th` threshold recovers the
//! span count sent. Method: one gateway with the user's config form (a sampling pipeline at
//! 5% with the `usetracestate` gate, a second traces pipeline into `spanmetrics`, a metrics
//! pipeline to `prometheus` and to `otlp`), the SDK sending 5,000 two-span traces; the
//! scrape, the OTLP metrics and the trace sink are compared with what the SDK reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::python_sdk::python_send_args;
use crate::support::{Gateway, Sink, free_port, scrape};

const TRACES: u32 = 5_000;
const SPANS_PER_TRACE: u32 = 2;
const SAMPLING_PERCENTAGE: f64 = 5.0;

/// The latest cumulative `calls` value per series the OTLP metrics sink received.
#[derive(Clone, Default)]
struct MetricsSink {
    calls: Arc<Mutex<BTreeMap<String, i64>>>,
}

#[tonic::async_trait]
impl MetricsService for MetricsSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut calls = self.calls.lock().unwrap();
        for m in request
            .get_ref()
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == "traces.span.metrics.calls")
        {
            let Some(metric::Data::Sum(sum)) = &m.data else {
                continue;
            };
            for p in &sum.data_points {
                let key = format!("{:?}", p.attributes);
                if let Some(number_data_point::Value::AsInt(v)) = p.value {
                    calls.insert(key, v);
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn config(sink: std::net::SocketAddr, prometheus: u16, metrics_sink: u16) -> String {
    format!(
        r"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{{grpc}}
      http:
        endpoint: 127.0.0.1:{{http}}
processors:
  tail_sampling:
    decision_wait: 1s
    policies:
      - {{name: five-percent, type: probabilistic, probabilistic: {{sampling_percentage: {SAMPLING_PERCENTAGE}}}}}
connectors:
  spanmetrics:
    dimensions: [{{name: http.route}}]
    exemplars: {{enabled: true}}
    metrics_flush_interval: 1s
exporters:
  otlp/sink:
    endpoint: {sink}
    tls: {{insecure: true}}
  prometheus:
    endpoint: 127.0.0.1:{prometheus}
    enable_open_metrics: true
  otlp/metrics:
    endpoint: 127.0.0.1:{metrics_sink}
    tls: {{insecure: true}}
extensions:
  health_check:
    endpoint: 127.0.0.1:{{health}}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: 127.0.0.1:{{metrics}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [otlp/sink]
    traces/spanmetrics:
      receivers: [otlp]
      exporters: [spanmetrics]
    metrics:
      receivers: [spanmetrics]
      exporters: [prometheus, otlp/metrics]
"
    )
}

/// The sum of `traces_span_metrics_calls_total` over every series, and the exemplars'
/// trace IDs.
fn calls_and_exemplars(text: &str) -> (f64, BTreeSet<String>) {
    let mut calls = 0.0;
    let mut exemplars = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("traces_span_metrics_calls_total{"))
    {
        let (sample, exemplar) = line.split_once(" # ").unwrap_or((line, ""));
        calls += sample
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if let Some(at) = exemplar.find("trace_id=\"") {
            exemplars.insert(exemplar[at + 10..at + 42].to_string());
        }
    }
    (calls, exemplars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_metrics_count_every_span_while_five_percent_is_kept_and_thresholds_reweight() {
    let (sink, sink_addr) = Sink::start().await;
    let metrics_sink = MetricsSink::default();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_port = metrics_listener.local_addr().unwrap().port();
    let server = MetricsServiceServer::new(metrics_sink.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                metrics_listener,
            )),
    );
    let prometheus = free_port();
    let mut gw = Gateway::start_with_args(
        &config(sink_addr, prometheus, metrics_port),
        &["--feature-gates=processor.tailsamplingprocessor.usetracestate"],
    )
    .await;
    let endpoint = gw.grpc_url();
    let sent = tokio::task::spawn_blocking(move || {
        python_send_args("grpc", &endpoint, TRACES, &["--children", "1"])
    })
    .await
    .unwrap();
    assert_eq!(sent["export_failures"], 0);
    let spans_sent = f64::from(TRACES * SPANS_PER_TRACE);

    // Every span is counted once the last flush after the last span has gone out.
    let mut counted = 0.0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        counted = calls_and_exemplars(&scrape(prometheus, false).await).0;
        if counted >= spans_sent {
            break;
        }
    }
    assert_eq!(
        counted,
        spans_sent,
        "span metrics count 100% of the spans sent; connector saw {} spans, receiver accepted {}; scrape:\n{}",
        gw.metric("tailgate_spanmetrics_spans_total", "").await,
        gw.metric("otelcol_receiver_accepted_spans_total", "").await,
        scrape(prometheus, false).await
    );
    let mut otlp_counted = 0;
    for _ in 0..20 {
        otlp_counted = metrics_sink.calls.lock().unwrap().values().sum::<i64>();
        if otlp_counted == i64::from(TRACES * SPANS_PER_TRACE) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        otlp_counted,
        i64::from(TRACES * SPANS_PER_TRACE),
        "OTLP metrics too; sent {} points, failed {}; log:\n{}",
        gw.metric("otelcol_exporter_sent_metric_points_total", "")
            .await,
        gw.metric("otelcol_exporter_send_failed_metric_points_total", "")
            .await,
        gw.log()
    );

    // The backend's view: kept spans grouped by trace, each with its threshold.
    // Decisions are due 1 s after each trace's first span: the last ones are out by now,
    // two seconds after the last flush counted every span.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = sink.spans();
    let mut by_trace: BTreeMap<String, u32> = BTreeMap::new();
    let mut reweighted = 0.0;
    for s in &kept {
        *by_trace.entry(hex::encode(&s.trace_id)).or_default() += 1;
        let th = s
            .trace_state
            .split(',')
            .find_map(|m| m.strip_prefix("ot="))
            .and_then(|ot| ot.split(';').find_map(|f| f.strip_prefix("th:")))
            .unwrap_or_else(|| panic!("kept span without ot=th: {:?}", s.trace_state));
        let threshold = u64::from_str_radix(&format!("{th:0<14}"), 16).unwrap();
        let probability = ((1u64 << 56) - threshold) as f64 / (1u64 << 56) as f64;
        reweighted += 1.0 / probability;
    }
    assert!(
        by_trace.values().all(|n| *n == SPANS_PER_TRACE),
        "kept traces arrive whole"
    );
    // The kept count is binomial: re-weighting must land within four standard deviations.
    let p = SAMPLING_PERCENTAGE / 100.0;
    let sigma_traces = (f64::from(TRACES) * p * (1.0 - p)).sqrt();
    let tolerance = 4.0 * sigma_traces * f64::from(SPANS_PER_TRACE) / p;
    eprintln!(
        "sent {spans_sent} spans; kept {} ({} traces); re-weighted {reweighted:.0} (±{tolerance:.0})",
        kept.len(),
        by_trace.len()
    );
    assert!(
        (reweighted - spans_sent).abs() <= tolerance,
        "re-weighted {reweighted} vs sent {spans_sent}, tolerance {tolerance}"
    );

    let om = scrape(prometheus, true).await;
    let (_, exemplars) = calls_and_exemplars(&om);
    assert!(!exemplars.is_empty(), "exemplars are served:\n{om}");
    for t in &exemplars {
        assert_eq!(
            by_trace.get(t),
            Some(&SPANS_PER_TRACE),
            "exemplar trace {t} is one the backend received whole"
        );
    }
    assert!(gw.terminate().await.success());
}
