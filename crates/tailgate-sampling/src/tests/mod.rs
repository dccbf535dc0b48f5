//! Goal: the trace state machine decides at the right time on the right data, never loses a
//! span without a count, and moves traces between owners without changing their fate.
//! Method: drive a [`TraceShard`] with explicit `now` values; check releases and counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;
use tailgate_config::sampling::Policy as PolicyConfig;
use tailgate_otlp::proto::trace::v1::Span;
use tailgate_otlp::{EncodedSpan, TraceId, scan_export_request};

use tailgate_test_support::{encoded, kv, status, string};

use crate::policy::PolicySet;
use crate::*;

mod ingest;
mod replica;
mod thresholds;
mod throughput;

const S: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Span `n` of trace `t`; `parent` 0 = root; `error` sets status ERROR.
fn span(t: u32, n: u32, parent: u32, error: bool) -> EncodedSpan {
    let mut trace_id = vec![0u8; 16];
    trace_id[12..].copy_from_slice(&(t + 1).to_be_bytes());
    let id = |x: u32| {
        let mut v = vec![0u8; 8];
        v[4..].copy_from_slice(&x.to_be_bytes());
        v
    };
    let sp = Span {
        trace_id,
        span_id: id(n + 1),
        parent_span_id: if parent == 0 { vec![] } else { id(parent + 1) },
        name: format!("s{n}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        status: status(if error { 2 } else { 0 }),
        ..Default::default()
    };
    scan_export_request(&encoded(vec![kv("service.name", string("svc"))], vec![sp]))
        .unwrap()
        .spans
        .remove(0)
}

fn tid(t: u32) -> TraceId {
    span(t, 0, 0, false).meta.trace_id
}

fn cfg() -> ShardConfig {
    ShardConfig {
        decision_wait: 10 * S,
        decision_wait_after_root: Some(2 * S),
        traces_max: 1000,
        trace_bytes_max: 0,
        sampled_cache_size: 1000,
        non_sampled_cache_size: 1000,
        cache_ttl: 600 * S,
        record_policy: false,
        drop_pending_on_shutdown: false,
        report_decisions: false,
        replica_grace: Duration::from_secs(10),
    }
}

/// Keeps error traces only.
fn errors_only() -> PolicySet {
    let p: PolicyConfig =
        serde_json::from_value(json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}})).unwrap();
    PolicySet::compile(&[p], false, 1.0)
}

struct Rig {
    shard: TraceShard,
    budget: Arc<BufferBudget>,
}

impl Rig {
    fn new(cfg: ShardConfig, budget_bytes: u64) -> Rig {
        let budget = Arc::new(BufferBudget::new(budget_bytes));
        Rig {
            shard: TraceShard::new(cfg, errors_only(), Arc::clone(&budget), 1),
            budget,
        }
    }

    /// Reserves like the pipeline stage does, then ingests.
    fn ingest(&mut self, spans: Vec<EncodedSpan>, now: Duration) -> Vec<EncodedSpan> {
        let bytes = spans.iter().map(|s| s.bytes().len() as u64).sum();
        assert!(self.budget.try_reserve(bytes), "budget full in test");
        self.shard.ingest(spans, now).kept
    }
}

fn names(spans: &[EncodedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{}:{}", s.meta.trace_id.0[15], s.name()))
        .collect()
}

#[test]
fn decides_at_decision_wait_when_no_root_arrives() {
    let mut r = Rig::new(cfg(), 1 << 20);
    assert!(r.ingest(vec![span(1, 1, 7, true)], S).is_empty());
    assert_eq!(r.shard.next_deadline(), Some(11 * S));
    assert!(
        r.shard.poll(11 * S - ms(1)).kept.is_empty(),
        "not before the deadline"
    );
    let kept = r.shard.poll(11 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1"]);
    assert_eq!(r.shard.traces_buffered(), 0);
    assert_eq!(r.budget.bytes_used(), 0);
}

#[test]
fn root_span_pulls_the_decision_to_root_plus_quiet_period() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest(vec![span(1, 2, 1, true)], S);
    r.ingest(vec![span(1, 1, 0, false)], 3 * S);
    assert_eq!(
        r.shard.next_deadline(),
        Some(5 * S),
        "root at 3s + 2s quiet"
    );
    assert_eq!(r.shard.poll(5 * S).kept.len(), 2);
    // A root arriving late cannot push the deadline past decision_wait.
    r.ingest(vec![span(2, 2, 1, true)], 20 * S);
    r.ingest(vec![span(2, 1, 0, false)], 29 * S);
    assert_eq!(r.shard.next_deadline(), Some(30 * S));
}

#[test]
fn late_spans_follow_the_cached_decision() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest(vec![span(1, 1, 0, true)], S);
    r.ingest(vec![span(2, 1, 0, false)], S);
    assert_eq!(r.shard.poll(3 * S).kept.len(), 1);
    let late = r.ingest(vec![span(1, 2, 1, false), span(2, 2, 1, false)], 7 * S);
    assert_eq!(
        names(&late),
        vec!["2:s2"],
        "kept trace's late span exported at once; dropped trace's dropped"
    );
    let c = r.shard.take_counters();
    assert_eq!((c.late_spans_kept, c.late_spans_dropped), (1, 1));
    assert_eq!(c.late_span_ages, vec![4 * S, 4 * S]);
    assert_eq!(
        r.shard.traces_buffered(),
        0,
        "late spans never start a new trace"
    );
    assert_eq!(r.budget.bytes_used(), 0);
}

#[test]
fn a_late_span_after_the_decision_was_forgotten_is_counted_apart() {
    let mut c = cfg();
    c.sampled_cache_size = 1;
    c.non_sampled_cache_size = 1;
    let mut r = Rig::new(c, 1 << 20);
    for t in 1..=3 {
        r.ingest(vec![span(t, 1, 0, false)], S);
    }
    r.shard.poll(3 * S);
    r.take_and_discard();
    r.ingest(vec![span(1, 2, 1, false)], 4 * S);
    let c = r.shard.take_counters();
    assert_eq!(c.late_spans_after_forget, 1);
    assert_eq!(r.shard.traces_buffered(), 1);
}

impl Rig {
    fn take_and_discard(&mut self) {
        let _ = self.shard.take_counters();
    }
}

#[test]
fn duplicate_spans_merge_idempotently() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest(vec![span(1, 1, 0, true), span(1, 2, 1, false)], S);
    r.ingest(vec![span(1, 2, 1, false), span(1, 3, 1, false)], S);
    let kept = r.shard.poll(3 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1", "2:s2", "2:s3"]);
    assert_eq!(r.shard.take_counters().spans_duplicate, 1);
    assert_eq!(r.budget.bytes_used(), 0, "duplicate bytes released at once");
}

#[test]
fn byte_budget_decides_oldest_traces_early_and_accounts_for_every_span() {
    let spans: Vec<EncodedSpan> = (0..10).map(|t| span(t, 1, 0, t == 9)).collect();
    let limit: u64 = spans.iter().map(|s| s.bytes().len() as u64).sum();
    let mut r = Rig::new(cfg(), limit);
    for (t, s) in spans.iter().take(9).enumerate() {
        r.ingest(vec![s.clone()], S + ms(t as u64));
    }
    assert_eq!(
        r.shard.traces_buffered(),
        9,
        "at 90% of the budget: not above the high watermark"
    );
    r.ingest(vec![spans[9].clone()], 2 * S);
    // 100% > 90%: the oldest traces are decided until usage is at most 80%.
    assert!(
        r.budget.bytes_used() * 100 <= limit * 80,
        "{} of {limit}",
        r.budget.bytes_used()
    );
    let buffered = r.shard.traces_buffered();
    assert!(buffered < 9);
    let c = r.shard.take_counters();
    assert_eq!(
        c.early_decisions.get(&EarlyReason::BufferFull),
        Some(&(10 - buffered as u64))
    );
    assert_eq!(
        c.spans_dropped_policy,
        10 - buffered as u64,
        "oldest first: the error trace (newest) is still buffered"
    );
    // What no early decision can make room for is refused before the shard sees it.
    assert!(!r.budget.try_reserve(limit));
}

#[test]
fn num_traces_limit_decides_the_oldest_never_evicts_silently() {
    let mut c = cfg();
    c.traces_max = 3;
    let mut r = Rig::new(c, 1 << 20);
    for t in 0..5 {
        r.ingest(vec![span(t, 1, 0, true)], S + ms(u64::from(t)));
    }
    assert_eq!(r.shard.traces_buffered(), 3);
    let c = r.shard.take_counters();
    assert_eq!(c.early_decisions.get(&EarlyReason::NumTraces), Some(&2));
    assert_eq!(c.spans_kept, 2);
}

#[test]
fn an_oversized_trace_is_decided_at_once() {
    let mut c = cfg();
    c.trace_bytes_max =
        (span(1, 1, 0, true).bytes().len() + span(1, 2, 1, false).bytes().len()) as u64;
    let mut r = Rig::new(c, 1 << 20);
    assert!(
        r.ingest(vec![span(1, 1, 0, true), span(1, 2, 1, false)], S)
            .is_empty()
    );
    let kept = r.ingest(vec![span(1, 3, 1, false)], S);
    assert_eq!(kept.len(), 3);
    assert_eq!(
        r.shard
            .take_counters()
            .early_decisions
            .get(&EarlyReason::TraceTooLarge),
        Some(&1)
    );
}

#[test]
fn handoff_keeps_the_remaining_deadline_and_merges_with_local_spans() {
    let mut a = Rig::new(cfg(), 1 << 20);
    let mut b = Rig::new(cfg(), 1 << 20);
    a.ingest(vec![span(1, 1, 0, true), span(1, 2, 1, false)], S);
    a.ingest(vec![span(2, 1, 0, false)], S);
    // At 2s the ring moves trace 1 to B; B already got a straggler of it.
    b.ingest(vec![span(1, 3, 1, false)], 2 * S + ms(500));
    let moved = a.shard.take_traces(2 * S, &|id| *id == tid(1));
    assert_eq!(moved.len(), 1);
    assert_eq!(
        moved[0].remaining, S,
        "root at 1s + 2s quiet = 3s; 1s left at 2s"
    );
    assert_eq!(moved[0].age, S);
    assert!(moved[0].root_seen);
    assert_eq!(a.shard.traces_buffered(), 1);
    // B's clock is offset by 500ms: the remaining duration, not a timestamp, travels.
    for t in moved.clone() {
        b.shard.accept_trace(t, 2 * S + ms(500));
    }
    // Resent handoff (the ack was lost): nothing changes.
    for t in moved {
        b.shard.accept_trace(t, 2 * S + ms(600));
    }
    assert_eq!(b.shard.next_deadline(), Some(3 * S + ms(500)));
    let kept = b.shard.poll(3 * S + ms(500)).kept;
    assert_eq!(names(&kept), vec!["2:s3", "2:s1", "2:s2"]);
    assert_eq!(b.budget.bytes_used(), 0);
    assert_eq!(
        a.budget.bytes_used(),
        span(2, 1, 0, false).bytes().len() as u64
    );
}

#[test]
fn decisions_travel_so_late_spans_at_the_new_owner_follow_them() {
    let mut a = Rig::new(cfg(), 1 << 20);
    let mut b = Rig::new(cfg(), 1 << 20);
    a.ingest(vec![span(1, 1, 0, true)], S);
    a.ingest(vec![span(2, 1, 0, false)], S);
    a.shard.poll(5 * S);
    let decisions = a.shard.decisions_for(6 * S, &|_| true);
    assert_eq!(decisions.len(), 2);
    for d in decisions {
        b.shard.accept_decision(d, 6 * S);
    }
    let late = b.ingest(vec![span(1, 2, 1, false), span(2, 2, 1, false)], 7 * S);
    assert_eq!(names(&late), vec!["2:s2"]);
    assert_eq!(b.shard.traces_buffered(), 0);
}

#[test]
fn shutdown_decides_pending_traces_or_drops_them_counted() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest(vec![span(1, 1, 0, true), span(2, 1, 0, false)], S);
    assert_eq!(r.shard.drain(S).kept.len(), 1);
    let mut c = cfg();
    c.drop_pending_on_shutdown = true;
    let mut r = Rig::new(c, 1 << 20);
    r.ingest(vec![span(1, 1, 0, true), span(2, 1, 0, false)], S);
    assert!(r.shard.drain(S).kept.is_empty());
    assert_eq!(r.shard.take_counters().spans_dropped_shutdown, 2);
    assert_eq!(r.budget.bytes_used(), 0);
}

#[test]
fn orphan_spans_are_counted_per_service_at_decision_time() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest(
        vec![
            span(1, 1, 0, false),
            span(1, 2, 1, false),
            span(1, 3, 9, false),
        ],
        S,
    );
    r.shard.poll(20 * S);
    assert_eq!(r.shard.take_counters().orphan_spans.get("svc"), Some(&1));
}

#[test]
fn record_policy_writes_the_collectors_scope_attributes() {
    use crate::record::{CACHED_DECISION_ATTRIBUTE, POLICY_ATTRIBUTE};
    use tailgate_otlp::AnyValueRef;
    let scope_attribute = |s: &EncodedSpan, key: &str| {
        tailgate_otlp::find_attribute(&s.context.scope, 3, key).map(|v| format!("{v:?}"))
    };
    let mut c = cfg();
    c.record_policy = true;
    let mut r = Rig::new(c, 1 << 20);
    r.ingest(vec![span(1, 1, 0, true)], S);
    let kept = r.shard.poll(20 * S).kept;
    assert_eq!(
        scope_attribute(&kept[0], POLICY_ATTRIBUTE),
        Some(format!("{:?}", AnyValueRef::String("errors")))
    );
    assert_eq!(scope_attribute(&kept[0], CACHED_DECISION_ATTRIBUTE), None);
    assert_eq!(
        kept[0].attribute(POLICY_ATTRIBUTE),
        None,
        "on the scope, not the span"
    );

    // A late span follows the cached decision and says so, as the collector's do.
    let late = r.ingest(vec![span(1, 2, 1, false)], 21 * S);
    assert_eq!(late.len(), 1);
    assert_eq!(
        scope_attribute(&late[0], CACHED_DECISION_ATTRIBUTE),
        Some(format!("{:?}", AnyValueRef::Bool(true)))
    );
    assert_eq!(
        scope_attribute(&late[0], POLICY_ATTRIBUTE),
        Some(format!("{:?}", AnyValueRef::String("errors")))
    );

    // Off: nothing is written.
    let mut plain = Rig::new(cfg(), 1 << 20);
    plain.ingest(vec![span(1, 1, 0, true)], S);
    let kept = plain.shard.poll(20 * S).kept;
    assert_eq!(scope_attribute(&kept[0], POLICY_ATTRIBUTE), None);
}

proptest! {
    /// For any interleaving: received = kept + dropped + buffered, and the budget holds
    /// exactly the buffered bytes.
    #[test]
    fn accounting_closes_for_any_sequence(ops in proptest::collection::vec((0u32..12, 0u32..6, any::<bool>(), 0u64..4000), 1..120)) {
        let mut r = Rig::new(cfg(), 1 << 30);
        let mut now = S;
        let mut kept = 0u64;
        for (t, n, err, advance) in ops {
            now += ms(advance);
            kept += r.ingest(vec![span(t, n, if n == 0 { 0 } else { n - 1 }, err)], now).len() as u64;
            kept += r.shard.poll(now).kept.len() as u64;
        }
        let c = r.shard.take_counters();
        let buffered = r.shard.spans_buffered() as u64;
        prop_assert_eq!(c.spans_kept, kept);
        prop_assert_eq!(
            c.spans_received,
            c.spans_kept + c.spans_dropped_policy + c.spans_dropped_late + c.spans_duplicate + buffered
        );
        prop_assert_eq!(r.budget.bytes_used(), r.shard.bytes_buffered());
        kept += r.shard.drain(now).kept.len() as u64;
        let c2 = r.shard.take_counters();
        prop_assert_eq!(r.shard.traces_buffered(), 0);
        prop_assert_eq!(r.budget.bytes_used(), 0);
        prop_assert_eq!(c.spans_kept + c2.spans_kept, kept);
    }
}

#[test]
fn malformed_nested_content_is_carried_not_decoded() {
    // A span whose attribute entry is garbage inside but well-formed at the top level: the
    // scanner accepts it, and nothing on the way (decision, record_policy) may fail on it.
    let good = span(1, 1, 0, true);
    let mut bytes = good.bytes().to_vec();
    bytes.extend_from_slice(&[0x4a, 0x03, 0x0a, 0x09, b'x']); // field 9, KeyValue with a truncated key
    let mut odd = good;
    odd.set_bytes(Bytes::from(bytes));
    let mut c = cfg();
    c.record_policy = true;
    let mut r = Rig::new(c, 1 << 20);
    r.ingest(vec![odd.clone()], S);
    let kept = r.shard.poll(20 * S).kept;
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].bytes().starts_with(odd.bytes()),
        "original bytes carried as they are"
    );
}

#[test]
fn a_handed_off_decision_settles_spans_the_new_owner_already_buffers() {
    let mut a = Rig::new(cfg(), 1 << 20);
    let mut b = Rig::new(cfg(), 1 << 20);
    a.ingest(vec![span(1, 1, 0, true), span(2, 1, 0, false)], S);
    a.shard.poll(5 * S);
    // Late spans reached the new owner under the new ring before the handoff did.
    b.ingest(vec![span(1, 2, 1, false), span(2, 2, 1, false)], 6 * S);
    assert_eq!(b.shard.traces_buffered(), 2);
    let mut kept = Vec::new();
    for d in a.shard.decisions_for(6 * S, &|_| true) {
        kept.extend(b.shard.accept_decision(d, 6 * S).kept);
    }
    assert_eq!(
        names(&kept),
        vec!["2:s2"],
        "trace 1 kept (error), trace 2 dropped"
    );
    assert_eq!(
        b.shard.traces_buffered(),
        0,
        "one decision per trace: none decided again"
    );
    assert_eq!(b.budget.bytes_used(), 0);
    let c = b.shard.take_counters();
    assert_eq!(c.traces_decided_by_handoff, 2);
    assert_eq!((c.spans_kept, c.spans_dropped_policy), (1, 1));
}

#[test]
fn a_failed_handoff_comes_back_with_its_deadline() {
    let mut a = Rig::new(cfg(), 1 << 20);
    a.ingest(vec![span(3, 1, 0, true), span(3, 2, 1, false)], S);
    let moved = a.shard.take_traces(2 * S, &|_| true);
    assert_eq!(a.budget.bytes_used(), 0);
    for t in moved {
        assert!(
            a.shard
                .restore_trace(t, 2 * S, Duration::ZERO)
                .kept
                .is_empty()
        );
    }
    assert_eq!(a.shard.traces_buffered(), 1);
    assert_eq!(
        a.shard.next_deadline(),
        Some(3 * S),
        "root at 1s + 2s quiet, unchanged"
    );
    let c = a.shard.take_counters();
    assert_eq!((c.traces_handed_off, c.traces_handoff_returned), (1, 1));
    assert_eq!(a.shard.poll(3 * S).kept.len(), 2);
}

#[test]
fn the_runtime_override_keeps_what_the_policies_do_not_and_can_be_cleared() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.shard.set_override(Some(100.0));
    r.ingest(vec![span(4, 1, 0, false)], S);
    assert_eq!(
        r.shard.poll(3 * S).kept.len(),
        1,
        "healthy trace kept by the override"
    );
    assert_eq!(r.shard.take_counters().traces_kept_by_override, 1);
    r.shard.set_override(None);
    r.ingest(vec![span(5, 1, 0, false)], 4 * S);
    assert!(r.shard.poll(6 * S).kept.is_empty());
    r.shard.set_override(Some(0.0));
    r.ingest(vec![span(6, 1, 0, false)], 7 * S);
    assert!(
        r.shard.poll(9 * S).kept.is_empty(),
        "0% keeps nothing extra"
    );
}

#[test]
fn a_span_sent_again_after_its_trace_was_kept_is_not_exported_twice() {
    let mut a = Rig::new(cfg(), 1 << 20);
    a.ingest(vec![span(7, 1, 0, true), span(7, 2, 1, false)], S);
    assert_eq!(a.shard.poll(3 * S).kept.len(), 2);
    // A forward whose acknowledgement was lost is resent: same spans, plus a new one.
    let late = a.ingest(vec![span(7, 2, 1, false), span(7, 3, 1, false)], 4 * S);
    assert_eq!(names(&late), vec!["8:s3"]);
    assert_eq!(a.shard.take_counters().spans_duplicate, 1);
    // The new owner learns what was released with the decision.
    let mut b = Rig::new(cfg(), 1 << 20);
    b.ingest(vec![span(7, 1, 0, true), span(7, 4, 1, false)], 5 * S);
    let mut kept = Vec::new();
    for d in a.shard.decisions_for(5 * S, &|_| true) {
        assert_eq!(d.released.len(), 3);
        kept.extend(b.shard.accept_decision(d, 5 * S).kept);
    }
    assert_eq!(
        names(&kept),
        vec!["8:s4"],
        "s1 was exported by the previous owner"
    );
    assert_eq!(b.budget.bytes_used(), 0);
}

#[test]
fn a_held_stray_waits_at_least_the_hold_then_is_decided() {
    let mut a = Rig::new(cfg(), 1 << 20);
    let bytes: u64 = [span(9, 1, 0, true)]
        .iter()
        .map(|s| s.bytes().len() as u64)
        .sum();
    assert!(a.budget.try_reserve(bytes));
    a.shard.ingest_held(vec![span(9, 1, 0, true)], S, 8 * S);
    assert_eq!(
        a.shard.next_deadline(),
        Some(9 * S),
        "root + 2 s would be 3 s; held to 9 s"
    );
    assert!(a.shard.poll(5 * S).kept.is_empty());
    assert_eq!(a.shard.poll(9 * S).kept.len(), 1);
}

#[test]
fn held_spans_of_a_trace_decided_here_go_to_the_owner_not_out_again() {
    // This node kept trace 5 (its root), handed the decision on, then a forward of the
    // trace's children to the new owner broke without a reply: the owner may have them.
    let mut a = Rig::new(cfg(), 1 << 20);
    a.ingest(vec![span(5, 1, 0, true)], S);
    assert_eq!(a.shard.poll(3 * S).kept.len(), 1);
    let children = vec![span(5, 2, 1, false), span(5, 3, 1, false)];
    let bytes: u64 = children.iter().map(|s| s.bytes().len() as u64).sum();
    assert!(a.budget.try_reserve(bytes));
    let now = a.shard.ingest_held(children, 4 * S, 8 * S);
    assert!(
        now.kept.is_empty(),
        "not exported here on the cached decision: the owner releases them once"
    );
    assert_eq!(a.shard.traces_buffered(), 1);
    // The retry hands them to the owner, which knows what was released.
    let moved = a.shard.take_traces(5 * S, &|_| true);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].spans.len(), 2);
    let mut owner = Rig::new(cfg(), 1 << 20);
    for d in a.shard.decisions_for(5 * S, &|_| true) {
        owner.shard.accept_decision(d, 5 * S);
    }
    // The owner had taken s2 from the broken forward already.
    owner.ingest(vec![span(5, 2, 1, false)], 5 * S);
    let kept = owner
        .shard
        .accept_trace(moved.into_iter().next().unwrap(), 5 * S);
    assert_eq!(names(&kept.kept), vec!["6:s3"], "s2 once, s3 once");

    // Held there past the hold, they follow the decision made here, still once each.
    let mut b = Rig::new(cfg(), 1 << 20);
    b.ingest(vec![span(6, 1, 0, true), span(6, 2, 1, false)], S);
    assert_eq!(b.shard.poll(3 * S).kept.len(), 2);
    let again = vec![span(6, 2, 1, false), span(6, 3, 1, false)];
    let bytes: u64 = again.iter().map(|s| s.bytes().len() as u64).sum();
    assert!(b.budget.try_reserve(bytes));
    assert!(b.shard.ingest_held(again, 4 * S, 8 * S).kept.is_empty());
    assert_eq!(names(&b.shard.poll(20 * S).kept), vec!["7:s3"]);
    assert_eq!(b.budget.bytes_used(), 0);
}
