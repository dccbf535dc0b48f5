//! Goal: a replica copy is passive until its owner is gone, then decides exactly as the
//! owner would have (same spans, same remaining deadline); every copy that goes away
//! without a decision is counted. Method: drive one shard as a replica with explicit `now`.

use super::*;

impl Rig {
    /// Reserves like the pipeline stage does, then takes the spans as replica copies.
    fn replicate(&mut self, spans: Vec<EncodedSpan>, now: Duration) -> Released {
        let bytes = spans.iter().map(|s| s.bytes().len() as u64).sum();
        assert!(self.budget.try_reserve(bytes), "budget full in test");
        self.shard.replicate(spans, now)
    }
}

fn reporting() -> ShardConfig {
    ShardConfig {
        report_decisions: true,
        ..cfg()
    }
}

#[test]
fn a_copy_is_passive_until_the_owners_decision_drops_it() {
    let mut r = Rig::new(cfg(), 1 << 20);
    let out = r.replicate(vec![span(1, 0, 0, true), span(1, 1, 0, false)], S);
    assert!(out.kept.is_empty());
    assert_eq!(r.shard.replicas_held(), (1, 2));
    assert!(
        r.budget.bytes_used() > 0,
        "copies are charged to the budget"
    );
    // The owner's deadline passes: a replica decides nothing.
    assert!(r.shard.poll(20 * S).kept.is_empty());
    assert_eq!(r.shard.traces_buffered(), 0);
    let decision = DecisionTransfer {
        trace_id: tid(1),
        keep: true,
        age: Duration::ZERO,
        released: vec![span(1, 0, 0, true).meta.span_id],
    };
    assert!(
        r.shard
            .replica_decisions(vec![decision], 20 * S)
            .kept
            .is_empty()
    );
    assert_eq!(r.shard.replicas_held(), (0, 0));
    assert_eq!(r.budget.bytes_used(), 0);
    // A late copy of a decided trace is dropped, not held again.
    r.replicate(vec![span(1, 2, 1, false)], 21 * S);
    assert_eq!(r.shard.replicas_held(), (0, 0));
    assert_eq!(r.budget.bytes_used(), 0);
    let c = r.shard.take_counters().replica;
    assert_eq!((c.spans_received, c.spans_settled), (3, 3));
}

#[test]
fn a_promoted_copy_is_decided_at_the_owners_deadline_on_every_span() {
    let mut r = Rig::new(cfg(), 1 << 20);
    // No root: the owner decides at 1 s + decision_wait (10 s).
    r.replicate(vec![span(1, 1, 7, true)], S);
    r.replicate(vec![span(1, 2, 7, false)], 2 * S);
    let (out, promoted) = r.shard.promote_replicas(4 * S, Duration::ZERO, &|_| true);
    assert!(out.kept.is_empty());
    assert_eq!(promoted, vec![tid(1)]);
    assert_eq!(r.shard.replicas_held(), (0, 0));
    assert_eq!(r.shard.traces_buffered(), 1);
    assert_eq!(
        r.shard.next_deadline(),
        Some(11 * S),
        "the deadline resumes"
    );
    let kept = r.shard.poll(11 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1", "2:s2"]);
    assert_eq!(r.budget.bytes_used(), 0);
    let c = r.shard.take_counters().replica;
    assert_eq!((c.traces_promoted, c.spans_promoted), (1, 2));
}

#[test]
fn copies_nobody_confirms_expire_after_the_grace_counted() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.replicate(vec![span(1, 1, 7, false)], S);
    // decide_at = 11 s; grace 10 s.
    assert_eq!(r.shard.next_replica_expiry(), Some(21 * S));
    r.shard.poll(21 * S - ms(1));
    assert_eq!(r.shard.replicas_held(), (1, 1));
    r.shard.poll(21 * S);
    assert_eq!(r.shard.replicas_held(), (0, 0));
    assert_eq!(r.budget.bytes_used(), 0);
    assert_eq!(r.shard.take_counters().replica.spans_expired, 1);
}

#[test]
fn under_memory_pressure_copies_go_before_buffered_traces() {
    let one = span(1, 1, 7, false).bytes().len() as u64;
    let mut r = Rig::new(cfg(), one * 12);
    r.ingest(vec![span(1, 1, 7, false)], S);
    r.replicate((0..6).map(|n| span(2, n, 7, false)).collect(), S);
    // Past the high watermark: the copies are evicted, the buffered trace stays.
    r.replicate((0..5).map(|n| span(3, n, 7, false)).collect(), 2 * S);
    assert_eq!(r.shard.traces_buffered(), 1);
    let c = r.shard.take_counters();
    assert!(c.replica.spans_evicted > 0, "{c:?}");
    assert!(c.early_decisions.is_empty(), "{c:?}");
}

#[test]
fn a_copy_moves_with_its_state_and_is_dropped_only_once_acknowledged() {
    let mut a = Rig::new(cfg(), 1 << 20);
    a.replicate(vec![span(1, 0, 0, true)], S);
    // Root seen at 1 s: decide at 3 s.
    let moved = a.shard.copies_for(2 * S, &|_| true);
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (moved[0].remaining, moved[0].age, moved[0].root_seen),
        (S, S, true)
    );
    assert!(a.shard.holds_copy(&tid(1)), "kept until acknowledged");
    a.shard.drop_copies(&[tid(1)]);
    assert_eq!(a.budget.bytes_used(), 0);
    assert_eq!(a.shard.take_counters().replica.spans_moved, 1);
    // The receiver owns the trace: it takes over, decided no earlier than the hold.
    let mut b = Rig::new(cfg(), 1 << 20);
    for t in moved {
        b.shard.take_over(t, 5 * S, 2 * S);
    }
    assert_eq!(b.shard.next_deadline(), Some(7 * S));
    assert_eq!(b.shard.poll(7 * S).kept.len(), 1);
    assert_eq!(b.budget.bytes_used(), 0);
}

#[test]
fn a_buffered_trace_is_copied_not_taken_and_its_decision_is_reported() {
    let mut r = Rig::new(reporting(), 1 << 20);
    r.ingest(vec![span(1, 0, 0, true), span(1, 1, 0, false)], S);
    r.ingest(vec![span(2, 0, 0, false)], S);
    let copies = r.shard.copy_traces(2 * S, &|id| *id == tid(1));
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].spans.len(), 2);
    assert_eq!(r.shard.traces_buffered(), 2, "the owner keeps its buffer");
    let out = r.shard.poll(3 * S);
    assert_eq!(out.kept.len(), 2);
    let mut decided: Vec<(TraceId, bool, usize)> = out
        .decided
        .iter()
        .map(|d| (d.trace_id, d.keep, d.released.len()))
        .collect();
    decided.sort();
    assert_eq!(decided, vec![(tid(1), true, 2), (tid(2), false, 0)]);
}

#[test]
fn a_copy_of_a_trace_this_shard_buffers_merges_into_the_buffer() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest(vec![span(1, 1, 7, true)], S);
    r.replicate(vec![span(1, 1, 7, true), span(1, 2, 7, false)], 2 * S);
    assert_eq!(r.shard.replicas_held(), (0, 0));
    assert_eq!(r.shard.spans_buffered(), 2, "merged by span ID");
    assert_eq!(names(&r.shard.poll(11 * S).kept), vec!["2:s1", "2:s2"]);
    assert_eq!(r.budget.bytes_used(), 0);
}

#[test]
fn a_promoted_copy_waits_out_the_hold_for_the_previous_owners_decision() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.replicate(vec![span(1, 0, 0, true)], S);
    // Root at 1 s: the owner decided at 3 s; the copy is promoted at 4 s with a 2 s hold.
    let (_, promoted) = r.shard.promote_replicas(4 * S, 2 * S, &|_| true);
    assert_eq!(promoted.len(), 1);
    assert_eq!(r.shard.next_deadline(), Some(6 * S));
    // The previous owner's handed-off decision arrives within the hold: nothing twice.
    let decision = DecisionTransfer {
        trace_id: tid(1),
        keep: true,
        age: S,
        released: vec![span(1, 0, 0, true).meta.span_id],
    };
    assert!(r.shard.accept_decision(decision, 5 * S).kept.is_empty());
    assert_eq!(r.shard.traces_buffered(), 0);
    assert!(r.shard.poll(6 * S).kept.is_empty());
}

#[test]
fn spans_released_after_a_kept_decision_are_listed_with_it() {
    let mut r = Rig::new(reporting(), 1 << 20);
    r.ingest(vec![span(1, 0, 0, true)], S);
    let out = r.shard.poll(3 * S);
    assert_eq!(out.decided.len(), 1);
    assert_eq!(out.decided[0].released.len(), 1, "the decision as taken");
    // A late child follows the decision; the replica must learn of it too, or a takeover
    // would release its copy of the child a second time.
    assert_eq!(
        names(&r.ingest(vec![span(1, 1, 9, false)], 4 * S)),
        vec!["2:s1"]
    );
    let mut released = r.shard.released_spans(&tid(1));
    released.sort();
    let mut want = vec![
        span(1, 0, 0, true).meta.span_id,
        span(1, 1, 9, false).meta.span_id,
    ];
    want.sort();
    assert_eq!(released, want);
    assert!(r.shard.released_spans(&tid(2)).is_empty());
}

#[test]
fn a_copy_of_a_trace_buffered_here_is_held_until_the_takeover_hold() {
    let mut r = Rig::new(cfg(), 1 << 20);
    // Buffered here as its own, due at 11 s.
    r.ingest(vec![span(1, 1, 7, true)], S);
    let copy = |t: u32, n: u32| TraceTransfer {
        trace_id: tid(t),
        spans: vec![span(t, n, 7, false)],
        remaining: S,
        age: S,
        root_seen: false,
        encoded_bytes: span(t, n, 7, false).bytes().len() as u64,
    };
    // A copy from a member that backed up an earlier owner merges, and the trace waits out
    // the hold (that owner's kept decision may be on its way).
    r.shard.replicate_trace(copy(1, 2), 2 * S, 7 * S);
    assert_eq!(r.shard.spans_buffered(), 2);
    assert_eq!(r.shard.next_deadline(), Some(9 * S));
    assert!(r.shard.poll(8 * S).kept.is_empty());
    assert_eq!(names(&r.shard.poll(9 * S).kept), vec!["2:s1", "2:s2"]);
    // A copy of a trace not buffered here stays a passive copy: no hold, no deadline.
    r.shard.replicate_trace(copy(2, 1), 10 * S, 7 * S);
    assert_eq!(r.shard.replicas_held(), (1, 1));
    assert_eq!(r.shard.next_deadline(), None);
}

impl Rig {
    fn ingest_moved(&mut self, spans: Vec<EncodedSpan>, now: Duration, hold: Duration) -> Released {
        let bytes = spans.iter().map(|s| s.bytes().len() as u64).sum();
        assert!(self.budget.try_reserve(bytes), "budget full in test");
        self.shard.ingest_moved(spans, now, hold)
    }
}

/// A kept decision whose sender released `released` (span numbers of trace 1).
fn kept_decision(released: &[u32]) -> DecisionTransfer {
    DecisionTransfer {
        trace_id: tid(1),
        keep: true,
        age: Duration::ZERO,
        released: released
            .iter()
            .map(|n| span(1, *n, 0, false).meta.span_id)
            .collect(),
    }
}

#[test]
fn copied_spans_of_a_kept_trace_wait_for_the_senders_decision_instead_of_following_at_once() {
    // Seed 45997: this owner cached a kept decision releasing s0; late spans s1, s2 reached
    // the gateway that owned the trace at the older ring, which released them, and then
    // came here as copies. Following the cached decision at once exported them twice.
    let mut r = Rig::new(cfg(), 1 << 20);
    assert!(
        r.shard
            .accept_decision(kept_decision(&[0]), S)
            .kept
            .is_empty()
    );
    let late = vec![span(1, 1, 0, false), span(1, 2, 0, false)];
    assert!(r.ingest_moved(late, 2 * S, 7 * S).kept.is_empty(), "held");
    assert_eq!(r.shard.next_deadline(), Some(9 * S), "held 7 s");
    // A copy of the decision this node has (it lists s0 only) settles nothing (seed 47017).
    assert!(
        r.shard
            .accept_decision(kept_decision(&[0]), 3 * S)
            .kept
            .is_empty()
    );
    assert_eq!(r.shard.traces_buffered(), 1);
    // The sender's decision lists what it released: nothing is released again.
    assert!(
        r.shard
            .accept_decision(kept_decision(&[0, 1, 2]), 6 * S)
            .kept
            .is_empty()
    );
    assert!(r.shard.poll(9 * S).kept.is_empty());
    assert_eq!(r.shard.traces_buffered(), 0);
    assert_eq!(r.budget.bytes_used(), 0);
}

#[test]
fn copied_spans_of_a_kept_trace_follow_the_decision_once_the_hold_passes() {
    // The sender crashed before its decision left: after the hold, what it may not have
    // exported is released here — each span once.
    let mut r = Rig::new(cfg(), 1 << 20);
    r.shard.accept_decision(kept_decision(&[0]), S);
    let late = vec![span(1, 0, 0, false), span(1, 1, 0, false)];
    assert!(r.ingest_moved(late, 2 * S, 7 * S).kept.is_empty());
    assert!(r.shard.poll(8 * S).kept.is_empty(), "still held");
    let kept = r.shard.poll(9 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1"], "s0 was released before");
    assert_eq!(r.budget.bytes_used(), 0);
    // A dropped decision needs no hold: dropping twice loses nothing.
    let mut r = Rig::new(cfg(), 1 << 20);
    r.shard.accept_decision(
        DecisionTransfer {
            keep: false,
            ..kept_decision(&[])
        },
        S,
    );
    assert!(
        r.ingest_moved(vec![span(1, 1, 0, false)], 2 * S, 7 * S)
            .kept
            .is_empty()
    );
    assert_eq!(r.shard.traces_buffered(), 0);
    assert_eq!(r.budget.bytes_used(), 0);
}

#[test]
fn copies_of_spans_this_owner_released_are_duplicates_not_held() {
    // Seed 50427: the owner released late spans s1, s2 under its kept decision; copies of
    // them came back; held, they were handed to the next owner as undecided and released
    // there again.
    let mut r = Rig::new(cfg(), 1 << 20);
    r.shard.accept_decision(kept_decision(&[0]), S);
    let late = vec![span(1, 1, 0, false), span(1, 2, 0, false)];
    let bytes: u64 = late.iter().map(|s| s.bytes().len() as u64).sum();
    assert!(r.budget.try_reserve(bytes));
    assert_eq!(
        names(&r.shard.ingest(late, 2 * S).kept),
        vec!["2:s1", "2:s2"]
    );
    let copies = vec![span(1, 1, 0, false), span(1, 2, 0, false)];
    assert!(r.ingest_moved(copies, 3 * S, 7 * S).kept.is_empty());
    assert_eq!(r.shard.traces_buffered(), 0, "nothing held");
    assert_eq!(r.budget.bytes_used(), 0);
    assert!(r.shard.poll(20 * S).kept.is_empty());
}
