//! Goal: each exporter delivers what the pipeline produced, in its format, and exporters in
//! one pipeline do not hold each other up beyond their own queues. Method: in-test backends
//! for OTLP/HTTP and OTLP/gRPC, the file exporter's output read back, the debug summary read
//! from the log.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::otlp::{kv, request, send_grpc, span, spans};
use crate::support::{Gateway, Sink, gateway_config};

#[derive(Clone, Default)]
struct HttpSink {
    requests: Arc<Mutex<Vec<(HeaderMap, ExportTraceServiceRequest)>>>,
}

async fn http_sink() -> (HttpSink, SocketAddr) {
    let sink = HttpSink::default();
    let s = sink.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                } else {
                    body.to_vec()
                };
                let req = ExportTraceServiceRequest::decode(&raw[..]).unwrap();
                s.requests.lock().unwrap().push((headers, req));
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (sink, addr)
}

#[tokio::test]
async fn otlphttp_exporter_sends_gzipped_protobuf_with_headers() {
    let (sink, _) = Sink::start().await;
    let (http, http_addr) = http_sink().await;
    let exporter = format!(
        "  otlphttp/backend:\n    endpoint: http://{http_addr}\n    headers:\n      x-api-key: k3y\n    compression: gzip\n"
    );
    let config = gateway_config(sink_addr_unused(), "", "batch", &exporter)
        .replace("exporters: [otlp/sink]", "exporters: [otlphttp/backend]");
    drop(sink);
    let gw = Gateway::start(&config).await;
    send_grpc(&gw.grpc_url(), request(spans(30))).await.unwrap();
    for _ in 0..200 {
        if http
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| count(r))
            .sum::<usize>()
            >= 30
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let reqs = http.requests.lock().unwrap().clone();
    assert_eq!(reqs.iter().map(|(_, r)| count(r)).sum::<usize>(), 30);
    let (headers, _) = &reqs[0];
    assert_eq!(headers.get("x-api-key").unwrap(), "k3y");
    assert_eq!(headers.get("content-encoding").unwrap(), "gzip");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    assert_eq!(
        gw.metric(
            "otelcol_exporter_sent_spans_total",
            "exporter=\"otlphttp/backend\""
        )
        .await,
        30.0
    );
}

fn sink_addr_unused() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

fn count(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

#[tokio::test]
async fn file_exporter_writes_otlp_json_lines_and_debug_logs_a_summary() {
    let (_sink, addr) = Sink::start().await;
    let exporters = "  file:\n    path: {dir}/out/traces.jsonl\n  debug:\n";
    let config = gateway_config(addr, "", "batch", exporters)
        .replace("exporters: [otlp/sink]", "exporters: [file, debug]");
    let mut gw = Gateway::start(&config).await;
    send_grpc(&gw.grpc_url(), request(spans(25))).await.unwrap();
    let path = gw.dir.path().join("out/traces.jsonl");
    let mut total = 0;
    for _ in 0..200 {
        total = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                count(
                    &serde_json::from_str::<ExportTraceServiceRequest>(l)
                        .expect("each line is OTLP/JSON"),
                )
            })
            .sum::<usize>();
        if total >= 25 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(total, 25);
    assert!(gw.terminate().await.success());
    let log = gw.log();
    assert!(
        log.contains("25 spans, 5 traces, 0 error spans"),
        "debug summary missing from log:\n{log}"
    );
}

#[tokio::test]
async fn a_stalled_exporter_does_not_hold_up_the_other_until_its_queue_is_full() {
    let (fast, fast_addr) = Sink::start().await;
    let (slow, slow_addr) = Sink::start().await;
    slow.behaviour.lock().unwrap().delay = Duration::from_secs(30);
    let slow_exporter = format!(
        "  otlp/slow:\n    endpoint: 127.0.0.1:{}\n    tls:\n      insecure: true\n    timeout: 60s\n    sending_queue:\n      num_consumers: 1\n      queue_size: 2\n",
        slow_addr.port()
    );
    let config = gateway_config(fast_addr, "", "batch", &slow_exporter)
        .replace(
            "exporters: [otlp/sink]",
            "exporters: [otlp/sink, otlp/slow]",
        )
        .replace("processors: [batch]", "processors: []");
    let gw = Gateway::start(&config).await;
    // Without a batch processor each request is one batch: 1 in flight + 2 queued at the slow one.
    for i in 0..3 {
        send_grpc(
            &gw.grpc_url(),
            request(vec![span(i, i, vec![kv("n", "1")])]),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = fast.wait_for_spans(3, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        3,
        "the healthy exporter got every batch while the other stalled"
    );
    // Now the slow queue is full: the next request is refused whole, retryably, and counted.
    let err = send_grpc(&gw.grpc_url(), request(vec![span(9, 9, vec![])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().contains("exporter queue full"),
        "{}",
        err.message()
    );
    assert_eq!(
        gw.metric(
            "otelcol_exporter_enqueue_failed_spans_total",
            "exporter=\"otlp/slow\""
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric("otelcol_exporter_queue_capacity", "exporter=\"otlp/slow\"")
            .await,
        2.0
    );
    assert_eq!(
        fast.spans().len(),
        3,
        "the refused batch went to neither exporter"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{}/", gw.ports.health))
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        503,
        "not ready while an exporter queue is full"
    );
    assert!(
        health
            .text()
            .await
            .unwrap()
            .contains("exporter queue full: otlp/slow")
    );
}

#[tokio::test]
async fn filter_and_resource_processors_shape_what_is_exported() {
    let (sink, addr) = Sink::start().await;
    let processors = r#"
  filter/health:
    error_mode: ignore
    traces:
      span:
        - 'attributes["http.route"] == "/healthz"'
        - 'attributes["http.route"] == "/readyz"'
  resource/env:
    attributes:
      - key: deployment.environment
        action: upsert
        value: staging
"#;
    let gw = Gateway::start(&gateway_config(
        addr,
        processors,
        "filter/health, resource/env, batch",
        "",
    ))
    .await;
    let batch = vec![
        span(1, 1, vec![kv("http.route", "/healthz")]),
        span(1, 2, vec![kv("http.route", "/orders")]),
        span(2, 3, vec![kv("http.route", "/readyz")]),
        span(2, 4, vec![]),
    ];
    send_grpc(&gw.grpc_url(), request(batch)).await.unwrap();
    let got = sink.wait_for_spans(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = sink.spans().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, vec!["span-1-2", "span-2-4"]);
    let resource = sink.received.lock().unwrap()[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert!(
        resource
            .attributes
            .contains(&kv("deployment.environment", "staging"))
    );
    assert!(resource.attributes.contains(&kv("service.name", "e2e")));
    assert_eq!(got.len(), 2);
    assert_eq!(
        gw.metric(
            "otelcol_processor_filter_spans_filtered_total",
            "processor=\"filter/health\""
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn otlp_exporter_verifies_the_backend_with_tls_ca_file() {
    tailgate_pipeline::install_crypto_provider();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (sink, addr) = Sink::start_tls(&cert.pem(), &signing_key.serialize_pem()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    // Trusted through ca_file: delivered. Without it (system roots only): refused by TLS.
    let exporters = format!(
        "  otlp/tls:\n    endpoint: localhost:{port}\n    tls:\n      ca_file: {ca}\n  otlp/untrusted:\n    endpoint: localhost:{port}\n    retry_on_failure:\n      enabled: false\n",
        port = addr.port(),
        ca = ca.display()
    );
    let config = gateway_config(sink_addr_unused(), "", "batch", &exporters).replace(
        "exporters: [otlp/sink]",
        "exporters: [otlp/tls, otlp/untrusted]",
    );
    let gw = Gateway::start(&config).await;
    send_grpc(&gw.grpc_url(), request(spans(10))).await.unwrap();
    let got = sink.wait_for_spans(10, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 10, "exactly the trusted exporter's copy");
    // The sink can hold the spans a moment before the exporter has counted the reply.
    for _ in 0..100 {
        let failed = gw
            .metric(
                "otelcol_exporter_send_failed_spans_total",
                "exporter=\"otlp/untrusted\"",
            )
            .await;
        let sent = gw
            .metric("otelcol_exporter_sent_spans_total", "exporter=\"otlp/tls\"")
            .await;
        if failed >= 10.0 && sent >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.metric("otelcol_exporter_sent_spans_total", "exporter=\"otlp/tls\"")
            .await,
        10.0
    );
    assert_eq!(
        gw.metric(
            "otelcol_exporter_send_failed_spans_total",
            "exporter=\"otlp/untrusted\""
        )
        .await,
        10.0
    );
    assert_eq!(sink.spans().len(), 10);
}
