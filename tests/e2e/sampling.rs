//! Goal: the reference article's gateway config, unchanged but for addresses, tail-samples
//! real SDK traffic as promised: every ERROR trace kept whole, every slow trace kept, every
//! `sampling.priority=always_on` trace kept, healthy traces kept at 5% — exactly those whose
//! trace-ID hash falls under the threshold — with `db.statement` redacted and credentials gone.
//! Method: the Python SDK sends 400 traces of a root and 3 children; the test waits for every
//! decision, stops the gateway (flushing the 10s batch), and compares with the sink.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use tailgate_otlp::TraceId;
use tailgate_sampling::policy::{DEFAULT_HASH_SALT, trace_id_hash};

use crate::support::{Gateway, Sink, article_gateway_config, tests_path};

#[tokio::test]
async fn article_gateway_config_keeps_errors_slow_flagged_and_five_percent_of_the_rest() {
    let (sink, addr) = Sink::start().await;
    let mut gw = Gateway::start(&article_gateway_config(addr.port())).await;
    let out = Command::new("python3")
        .arg(tests_path("python/send_traces.py"))
        .args([
            "--protocol",
            "grpc",
            "--endpoint",
            &gw.grpc_url(),
            "--traces",
            "400",
        ])
        .args(ARTICLE_TRAFFIC)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["export_failures"], 0);

    // decision_wait is 10s in the article's config; wait for all 400 decisions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let decided = gw
            .metric(
                "otelcol_processor_tail_sampling_global_count_traces_sampled_total",
                "",
            )
            .await;
        if decided >= 400.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {decided} of 400 traces decided"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = gw.metrics().await;
    assert!(
        gw.terminate().await.success(),
        "SIGTERM flushes the 10s batch"
    );

    check_article_sampling(&sent, sink.spans());
    // Accounting from the metrics alone: received = kept + dropped (+ refused, none here).
    let m =
        |name: &str, filter: &str| crate::support::tailgate_pipeline_sum(&metrics, name, filter);
    let received = m("tailgate_sampling_spans_received_total", "");
    let kept = m("tailgate_sampling_spans_kept_total", "");
    let dropped = m("tailgate_sampling_spans_dropped_total", "");
    let refused = m("tailgate_sampling_spans_refused_total", "");
    assert_eq!(received, 1600.0);
    assert_eq!(
        received,
        kept + dropped + refused,
        "kept {kept} dropped {dropped} refused {refused}"
    );
    assert_eq!(kept as usize, sink.spans().len());
    assert_eq!(
        m(
            "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total",
            ""
        ),
        0.0
    );
}

/// The Python sender's options for traffic the article's policies tell apart: an error trace
/// in ten, a slow one in twenty, a flagged one in twenty-five, each a root and three children.
pub const ARTICLE_TRAFFIC: &[&str] = &[
    "--error-every",
    "10",
    "--slow-every",
    "20",
    "--flag-every",
    "25",
    "--children",
    "3",
];

/// Spans the article's sampling keeps of the traces in `sent`: every span of the error, slow
/// and flagged traces and of the healthy ones whose trace-ID hash falls under 5%.
pub fn article_kept_span_count(sent: &serde_json::Value) -> usize {
    sent["traces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| article_keeps(t))
        .map(|t| t["span_ids"].as_array().unwrap().len())
        .sum()
}

/// Whether the article's sampling keeps one trace of the Python sender's report: an error,
/// slow or flagged trace, or a healthy one whose trace-ID hash falls under 5%.
pub fn article_keeps(t: &serde_json::Value) -> bool {
    let threshold = (5.0 / 100.0 * u64::MAX as f64) as u64;
    let bytes: [u8; 16] = hex::decode(t["trace_id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    t["error"].as_bool().unwrap()
        || t["slow"].as_bool().unwrap()
        || t["flagged"].as_bool().unwrap()
        || trace_id_hash(DEFAULT_HASH_SALT, &TraceId(bytes)) <= threshold
}

/// Waits until `received()` holds at least the spans the article's sampling keeps of `sent`
/// (up to `ARTICLE_DELIVERY_MAX`, which only a loss exhausts), then until it stays the same
/// for a moment, so a duplicate or an unwanted span arriving late is still seen by
/// [`check_article_sampling`]. Waiting on the content, not a fixed time, keeps a slow
/// machine from failing a test that lost nothing.
pub async fn wait_for_article_sampling(sent: &serde_json::Value, received: impl Fn() -> usize) {
    const ARTICLE_DELIVERY_MAX: Duration = Duration::from_secs(120);
    const QUIET: Duration = Duration::from_secs(3);
    let want = article_kept_span_count(sent);
    let deadline = tokio::time::Instant::now() + ARTICLE_DELIVERY_MAX;
    while received() < want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut last = received();
    loop {
        tokio::time::sleep(QUIET).await;
        let now = received();
        if now == last {
            break;
        }
        last = now;
    }
}

/// The article's sampling, checked on what a backend received for the traces the Python
/// sender reports in `sent`: every error, slow and flagged trace whole, the healthy ones kept
/// exactly when their trace-ID hash falls under 5% (and about 5% of them), nothing else, no
/// duplicates, everything redacted.
pub fn check_article_sampling(
    sent: &serde_json::Value,
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) {
    let mut got: BTreeMap<String, Vec<opentelemetry_proto::tonic::trace::v1::Span>> =
        BTreeMap::new();
    for s in spans {
        got.entry(hex::encode(&s.trace_id)).or_default().push(s);
    }
    let threshold = (5.0 / 100.0 * u64::MAX as f64) as u64;
    let (mut healthy, mut healthy_kept) = (0, 0);
    for t in sent["traces"].as_array().unwrap() {
        let id = t["trace_id"].as_str().unwrap();
        let want: BTreeSet<&str> = t["span_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let have: BTreeSet<String> = got
            .get(id)
            .map(|v| v.iter().map(|s| hex::encode(&s.span_id)).collect())
            .unwrap_or_default();
        let must_keep = t["error"].as_bool().unwrap()
            || t["slow"].as_bool().unwrap()
            || t["flagged"].as_bool().unwrap();
        let bytes: [u8; 16] = hex::decode(id).unwrap().try_into().unwrap();
        let hashed_in = trace_id_hash(DEFAULT_HASH_SALT, &TraceId(bytes)) <= threshold;
        if must_keep || hashed_in {
            let have: BTreeSet<&str> = have.iter().map(String::as_str).collect();
            assert_eq!(have, want, "trace {id} ({t}) must arrive whole");
            assert_eq!(got[id].len(), want.len(), "trace {id}: no duplicates");
        } else {
            assert!(
                have.is_empty(),
                "trace {id} was not selected by any policy but {} spans arrived",
                have.len()
            );
        }
        if !must_keep {
            healthy += 1;
            healthy_kept += u32::from(hashed_in);
        }
    }
    // Exactly the hash-selected healthy traces were kept (checked above); their share is 5%
    // within 4 binomial standard deviations.
    let p = 0.05;
    let sd = (f64::from(healthy) * p * (1.0 - p)).sqrt();
    let expected = f64::from(healthy) * p;
    assert!(
        (f64::from(healthy_kept) - expected).abs() <= 4.0 * sd + 1.0,
        "{healthy_kept} of {healthy} healthy traces kept; expected {expected:.1} ± {:.1}",
        4.0 * sd
    );
    for s in got.values().flatten() {
        crate::python_sdk::assert_redacted(s);
    }
}
