//! Goal: `throughput_target` holds the kept rate at its target when traffic triples, keeps
//! rare fingerprints more often than common ones, and records each kept trace's threshold.
//! Method: one shard fed seeded random trace IDs in 10-ms steps of simulated time; kept
//! traces counted per 5-s window of decision time.

use std::collections::BTreeMap;

use serde_json::json;
use tailgate_otlp::proto::trace::v1::Span;
use tailgate_test_support::{encoded, kv, status};

use super::*;
use crate::tracestate::TraceState;

const TARGET_PER_SEC: f64 = 100.0;
const WINDOW: Duration = Duration::from_secs(5);

/// A one-span trace from `service` with a random trace ID drawn from `seed`.
fn root_span(seed: &mut u64, service: &str) -> EncodedSpan {
    let mut id = Vec::with_capacity(16);
    for _ in 0..2 {
        // xorshift64*: reproducible, spread over all 64 bits.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        id.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_be_bytes());
    }
    let sp = Span {
        trace_id: id,
        span_id: vec![1; 8],
        name: "op".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        status: status(0),
        ..Default::default()
    };
    scan_export_request(&encoded(
        vec![kv("service.name", string(service))],
        vec![sp],
    ))
    .unwrap()
    .spans
    .remove(0)
}

#[test]
fn a_tripled_load_holds_the_kept_rate_within_ten_percent_of_the_target() {
    let configs: Vec<PolicyConfig> = serde_json::from_value(json!([{
        "name": "budget", "type": "throughput_target",
        "throughput_target": {"traces_per_second": TARGET_PER_SEC, "adjustment_interval": "5s"}
    }]))
    .unwrap();
    let budget = Arc::new(BufferBudget::new(1 << 30));
    let mut rig = Rig {
        shard: TraceShard::new(
            ShardConfig {
                traces_max: 100_000,
                ..cfg()
            },
            PolicySet::compile(&configs, false, 1.0),
            Arc::clone(&budget),
            1,
        ),
        budget,
    };
    let mut seed = 0x5eed_u64;
    // Phase one 300 traces/s, phase two 900: 80% frontend, 15% checkout, 5% audit.
    let mix = |i: u64| match i % 20 {
        0 => "audit",
        1..=3 => "checkout",
        _ => "frontend",
    };
    let step = ms(10);
    let mut kept_per_window: BTreeMap<u64, u64> = BTreeMap::new();
    let mut sent_by_service: BTreeMap<&str, u64> = BTreeMap::new();
    let mut kept_by_service: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut now = Duration::ZERO;
    while now < Duration::from_secs(62) {
        let per_step = if now < Duration::from_secs(30) { 3 } else { 9 };
        if now < Duration::from_secs(60) {
            for _ in 0..per_step {
                let service = mix(sent);
                sent += 1;
                *sent_by_service.entry(service).or_default() += 1;
                let early = rig.ingest(vec![root_span(&mut seed, service)], now);
                assert!(early.is_empty(), "no early decisions at this load");
            }
        }
        for span in rig.shard.poll(now).kept {
            let th = TraceState::parse(span.trace_state()).unwrap().threshold();
            assert!(th.is_some(), "kept spans record their threshold");
            *kept_per_window
                .entry(now.as_secs() / WINDOW.as_secs())
                .or_default() += 1;
            *kept_by_service
                .entry(span.service_name().unwrap().to_string())
                .or_default() += 1;
        }
        now += step;
    }
    let rate = |w: u64| kept_per_window.get(&w).copied().unwrap_or(0) as f64 / 5.0;
    let rates: Vec<f64> = (0..12).map(rate).collect();
    eprintln!("kept traces/s per 5-s window: {rates:?}");
    // Decisions come 2 s after arrival; each load has settled one interval after it began
    // (the first window of each phase is the one adjusting).
    for w in [2, 3, 4, 5, 8, 9, 10, 11] {
        let r = rate(w);
        assert!(
            (r - TARGET_PER_SEC).abs() <= 0.10 * TARGET_PER_SEC,
            "window {w} ({}–{} s): {r} kept traces/s, target {TARGET_PER_SEC}; all: {rates:?}",
            w * 5,
            w * 5 + 5
        );
    }
    let kept_fraction =
        |s: &str| kept_by_service.get(s).copied().unwrap_or(0) as f64 / sent_by_service[s] as f64;
    assert!(
        kept_fraction("audit") > 2.0 * kept_fraction("frontend"),
        "rare fingerprints are kept more often: audit {}, frontend {}",
        kept_fraction("audit"),
        kept_fraction("frontend")
    );
}
