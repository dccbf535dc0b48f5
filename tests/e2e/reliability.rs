//! Goal: nothing accepted is lost — failing backends are retried, memory pressure refuses
//! retryably instead of accepting and dropping, and SIGTERM drains the pipeline. Method:
//! sinks that fail or stall on purpose; counts from the sink and the gateway's metrics.

use std::time::Duration;

use crate::otlp::{request, send_grpc, spans};
use crate::support::{Gateway, Sink, gateway_config};

#[tokio::test]
async fn a_sink_failing_three_times_loses_nothing() {
    let (sink, addr) = Sink::start().await;
    sink.behaviour.lock().unwrap().fail_next = 3;
    let retry = "    retry_on_failure:\n      initial_interval: 50ms\n      max_interval: 200ms\n";
    let gw = Gateway::start(&gateway_config(addr, "", "batch", retry)).await;
    send_grpc(&gw.grpc_url(), request(spans(50))).await.unwrap();
    let got = sink.wait_for_spans(50, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 50);
    assert_eq!(
        *sink.attempts.lock().unwrap(),
        4,
        "three failures, then success"
    );
    assert_eq!(gw.metric("tailgate_exporter_retries_total", "").await, 3.0);
    assert_eq!(
        gw.metric("otelcol_exporter_sent_spans_total", "").await,
        50.0
    );
    assert_eq!(
        gw.metric("otelcol_exporter_send_failed_spans_total", "")
            .await,
        0.0
    );
}

#[tokio::test]
async fn memory_pressure_refuses_retryably_over_grpc_and_http() {
    let (sink, addr) = Sink::start().await;
    // 1 MiB is below any process's RSS: the limiter refuses from the first check.
    let limiter = "  memory_limiter:\n    check_interval: 100ms\n    limit_mib: 1\n";
    let gw = Gateway::start(&gateway_config(addr, limiter, "memory_limiter, batch", "")).await;
    let err = send_grpc(&gw.grpc_url(), request(spans(10)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let delay = tailgate_pipeline::exporter::retry_info_delay(&err);
    assert!(
        delay.is_some(),
        "RESOURCE_EXHAUSTED carries RetryInfo so clients retry"
    );
    assert!(
        err.message().contains("memory limit reached"),
        "{}",
        err.message()
    );

    use prost::Message;
    let resp = reqwest::Client::new()
        .post(gw.http_url())
        .header("content-type", "application/x-protobuf")
        .body(request(spans(10)).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sink.spans().is_empty(),
        "refused data was not half-accepted"
    );
    assert_eq!(
        gw.metric("otelcol_receiver_refused_spans_total", "").await,
        20.0
    );
    assert_eq!(
        gw.metric("otelcol_receiver_accepted_spans_total", "").await,
        0.0
    );
}

#[tokio::test]
async fn sigterm_flushes_pending_batches_before_exit() {
    let (sink, addr) = Sink::start().await;
    let config = gateway_config(addr, "", "batch", "").replace(
        "send_batch_size: 100\n    timeout: 100ms",
        "send_batch_size: 10000\n    timeout: 60s",
    );
    let mut gw = Gateway::start(&config).await;
    for _ in 0..3 {
        send_grpc(&gw.grpc_url(), request(spans(100)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.spans().is_empty(), "held by the 60s batch timeout");
    assert!(gw.terminate().await.success());
    assert_eq!(
        sink.spans().len(),
        300,
        "all pending spans exported during shutdown"
    );
    let log = gw.log();
    let summary: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("shutdown complete"))
        .collect();
    assert_eq!(summary.len(), 1, "one line says what shutdown did:\n{log}");
    assert!(
        summary[0].contains("flushed 300 spans to exporters"),
        "{}",
        summary[0]
    );
}

#[tokio::test]
async fn a_gateway_whose_backend_does_not_resolve_stops_in_time_and_names_it() {
    let (_sink, addr) = Sink::start().await;
    let config = gateway_config(addr, "", "batch", "").replace(
        &format!("127.0.0.1:{}", addr.port()),
        "backend.invalid:4317",
    );
    let mut gw = Gateway::start_with_args(&config, &["--shutdown-timeout", "2s"]).await;
    send_grpc(&gw.grpc_url(), request(spans(20))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.terminate().await.success(), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("export failed") && l.contains("backend.invalid")),
        "the failing endpoint is named:\n{log}"
    );
    assert!(log.contains("gave up on 20 spans at the deadline"), "{log}");
}
