//! Moving a shard's state to another owner: buffered traces (with their remaining time) and
//! decisions, when the ring changes or a gateway leaves.

use std::time::Duration;

use tailgate_otlp::{EncodedSpan, SpanId, TraceId};

use super::{Released, TraceShard};
use crate::buffer::TraceBuffer;
use crate::cache::CachedDecision;

/// A buffered trace on its way to its new owner (cluster handoff).
#[derive(Debug, Clone)]
pub struct TraceTransfer {
    pub trace_id: TraceId,
    pub spans: Vec<EncodedSpan>,
    /// Time left until the decision; no clock sync between nodes is assumed.
    pub remaining: Duration,
    /// Time since the first span arrived.
    pub age: Duration,
    pub root_seen: bool,
    pub encoded_bytes: u64,
}

impl TraceTransfer {
    /// What another node needs of a trace held here at `now`: its spans and, as durations,
    /// its remaining time and age.
    pub(super) fn at(
        trace_id: TraceId,
        buffer: &TraceBuffer,
        first_seen: Duration,
        decide_at: Duration,
        root_seen: bool,
        now: Duration,
    ) -> TraceTransfer {
        TraceTransfer {
            trace_id,
            spans: buffer.spans(),
            remaining: decide_at.saturating_sub(now),
            age: now.saturating_sub(first_seen),
            root_seen,
            encoded_bytes: buffer.encoded_bytes(),
        }
    }
}

/// A decision on its way to a trace's new owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionTransfer {
    pub trace_id: TraceId,
    pub keep: bool,
    /// Time since the decision.
    pub age: Duration,
    /// Spans of a kept trace the previous owner already released: never released again.
    pub released: Vec<SpanId>,
}

impl TraceShard {
    /// Removes and returns every buffered trace `moves` selects (its owner changed), oldest
    /// first. The caller hands them to the new owner.
    pub fn take_traces(
        &mut self,
        now: Duration,
        moves: &dyn Fn(&TraceId) -> bool,
    ) -> Vec<TraceTransfer> {
        let ids: Vec<TraceId> = self
            .by_arrival
            .values()
            .filter(|id| moves(id))
            .copied()
            .collect();
        ids.into_iter()
            .map(|id| {
                let e = self.remove(&id).expect("listed in by_arrival");
                self.counters.traces_handed_off += 1;
                self.counters.spans_handed_off += e.buffer.span_count() as u64;
                TraceTransfer::at(id, &e.buffer, e.first_seen, e.decide_at, e.root_seen, now)
            })
            .collect()
    }

    /// Takes in a trace from its previous owner, merging with any spans already here. Its
    /// deadline resumes where it stood (no second full `decision_wait`).
    pub fn accept_trace(&mut self, t: TraceTransfer, now: Duration) -> Released {
        let mut out = Released::default();
        let bytes: u64 = t.spans.iter().map(|s| s.bytes().len() as u64).sum();
        // A handoff is never refused: early decisions bring the budget back down.
        self.budget.force_reserve(bytes);
        self.counters.traces_received_by_handoff += 1;
        self.counters.spans_received_by_handoff += t.spans.len() as u64;
        self.ingest_trace(
            t.trace_id,
            &t.spans,
            Some((t.remaining, t.age, t.root_seen)),
            now,
            &mut out,
        );
        self.enforce_limits(now, &mut out);
        out
    }

    /// Takes back a trace whose handoff failed: it is buffered again as it was (its deadline
    /// kept running while it was away), and the next ring change re-plans it.
    pub fn restore_trace(&mut self, t: TraceTransfer, now: Duration, hold: Duration) -> Released {
        let mut out = Released::default();
        let id = t.trace_id;
        let bytes: u64 = t.spans.iter().map(|s| s.bytes().len() as u64).sum();
        self.budget.force_reserve(bytes);
        self.counters.traces_handoff_returned += 1;
        self.ingest_trace(
            t.trace_id,
            &t.spans,
            Some((t.remaining, t.age, t.root_seen)),
            now,
            &mut out,
        );
        // The receiver may have taken it without this node seeing the ack: hold it.
        self.hold_until(&id, now + hold);
        self.enforce_limits(now, &mut out);
        out
    }

    /// Remembered decisions of the traces `moves` selects, for their new owner.
    pub fn decisions_for(
        &self,
        now: Duration,
        moves: &dyn Fn(&TraceId) -> bool,
    ) -> Vec<DecisionTransfer> {
        self.cache
            .matching(moves)
            .into_iter()
            .map(|(id, d)| DecisionTransfer {
                trace_id: id,
                keep: d.keep,
                age: now.saturating_sub(d.decided_at),
                released: self.cache.released_of(&id),
            })
            .collect()
    }

    /// Remembers a decision made by a trace's previous owner.
    ///
    /// If this node already buffers spans of that trace (they reached it under the new ring
    /// before the handoff did), the decision settles them too: one decision per trace.
    pub fn accept_decision(&mut self, d: DecisionTransfer, now: Duration) -> Released {
        let mut out = Released::default();
        // Spans buffered beside a decision this node had already are held on purpose
        // (`ingest_held`, `ingest_moved`): another gateway may have released some of them,
        // and only its decision's list of released spans says which. A decision arriving
        // meanwhile adds to that list; the hold's end settles the rest (`decide`). Settling
        // them here released spans a copy of the same decision did not list (seed 47017).
        let held =
            self.cache.get(&d.trace_id, now).is_some() && self.traces.contains_key(&d.trace_id);
        self.cache.insert(
            d.trace_id,
            CachedDecision {
                keep: d.keep,
                decided_at: now.saturating_sub(d.age),
                policy: None,
                threshold: None,
            },
        );
        self.cache
            .record_released(d.trace_id, d.released.iter().copied());
        if held {
            return out;
        }
        if let Some(entry) = self.remove(&d.trace_id) {
            self.counters.traces_decided_by_handoff += 1;
            let spans = entry.buffer.spans();
            if d.keep {
                let fresh = self.release_once(d.trace_id, spans);
                self.counters.spans_kept += fresh.len() as u64;
                out.kept.extend(fresh);
            } else {
                self.counters.spans_dropped_policy += spans.len() as u64;
            }
        }
        out
    }
}
