//! Goal: memory under load is an overload, never an outage. A burst far beyond what the
//! gateway holds leaves it accepting again within seconds; a sustained overload stays under
//! the memory limit and every accepted span is exported, dropped by policy or counted; a
//! memory limiter that refused lets go as soon as memory is free, and the SDK's own retries
//! then deliver what it refused. Method: the article's gateway config with
//! `limit_mib: 256`, `spike_limit_mib: 64`, `decision_wait: 10s` (the operator's report),
//! `tailgate loadgen` as the raw load, the OpenTelemetry Python SDK as the real client, the
//! gateway's own metrics for memory and counts, and the sink's count of what arrived.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::otlp::{request, send_grpc, spans};
use crate::python_sdk::python_send_env;
use crate::support::{BIN, Gateway, Sink, gateway_config};

const MIB: f64 = 1024.0 * 1024.0;
/// The report's limiter: `limit_mib: 256`, `spike_limit_mib: 64`.
const LIMIT_MIB: f64 = 256.0;
const SOFT_LIMIT_MIB: f64 = 256.0 - 64.0;
/// What the allocator may keep free before the limiter's tick trims it
/// (`tailgate_pipeline::memory::RETAINED_FREE_BYTES_MAX`), plus one tick's worth of churn.
const ALLOCATOR_SLACK_MIB: f64 = 32.0 + 16.0;

/// The article's gateway config with the report's memory limits.
fn article_config(sink_port: u16) -> String {
    crate::support::article_gateway_config(sink_port)
        .replace("limit_mib: 2048", "limit_mib: 256")
        .replace("spike_limit_mib: 512", "spike_limit_mib: 64")
}

/// What `tailgate loadgen` reported.
#[derive(Debug)]
struct LoadReport {
    spans: u64,
    spans_failed: u64,
    requests_refused: u64,
    requests_failed: u64,
}

/// Runs `tailgate loadgen` against `endpoint` and parses its summary line.
async fn loadgen(endpoint: &str, args: &[&str]) -> LoadReport {
    let out = tokio::process::Command::new(BIN)
        .args(["loadgen", "--endpoint", endpoint, "--seed", "7"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("LOADGEN"))
        .unwrap_or_else(|| panic!("loadgen printed no summary: {text}"));
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    LoadReport {
        spans: field("spans"),
        spans_failed: field("spans_failed"),
        requests_refused: field("requests_refused"),
        requests_failed: field("requests_failed"),
    }
}

/// Memory as the gateway reports it, in MiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: f64,
    live: f64,
    allocator_resident: f64,
}

async fn memory(gw: &Gateway) -> Memory {
    let text = gw.metrics().await;
    let get = |name: &str| crate::support::tailgate_pipeline_sum(&text, name, "") / MIB;
    Memory {
        rss: get("otelcol_process_memory_rss"),
        live: get("otelcol_process_runtime_heap_alloc_bytes"),
        allocator_resident: get("tailgate_process_allocator_resident_bytes"),
    }
}

/// Waits until the sampling buffer is empty (every trace decided).
async fn wait_all_decided(gw: &Gateway, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while gw.metric("tailgate_sampling_buffered_bytes", "").await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "traces still buffered after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the Python sender on a blocking thread (it takes seconds), with the SDK exporter's
/// timeout raised from 10 s to 30 s so its own retries (six at most, each after the
/// gateway's RetryInfo delay) are not cut short by the deadline.
async fn sdk_send(
    endpoint: String,
    traces: u32,
    extra: &'static [&'static str],
) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        python_send_env(
            "grpc",
            &endpoint,
            traces,
            extra,
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "30")],
        )
    })
    .await
    .unwrap()
}

/// Every span ID the SDK reported sending.
fn sdk_span_ids(sent: &serde_json::Value) -> BTreeSet<String> {
    sent["traces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["span_ids"].as_array().unwrap().iter())
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Span IDs (hex) of the SDK's service that reached the sink.
fn sink_span_ids(sink: &Sink) -> Vec<String> {
    sink.spans()
        .iter()
        .map(|s| hex::encode(&s.span_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_a_light_load_fifteen_seconds_later_is_accepted_in_full() {
    let (sink, addr) = Sink::start().await;
    sink.behaviour.lock().unwrap().keep_service = Some("py-shop".into());
    let gw = Gateway::start(&article_config(addr.port())).await;

    // The burst: as many fresh traces as one load generator pushes, from 32 senders at once.
    // The 96 MiB buffer fills within the first second; what follows is the same steady state
    // the report ran for a minute.
    let endpoint = gw.grpc_url();
    let burst = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { loadgen(&endpoint, &["--duration", "20s", "--concurrency", "32"]).await }
    });
    // Meanwhile, probes over both transports: any refusal must say when to retry.
    let http = gw.http_url();
    let mut probes_refused = 0;
    while !burst.is_finished() {
        match send_grpc(&endpoint, request(spans(5))).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(tailgate_pipeline::exporter::retry_info_delay(&status).is_some());
                probes_refused += 1;
            }
        }
        use prost::Message;
        let resp = reqwest::Client::new()
            .post(&http)
            .header("content-type", "application/x-protobuf")
            .body(request(spans(5)).encode_to_vec())
            .send()
            .await
            .unwrap();
        if !resp.status().is_success() {
            assert_eq!(resp.status().as_u16(), 503);
            assert!(resp.headers().get("retry-after").is_some());
            probes_refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = burst.await.unwrap();
    let at_end = memory(&gw).await;
    eprintln!(
        "burst: {} spans, {} requests refused (retried), {probes_refused} probes refused; at its end {at_end:?}",
        report.spans, report.requests_refused
    );
    assert!(report.spans > 0);
    assert_eq!(
        report.requests_failed, 0,
        "every refusal was retryable and the retry got through"
    );

    // 15 s of quiet, as in the report; then a light SDK load must be accepted in full.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let quiet = memory(&gw).await;
    eprintln!("15 s later: {quiet:?}");
    assert_eq!(gw.metric("tailgate_memory_limiter_refusing", "").await, 0.0);
    assert!(
        quiet.rss < SOFT_LIMIT_MIB,
        "RSS came back under the soft limit: {quiet:?}"
    );
    assert!(
        quiet.allocator_resident - quiet.live < ALLOCATOR_SLACK_MIB,
        "the allocator gave freed memory back: {quiet:?}"
    );
    let refused_before = gw.metric("otelcol_receiver_refused_spans_total", "").await;
    let accepted_before = gw.metric("otelcol_receiver_accepted_spans_total", "").await;
    let sent = sdk_send(gw.grpc_url(), 100, &["--flag-every", "1"]).await;
    assert_eq!(sent["export_failures"], 0);
    let sdk_spans = sdk_span_ids(&sent).len() as f64;
    assert_eq!(
        gw.metric("otelcol_receiver_accepted_spans_total", "").await - accepted_before,
        sdk_spans,
        "every span of the light load accepted"
    );
    assert_eq!(
        gw.metric("otelcol_receiver_refused_spans_total", "").await,
        refused_before,
        "none refused, not even once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_x_overload_for_a_minute_stays_under_the_limit_and_loses_nothing() {
    let (sink, addr) = Sink::start().await;
    sink.behaviour.lock().unwrap().keep_service = Some("py-shop".into());
    let mut gw = Gateway::start(&article_config(addr.port())).await;

    // What the buffer holds without deciding early: half the soft limit (96 MiB) per
    // `decision_wait` (10 s), ~9.6 MB/s, ~1,150 traces/s of loadgen's ~8.7 kB traces.
    // Twice that for a minute: without early decisions the buffer would need 192 MiB.
    const OVERLOAD_TRACES_PER_S: &str = "2300";
    let endpoint = gw.grpc_url();
    let load = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            loadgen(
                &endpoint,
                &[
                    "--duration",
                    "60s",
                    "--rate",
                    OVERLOAD_TRACES_PER_S,
                    "--concurrency",
                    "16",
                    "--flagged-percent",
                    "0",
                ],
            )
            .await
        }
    });
    // The application keeps sending through the overload; its SDK retries what is refused.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let sdk = tokio::spawn(sdk_send(endpoint.clone(), 200, &["--flag-every", "1"]));
    let mut peak = memory(&gw).await;
    while !load.is_finished() {
        let m = memory(&gw).await;
        if m.rss > peak.rss {
            peak = m;
        }
        assert!(
            m.rss < LIMIT_MIB,
            "RSS stays under limit_mib through the overload: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = load.await.unwrap();
    let sent = sdk.await.unwrap();
    eprintln!(
        "overload: {} spans offered, {} requests refused (retried); peak {peak:?}",
        report.spans, report.requests_refused
    );
    assert_eq!(
        report.requests_failed, 0,
        "the load generator's retries got through"
    );
    assert_eq!(sent["export_failures"], 0, "the SDK's retries got through");
    assert!(
        gw.metric("tailgate_sampling_early_decisions_total", "")
            .await
            > 0.0,
        "the overload was real: the buffer could not wait out every trace"
    );

    // The books close: everything accepted was kept or dropped by policy, and everything
    // kept reached the sink.
    wait_all_decided(&gw, Duration::from_secs(30)).await;
    let accepted = gw.metric("otelcol_receiver_accepted_spans_total", "").await;
    let sdk_ids = sdk_span_ids(&sent);
    assert_eq!(
        accepted,
        (report.spans - report.spans_failed) as f64 + sdk_ids.len() as f64,
        "the gateway accepted exactly what its clients were told it accepted"
    );
    let kept = gw.metric("tailgate_sampling_spans_kept_total", "").await;
    let dropped = gw.metric("tailgate_sampling_spans_dropped_total", "").await;
    assert_eq!(kept + dropped, accepted, "every accepted span decided");
    assert!(gw.terminate().await.success(), "{}", gw.log());
    assert_eq!(
        sink.spans_seen.load(Ordering::Relaxed) as f64,
        kept,
        "every kept span exported"
    );
    let arrived: BTreeSet<String> = sink_span_ids(&sink).into_iter().collect();
    assert_eq!(arrived, sdk_ids, "every SDK trace arrived whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limiter_that_refused_lets_go_once_memory_is_free_and_sdk_retries_deliver() {
    // A backend that stops answering fills the exporter's queue (1,000 batches, bounded by
    // count) until live memory reaches the soft limit; the limiter must then refuse, and let
    // go as soon as the backend drains the queue — not when RSS happens to fall.
    let (sink, addr) = Sink::start().await;
    sink.behaviour.lock().unwrap().stalled = true;
    sink.behaviour.lock().unwrap().keep_service = Some("py-shop".into());
    // Soft limit 64 MiB of live memory; the hard limit on RSS far above it, so the soft limit
    // is what refuses (at 96 MiB a debug build's RSS reached the hard limit first, in a race
    // with live memory reaching the soft one).
    let limiter = "  memory_limiter:\n    check_interval: 200ms\n    limit_mib: 160\n    spike_limit_mib: 96\n";
    // Full batches whatever the pace: on a busy machine a 100 ms timeout would flush small
    // batches, and the queue would fill by its count of batches before memory filled.
    let config = gateway_config(addr, limiter, "memory_limiter, batch", "")
        .replace("send_batch_size: 100\n", "send_batch_size: 1024\n")
        .replace("timeout: 100ms\n", "timeout: 2s\n");
    let gw = Gateway::start(&config).await;

    let endpoint = gw.grpc_url();
    // 24,000 traces of 20 spans are several times the soft limit: the load cannot end before
    // the limiter refuses unless the limiter is broken (or the queue filled first).
    let load = loadgen(&endpoint, &["--duration", "120s", "--traces", "24000"]);
    let filled = async {
        while gw.metric("tailgate_memory_limiter_refusing", "").await == 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = filled => {}
        report = load => panic!(
            "the load went through a stalled backend without the limiter refusing: {report:?}, \
             memory {:?}, queue {} batches, log:\n{}",
            memory(&gw).await,
            gw.metric("otelcol_exporter_queue_size", "").await,
            gw.log()
        ),
    }
    let full = memory(&gw).await;
    eprintln!("limiter refusing at {full:?}");
    // The limiter's own word for why it refused (live memory can dip below the limit between
    // its check and this reading, as refused requests free their bodies).
    assert!(
        gw.log()
            .contains("live memory over the soft limit: refusing data"),
        "refusing on live memory at the soft limit: {full:?}; log:\n{}",
        gw.log()
    );
    let err = send_grpc(&endpoint, request(spans(5))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(tailgate_pipeline::exporter::retry_info_delay(&err).is_some());

    // The application sends now and is refused; the backend recovers a second later.
    let refused_before = gw.metric("otelcol_receiver_refused_spans_total", "").await;
    let sdk = tokio::spawn(sdk_send(endpoint.clone(), 10, &[]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.behaviour.lock().unwrap().stalled = false;
    let sent = sdk.await.unwrap();
    assert_eq!(
        sent["export_failures"], 0,
        "the SDK's own retries delivered"
    );
    assert!(
        gw.metric("otelcol_receiver_refused_spans_total", "").await > refused_before,
        "the SDK was refused before it got through"
    );
    let sdk_ids = sdk_span_ids(&sent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let arrived: BTreeSet<String> = sink_span_ids(&sink)
            .into_iter()
            .filter(|id| sdk_ids.contains(id))
            .collect();
        if arrived == sdk_ids {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "SDK spans missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.metric("tailgate_memory_limiter_refusing", "").await, 0.0);
}
