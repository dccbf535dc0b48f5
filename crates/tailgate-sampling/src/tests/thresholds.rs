//! Goal: with the `usetracestate` gate, kept spans record the threshold their policies
//! implied (OTEP 235) exactly as the collector's do. Method: traces whose randomness is set
//! through `ot=rv`, decided by one shard; the kept set and the `th` written are checked
//! against the randomness.

use serde_json::json;
use tailgate_otlp::proto::trace::v1::Span;
use tailgate_test_support::{encoded, kv, status};

use super::*;
use crate::tracestate::{Randomness, Threshold, TraceState};

/// Trace `t`'s span `n` with this trace state.
fn span_with_state(t: u32, n: u32, trace_state: &str) -> EncodedSpan {
    let mut trace_id = vec![0u8; 16];
    trace_id[12..].copy_from_slice(&(t + 1).to_be_bytes());
    let mut span_id = vec![0u8; 8];
    span_id[4..].copy_from_slice(&(n + 1).to_be_bytes());
    let sp = Span {
        trace_id,
        span_id,
        name: format!("s{n}"),
        trace_state: trace_state.into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        status: status(0),
        ..Default::default()
    };
    scan_export_request(&encoded(vec![kv("service.name", string("svc"))], vec![sp]))
        .unwrap()
        .spans
        .remove(0)
}

/// `rv` for trace `t`: spread over the 56-bit range, distinct per trace.
fn rv(t: u32) -> u64 {
    (u64::from(t) * 0x0003_1415_9265_3589 + 0x0000_2718_2818_2845) & ((1 << 56) - 1)
}

fn rig(policies: serde_json::Value, gate: bool) -> Rig {
    let configs: Vec<PolicyConfig> = serde_json::from_value(policies).unwrap();
    let mut set = PolicySet::compile(&configs, false, 1.0);
    set.set_use_tracestate(gate);
    let budget = Arc::new(BufferBudget::new(1 << 30));
    Rig {
        shard: TraceShard::new(cfg(), set, Arc::clone(&budget), 1),
        budget,
    }
}

fn gated_shard(policies: serde_json::Value) -> Rig {
    rig(policies, true)
}

fn th_of(span: &EncodedSpan) -> Option<Threshold> {
    TraceState::parse(span.trace_state()).unwrap().threshold()
}

#[test]
fn probabilistic_samples_by_randomness_and_records_its_threshold() {
    let mut shard = gated_shard(json!([
        {"name": "ten-percent", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}}
    ]));
    let th = Threshold::from_probability(0.10);
    for t in 0..500 {
        let state = format!("ot=rv:{:014x},vendor=a", rv(t));
        shard.ingest(vec![span_with_state(t, 0, &state)], S);
    }
    let kept = shard.shard.poll(20 * S).kept;
    let expected: Vec<u32> = (0..500)
        .filter(|t| {
            th.should_sample(Randomness::from_trace_id(&TraceId({
                let mut id = [0u8; 16];
                id[9..].copy_from_slice(&rv(*t).to_be_bytes()[1..]);
                id
            })))
        })
        .collect();
    assert!(
        (30..=70).contains(&expected.len()),
        "about 10% of 500: {}",
        expected.len()
    );
    assert_eq!(
        kept.len(),
        expected.len(),
        "kept exactly the traces whose rv clears th"
    );
    for s in &kept {
        assert_eq!(th_of(s), Some(th));
        assert!(
            s.trace_state().ends_with(",vendor=a"),
            "other members kept: {}",
            s.trace_state()
        );
        assert!(s.trace_state().starts_with("ot=rv:"));
    }
}

#[test]
fn without_sampling_information_probabilistic_hashes_like_the_collector() {
    let cfgs = json!([
        {"name": "half", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50}}
    ]);
    let mut gated = gated_shard(cfgs.clone());
    let mut plain = rig(cfgs, false);
    for t in 0..200 {
        gated.ingest(vec![span_with_state(t, 0, "")], S);
        plain.ingest(vec![span_with_state(t, 0, "")], S);
    }
    let gated_kept = gated.shard.poll(20 * S).kept;
    let plain_kept = plain.shard.poll(20 * S).kept;
    let ids = |v: &[EncodedSpan]| v.iter().map(|s| s.meta.trace_id).collect::<Vec<_>>();
    assert_eq!(ids(&gated_kept), ids(&plain_kept), "the same kept set");
    assert!(gated_kept.iter().all(|s| s.trace_state() == "ot=th:8"));
    assert!(
        plain_kept.iter().all(|s| s.trace_state().is_empty()),
        "gate off: untouched"
    );
}

#[test]
fn the_least_strict_sampling_policy_sets_the_threshold_and_and_takes_the_strictest() {
    let mut shard = gated_shard(json!([
        {"name": "quarter", "type": "probabilistic", "probabilistic": {"sampling_percentage": 25}},
        {"name": "both", "type": "and", "and": {"and_sub_policy": [
            {"name": "half", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50}},
            {"name": "eighth", "type": "probabilistic", "probabilistic": {"sampling_percentage": 12.5}}
        ]}}
    ]));
    let quarter = Threshold::from_probability(0.25);
    for t in 0..300 {
        shard.ingest(
            vec![span_with_state(t, 0, &format!("ot=rv:{:014x}", rv(t)))],
            S,
        );
    }
    let kept = shard.shard.poll(20 * S).kept;
    assert!(!kept.is_empty());
    // Every trace the 12.5% `and` keeps, the 25% policy keeps too (randomness is shared):
    // the least strict threshold, 25%, is what each kept span records.
    assert!(kept.iter().all(|s| th_of(s) == Some(quarter)));
}

#[test]
fn a_stricter_threshold_already_recorded_is_never_lowered() {
    let mut shard = gated_shard(json!([{"name": "all", "type": "always_sample"}]));
    let kept = {
        shard.ingest(vec![span_with_state(1, 0, "ot=th:c")], S);
        shard.ingest(vec![span_with_state(2, 0, "ot=th:zz")], S);
        shard.shard.poll(20 * S)
    };
    let states: Vec<&str> = kept.kept.iter().map(EncodedSpan::trace_state).collect();
    assert_eq!(states, ["ot=th:c", "ot=th:zz"]);
    assert_eq!(shard.shard.take_counters().spans_unparseable_tracestate, 1);
}

#[test]
fn a_rate_limit_keeps_the_highest_randomness_and_records_the_threshold_it_implied() {
    // 10 spans per second, a burst of 10: 40 one-span traces due in one tick keep 10.
    let mut shard = gated_shard(json!([
        {"name": "rate", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 10, "burst_capacity": 10}}
    ]));
    for t in 0..40 {
        shard.ingest(
            vec![span_with_state(t, 0, &format!("ot=rv:{:014x}", rv(t)))],
            ms(1500),
        );
    }
    // Root spans: due at 1.5 s + 2 s, decided at the next whole tick.
    assert_eq!(
        shard.shard.next_deadline(),
        Some(4 * S),
        "due traces wait for the whole tick"
    );
    assert!(shard.shard.poll(ms(3600)).kept.is_empty());
    let kept = shard.shard.poll(4 * S).kept;
    assert_eq!(kept.len(), 10);
    let mut sorted: Vec<u64> = (0..40).map(rv).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let th = Threshold::from_unsigned(sorted[10] + 1);
    for s in &kept {
        assert_eq!(th_of(s), Some(th));
    }
    // A late span of a kept trace records the same threshold.
    let kept_trace = kept[0].meta.trace_id;
    let t = (0..40).find(|t| tid(*t) == kept_trace).unwrap();
    let late = shard.ingest(vec![span_with_state(t, 1, "")], 5 * S);
    assert_eq!(late.len(), 1);
    assert_eq!(th_of(&late[0]), Some(th));
}
