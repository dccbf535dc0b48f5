//! Replica copies (`replication_factor: 2`): the spans of traces another gateway owns, kept
//! passively so that a crash of the owner loses nothing (docs/cluster.md, "Crash
//! durability").
//!
//! ```text
//!  copy from the owner ──► Held ── owner's decision ──► (dropped; decision cached)
//!                           │  └─ expire_at passes ───► (dropped, counted: nobody confirmed)
//!                           │  └─ neither owner nor replica any more ─► moved to the new replica
//!                           └─ this node owns the trace (the owner was removed) ─► promoted:
//!                              a buffered trace of this shard, its deadline resuming
//! ```
//!
//! A replica evaluates no policy and releases nothing: its copies become spans to decide only
//! once promoted. They share the shard's byte budget; under memory pressure they are the
//! first to go (a copy of data held elsewhere costs durability, not sampling quality).
//!
//! **Invariants:** a trace is never both buffered and held as a copy in one shard (promotion
//! moves it, a copy of a buffered trace merges into the buffer); no clock: every method
//! takes `now`.

use std::collections::BTreeSet;
use std::time::Duration;

use tailgate_otlp::{EncodedSpan, SpanId, TraceId};

use super::{Released, TraceGroups, TraceShard};
use crate::IdMap;
use crate::buffer::TraceBuffer;
use crate::shard::handoff::{DecisionTransfer, TraceTransfer};

/// What a shard counts about its replica copies between two reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaCounters {
    /// Spans taken in as copies (from the owner's ingest or a whole-trace copy).
    pub spans_received: u64,
    /// Copies dropped because the owner's decision arrived.
    pub spans_settled: u64,
    /// Copies dropped because no decision came before `expire_at`.
    pub spans_expired: u64,
    /// Copies dropped to bring the byte budget back under its high watermark.
    pub spans_evicted: u64,
    /// Copies of traces this node took over (their owner was removed).
    pub traces_promoted: u64,
    pub spans_promoted: u64,
    /// Copies given to a trace's new replica after a ring change.
    pub spans_moved: u64,
}

#[derive(Debug)]
struct ReplicaEntry {
    buffer: TraceBuffer,
    first_seen: Duration,
    /// When the owner decides, as far as this node knows (its own estimate for spans copied
    /// as they arrived; the owner's remaining time for whole-trace copies).
    decide_at: Duration,
    root_seen: bool,
    /// When the copy is dropped if no decision arrived.
    expire_at: Duration,
    seq: u64,
}

/// The copies one shard holds for other owners.
#[derive(Debug, Default)]
pub(super) struct ReplicaStore {
    traces: IdMap<TraceId, ReplicaEntry>,
    /// `(expire_at, seq, id)`: the garbage-collection order.
    by_expiry: BTreeSet<(Duration, u64, TraceId)>,
    /// `seq → id`: oldest first, for eviction.
    by_arrival: std::collections::BTreeMap<u64, TraceId>,
    next_seq: u64,
    spans: usize,
    pub(super) counters: ReplicaCounters,
}

impl ReplicaStore {
    pub(super) fn next_expiry(&self) -> Option<Duration> {
        self.by_expiry.first().map(|(at, _, _)| *at)
    }

    fn remove(&mut self, id: &TraceId) -> Option<ReplicaEntry> {
        let e = self.traces.remove(id)?;
        self.by_expiry.remove(&(e.expire_at, e.seq, *id));
        self.by_arrival.remove(&e.seq);
        self.spans -= e.buffer.span_count();
        Some(e)
    }

    fn oldest(&self) -> Option<TraceId> {
        self.by_arrival.first_key_value().map(|(_, id)| *id)
    }
}

impl TraceShard {
    /// Replica copies held, in traces and spans.
    pub fn replicas_held(&self) -> (usize, usize) {
        (self.replicas.traces.len(), self.replicas.spans)
    }

    /// Bytes of the replica copies held.
    pub fn replica_bytes(&self) -> u64 {
        self.replicas
            .traces
            .values()
            .map(|e| e.buffer.encoded_bytes())
            .sum()
    }

    /// Takes copies of spans the owner just accepted; bytes reserved by the caller. Spans of a
    /// trace this shard buffers itself (it owns it at a newer ring than the sender's) merge
    /// into the buffer; spans of a trace already decided are dropped (a replica never
    /// releases anything).
    pub fn replicate(&mut self, spans: Vec<EncodedSpan>, now: Duration) -> Released {
        let mut out = Released::default();
        self.replicas.counters.spans_received += spans.len() as u64;
        let grouped = TraceGroups::of(spans);
        for (id, group) in grouped.iter() {
            self.hold_copy(id, group, None, now, &mut out);
        }
        self.enforce_limits(now, &mut out);
        out
    }

    /// Takes a whole-trace copy with the owner's state (a new replica after a ring change, a
    /// promoted trace re-replicated). Never refused: the budget is forced, and eviction
    /// brings it back down. A copy of a trace this shard buffers as its own merges into it,
    /// which is then decided no earlier than `now + hold`: the copy came from a member that
    /// backed up an earlier owner, whose kept decision may still be on its way.
    pub fn replicate_trace(&mut self, t: TraceTransfer, now: Duration, hold: Duration) -> Released {
        let mut out = Released::default();
        let bytes: u64 = t.spans.iter().map(|s| s.bytes().len() as u64).sum();
        self.budget.force_reserve(bytes);
        self.replicas.counters.spans_received += t.spans.len() as u64;
        let id = t.trace_id;
        let merged = self.traces.contains_key(&id);
        let state = (t.remaining, t.age, t.root_seen);
        self.hold_copy(id, &t.spans, Some(state), now, &mut out);
        if merged {
            self.hold_until(&id, now + hold);
        }
        self.enforce_limits(now, &mut out);
        out
    }

    /// Whether this shard buffers the trace as its own (undecided).
    pub fn buffers(&self, id: &TraceId) -> bool {
        self.traces.contains_key(id)
    }

    /// Decides a buffered trace no earlier than `at` (nothing if it is not buffered).
    pub fn hold(&mut self, id: &TraceId, at: Duration) {
        self.hold_until(id, at);
    }

    /// The IDs of the spans of a kept trace released so far (the decision's own and late
    /// spans that followed it), for the replica.
    pub fn released_spans(&self, id: &TraceId) -> Vec<SpanId> {
        self.cache.released_of(id)
    }

    fn hold_copy(
        &mut self,
        id: TraceId,
        spans: &[EncodedSpan],
        state: Option<(Duration, Duration, bool)>,
        now: Duration,
        out: &mut Released,
    ) {
        if self.traces.contains_key(&id) {
            // Buffered here as a primary already: one copy per node.
            self.ingest_trace(id, spans, state, now, out);
            return;
        }
        if self.cache.get(&id, now).is_some() {
            let n = spans.len() as u64;
            self.budget
                .release(spans.iter().map(|s| s.bytes().len() as u64).sum());
            self.replicas.counters.spans_settled += n;
            return;
        }
        let grace = self.cfg.replica_grace;
        let key_filter = &self.key_filter;
        let decision_wait = self.cfg.decision_wait;
        let store = &mut self.replicas;
        let entry = store.traces.entry(id).or_insert_with(|| {
            let (first_seen, decide_at) = match state {
                Some((remaining, age, _)) => (now.saturating_sub(age), now + remaining),
                None => (now, now + decision_wait),
            };
            let seq = store.next_seq;
            store.next_seq += 1;
            let expire_at = decide_at + grace;
            store.by_expiry.insert((expire_at, seq, id));
            store.by_arrival.insert(seq, id);
            ReplicaEntry {
                buffer: TraceBuffer::default(),
                first_seen,
                decide_at,
                root_seen: false,
                expire_at,
                seq,
            }
        });
        let appended = entry.buffer.append(spans, key_filter);
        store.spans += appended.spans;
        self.budget.release(appended.duplicate_bytes);
        let mut decide_at = entry.decide_at;
        if let Some((remaining, _, root_seen)) = state {
            decide_at = decide_at.min(now + remaining);
            entry.root_seen |= root_seen;
        }
        if appended.root_seen && !entry.root_seen {
            entry.root_seen = true;
            if let Some(quiet) = self.cfg.decision_wait_after_root {
                decide_at = decide_at.min(now + quiet);
            }
        }
        entry.decide_at = decide_at;
    }

    /// The owner's decisions: copies are dropped, the decisions cached (late spans and a
    /// later takeover follow them). A decision of a trace this shard buffers settles it, as
    /// a handed-off decision does.
    pub fn replica_decisions(
        &mut self,
        decisions: Vec<DecisionTransfer>,
        now: Duration,
    ) -> Released {
        let mut out = Released::default();
        for d in decisions {
            if let Some(e) = self.replicas.remove(&d.trace_id) {
                self.budget.release(e.buffer.encoded_bytes());
                self.replicas.counters.spans_settled += e.buffer.span_count() as u64;
            }
            out.kept.extend(self.accept_decision(d, now).kept);
        }
        out
    }

    /// Promotes the copies of every trace `owns` selects (this node is their owner now: the
    /// previous one left or was removed) into buffered traces, their deadlines resuming but
    /// no earlier than `now + hold`: a previous owner that left gracefully hands off its
    /// decisions, and one that arrives within the hold settles the trace (without it, a
    /// trace decided just before the leave was decided again — a duplicate the simulator
    /// found in rolling restarts). Returns the IDs promoted, so the caller re-replicates them.
    pub fn promote_replicas(
        &mut self,
        now: Duration,
        hold: Duration,
        owns: &dyn Fn(&TraceId) -> bool,
    ) -> (Released, Vec<TraceId>) {
        let mut out = Released::default();
        let ids: Vec<TraceId> = self
            .replicas
            .by_arrival
            .values()
            .filter(|id| owns(id))
            .copied()
            .collect();
        for id in &ids {
            let e = self.replicas.remove(id).expect("listed in by_arrival");
            self.replicas.counters.traces_promoted += 1;
            self.replicas.counters.spans_promoted += e.buffer.span_count() as u64;
            let state = (
                e.decide_at.saturating_sub(now),
                now.saturating_sub(e.first_seen),
                e.root_seen,
            );
            // Bytes stay reserved: they move from the copy to the buffer.
            self.ingest_trace(*id, &e.buffer.spans(), Some(state), now, &mut out);
            self.hold_until(id, now + hold);
        }
        self.enforce_limits(now, &mut out);
        (out, ids)
    }

    /// The copies `select` picks, with their state, for another node (this one keeps them
    /// until that node acknowledged: see [`TraceShard::drop_copies`]).
    pub fn copies_for(
        &self,
        now: Duration,
        select: &dyn Fn(&TraceId) -> bool,
    ) -> Vec<TraceTransfer> {
        self.replicas
            .by_arrival
            .values()
            .filter(|id| select(id))
            .map(|id| {
                let e = &self.replicas.traces[id];
                TraceTransfer::at(*id, &e.buffer, e.first_seen, e.decide_at, e.root_seen, now)
            })
            .collect()
    }

    /// Drops the copies of `ids` another node acknowledged (counted as moved).
    pub fn drop_copies(&mut self, ids: &[TraceId]) {
        for id in ids {
            if let Some(e) = self.replicas.remove(id) {
                self.budget.release(e.buffer.encoded_bytes());
                self.replicas.counters.spans_moved += e.buffer.span_count() as u64;
            }
        }
    }

    /// Takes over a trace from a copy another node held (its owner is gone and this node
    /// owns it now): buffered like a promoted copy, decided no earlier than `now + hold`.
    pub fn take_over(&mut self, t: TraceTransfer, now: Duration, hold: Duration) -> Released {
        let mut out = Released::default();
        let bytes: u64 = t.spans.iter().map(|s| s.bytes().len() as u64).sum();
        self.budget.force_reserve(bytes);
        self.replicas.counters.traces_promoted += 1;
        self.replicas.counters.spans_promoted += t.spans.len() as u64;
        let id = t.trace_id;
        let state = (t.remaining, t.age, t.root_seen);
        self.ingest_moved_trace(id, &t.spans, Some(state), now, hold, &mut out);
        self.hold_until(&id, now + hold);
        self.enforce_limits(now, &mut out);
        out
    }

    /// Takes spans that reached this owner as copies (sent by a gateway that owned or backed
    /// up their traces at an older ring). Like [`TraceShard::ingest`], except that spans of a
    /// trace kept here before wait `hold` instead of following the decision at once: the
    /// gateway they came through may have released them under the same decision, and its
    /// decision, listing what it released, arrives within `hold` to settle them (the
    /// simulator found them exported by both). Bytes are reserved by the caller.
    pub fn ingest_moved(
        &mut self,
        spans: Vec<EncodedSpan>,
        now: Duration,
        hold: Duration,
    ) -> Released {
        let mut out = Released::default();
        self.counters.spans_received += spans.len() as u64;
        let grouped = TraceGroups::of(spans);
        for (id, group) in grouped.iter() {
            self.ingest_moved_trace(id, group, None, now, hold, &mut out);
        }
        self.enforce_limits(now, &mut out);
        out
    }

    fn ingest_moved_trace(
        &mut self,
        id: TraceId,
        spans: &[EncodedSpan],
        state: Option<(Duration, Duration, bool)>,
        now: Duration,
        hold: Duration,
        out: &mut Released,
    ) {
        if self.cache.get(&id, now).is_some_and(|d| d.keep) {
            // Spans this node released itself came back (a copy of what it accepted): they
            // are duplicates, not spans to hold (seed 50427 handed them on as undecided).
            let (fresh, released): (Vec<EncodedSpan>, Vec<EncodedSpan>) = spans
                .iter()
                .cloned()
                .partition(|s| !self.cache.was_released(&id, &s.meta.span_id));
            self.counters.spans_duplicate += released.len() as u64;
            self.budget
                .release(released.iter().map(|s| s.bytes().len() as u64).sum());
            if fresh.is_empty() {
                return;
            }
            // Decided (see `decide`) by the cached decision once the hold is over, or
            // settled by the sender's decision before (`accept_decision`).
            self.buffer_trace(id, &fresh, state, now, out);
            self.hold_until(&id, now + hold);
        } else {
            self.ingest_trace(id, spans, state, now, out);
        }
    }

    /// Whether this shard holds a copy of the trace.
    pub fn holds_copy(&self, id: &TraceId) -> bool {
        self.replicas.traces.contains_key(id)
    }

    /// Copies of the buffered traces `select` picks, with their state, for their replica
    /// (the buffer keeps them).
    pub fn copy_traces(
        &self,
        now: Duration,
        select: &dyn Fn(&TraceId) -> bool,
    ) -> Vec<TraceTransfer> {
        self.by_arrival
            .values()
            .filter(|id| select(id))
            .map(|id| {
                let e = &self.traces[id];
                TraceTransfer::at(*id, &e.buffer, e.first_seen, e.decide_at, e.root_seen, now)
            })
            .collect()
    }

    /// Drops copies nobody confirmed by their `expire_at` (counted).
    pub(super) fn expire_replicas(&mut self, now: Duration) {
        while let Some(&(at, _, id)) = self.replicas.by_expiry.first() {
            if at > now {
                break;
            }
            let e = self.replicas.remove(&id).expect("indexed");
            self.budget.release(e.buffer.encoded_bytes());
            self.replicas.counters.spans_expired += e.buffer.span_count() as u64;
        }
    }

    /// Drops the oldest copies until `target` bytes are freed; returns the bytes freed.
    pub(super) fn evict_replicas(&mut self, target: u64) -> u64 {
        let mut freed = 0;
        while freed < target {
            let Some(id) = self.replicas.oldest() else {
                break;
            };
            let e = self.replicas.remove(&id).expect("indexed");
            let bytes = e.buffer.encoded_bytes();
            self.budget.release(bytes);
            self.replicas.counters.spans_evicted += e.buffer.span_count() as u64;
            freed += bytes;
        }
        freed
    }
}
