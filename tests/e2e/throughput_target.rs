//! Goal: `throughput_target` is cluster-wide: three gateways together keep the configured
//! traces per second, and still do after the load triples — with RED metrics from every span
//! in the same config, counting each span once across the cluster. Method: a 3-gateway
//! cluster on loopback with `throughput_target: {traces_per_second: 60, adjustment_interval:
//! 2s}` and a `spanmetrics` connector served by `prometheus` on each gateway; one-span traces
//! with random IDs sent round-robin to every gateway at 150 traces/s, then 450; the sink's
//! span count is sampled over the last 14 s of each phase; kept spans must carry their
//! threshold, and the gateways' `calls` must add up to the spans sent.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::Span;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{Cluster, MemberConfig, config};
use crate::support::{free_port, scrape};

const TARGET_PER_SEC: f64 = 60.0;

const THROUGHPUT_TARGET: &str = r"
      - name: budget
        type: throughput_target
        throughput_target:
          traces_per_second: 60
          adjustment_interval: 2s";

/// Members with the throughput target and RED metrics from every span (the form users write:
/// a second traces pipeline into `spanmetrics`, a metrics pipeline to `prometheus`); each
/// member's scrape port goes into `ports`.
fn with_red_metrics(ports: Arc<Mutex<BTreeMap<String, u16>>>) -> MemberConfig {
    Arc::new(move |sink, name| {
        let port = free_port();
        ports.lock().unwrap().insert(name.to_string(), port);
        config(sink, name, THROUGHPUT_TARGET)
            .replace(
                "exporters:\n  otlp/sink:",
                &format!(
                    "connectors:\n  spanmetrics:\n    metrics_flush_interval: 1s\nexporters:\n  prometheus:\n    endpoint: 127.0.0.1:{port}\n  otlp/sink:"
                ),
            )
            .replace(
                "      exporters: [otlp/sink]\n",
                "      exporters: [otlp/sink]\n    traces/spanmetrics:\n      receivers: [otlp]\n      exporters: [spanmetrics]\n    metrics:\n      receivers: [spanmetrics]\n      exporters: [prometheus]\n",
            )
    })
}

/// `traces_span_metrics_calls_total` of one gateway, over its series.
async fn calls(port: u16) -> f64 {
    scrape(port, false)
        .await
        .lines()
        .filter(|l| l.starts_with("traces_span_metrics_calls_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Sends `per_sec` one-span traces per second for `how_long`, in 100-ms rounds spread over
/// the gateways; returns the spans sent.
async fn send(urls: &[String], per_sec: usize, how_long: Duration, rng: &mut StdRng) -> usize {
    let rounds = (how_long.as_millis() / 100) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0..rounds {
        tick.tick().await;
        let spans: Vec<Span> = (0..per_sec / 10)
            .map(|_| Span {
                trace_id: (0..16).map(|_| rng.random()).collect(),
                span_id: (0..8).map(|_| rng.random()).collect(),
                name: "op".into(),
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_010_000_000,
                ..Default::default()
            })
            .collect();
        let url = &urls[round % urls.len()];
        crate::otlp::send_grpc(url, crate::otlp::request(spans))
            .await
            .unwrap();
    }
    rounds * (per_sec / 10)
}

/// Kept traces per second while `send` runs its last `measured` part, and the spans sent.
async fn kept_rate(
    c: &Cluster,
    urls: &[String],
    per_sec: usize,
    settle: Duration,
    measured: Duration,
    rng: &mut StdRng,
) -> (f64, usize) {
    let spans_seen = Arc::clone(&c.sink.spans_seen);
    let sender = send(urls, per_sec, settle + measured, rng);
    let meter = async {
        // Decisions follow arrivals by `decision_wait_after_root_received`; measure what
        // the sink gets over the window, started once the load has settled.
        tokio::time::sleep(settle).await;
        let (from, start) = (spans_seen.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(measured).await;
        (spans_seen.load(Ordering::Relaxed) - from) as f64 / start.elapsed().as_secs_f64()
    };
    let (sent, rate) = tokio::join!(sender, meter);
    (rate, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_together_keep_the_target_and_hold_it_when_the_load_triples() {
    let scrape_ports = Arc::new(Mutex::new(BTreeMap::new()));
    let c = Cluster::start_with(3, "3s", with_red_metrics(Arc::clone(&scrape_ports))).await;
    let urls: Vec<String> = c.nodes.values().map(|(g, _)| g.grpc_url()).collect();
    let mut rng = StdRng::seed_from_u64(60);
    let settle = Duration::from_secs(6);
    let measured = Duration::from_secs(14);
    let (before, sent_before) = kept_rate(&c, &urls, 150, settle, measured, &mut rng).await;
    let (after, sent_after) = kept_rate(&c, &urls, 450, settle, measured, &mut rng).await;
    eprintln!("kept traces/s: {before:.1} at 150/s sent, {after:.1} at 450/s sent");
    for (load, rate) in [(150, before), (450, after)] {
        assert!(
            (rate - TARGET_PER_SEC).abs() <= 0.10 * TARGET_PER_SEC,
            "at {load} traces/s the cluster kept {rate:.1}/s; target {TARGET_PER_SEC}"
        );
    }
    let kept = c.sink.spans();
    assert!(
        kept.iter().all(|s| s.trace_state.starts_with("ot=th:")),
        "every kept span records its threshold"
    );
    // Each span is counted once, by the gateway that received it (forwarded spans are not
    // counted again by their owner).
    let sent = (sent_before + sent_after) as f64;
    let ports: Vec<u16> = scrape_ports.lock().unwrap().values().copied().collect();
    let mut counted = 0.0;
    for _ in 0..20 {
        counted = 0.0;
        for port in &ports {
            counted += calls(*port).await;
        }
        if counted >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        counted, sent,
        "span metrics across the cluster count every span once"
    );
}
