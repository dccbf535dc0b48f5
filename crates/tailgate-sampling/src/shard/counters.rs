//! What a shard counts between two reads: traces, spans, votes, decisions and why a decision
//! came early. The owning actor turns them into metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ReplicaCounters;
use crate::policy::Decision;

/// Why a trace was decided before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EarlyReason {
    /// The byte budget passed its high watermark.
    BufferFull,
    /// The shard held more than its share of `num_traces`.
    NumTraces,
    /// The trace exceeded `maximum_trace_size_bytes`.
    TraceTooLarge,
    /// Shutdown with no peer to hand the trace to.
    Shutdown,
}

impl EarlyReason {
    /// Every reason, in the order of [`EarlyReason::index`].
    pub const ALL: [EarlyReason; 4] = [
        EarlyReason::BufferFull,
        EarlyReason::NumTraces,
        EarlyReason::TraceTooLarge,
        EarlyReason::Shutdown,
    ];

    /// Position in [`EarlyReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            EarlyReason::BufferFull => "buffer_full",
            EarlyReason::NumTraces => "num_traces",
            EarlyReason::TraceTooLarge => "trace_too_large",
            EarlyReason::Shutdown => "shutdown",
        }
    }
}

/// Counts since the last [`TraceShard::take_counters`]; the actor turns them into metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardCounters {
    pub spans_received: u64,
    pub spans_kept: u64,
    pub spans_dropped_policy: u64,
    pub spans_dropped_late: u64,
    pub spans_dropped_shutdown: u64,
    pub spans_duplicate: u64,
    pub late_spans_kept: u64,
    pub late_spans_dropped: u64,
    /// Age of each late span's decision when the span arrived.
    pub late_span_ages: Vec<Duration>,
    /// Spans of a trace whose decision was already forgotten (they start a new trace).
    pub late_spans_after_forget: u64,
    pub traces_new: u64,
    /// `(policy index, vote)` counts.
    pub votes: BTreeMap<(usize, Decision), u64>,
    /// Final decisions of traces: kept (`Sampled`), dropped by a drop policy (`Dropped`),
    /// or by no policy keeping them (`NotSampled`).
    pub decisions: BTreeMap<Decision, u64>,
    pub early_decisions: BTreeMap<EarlyReason, u64>,
    /// Orphan spans per `service.name` ("" when unknown).
    pub orphan_spans: BTreeMap<String, u64>,
    /// How late each deadline decision ran after its `decide_at`.
    pub decision_lateness: Vec<Duration>,
    pub traces_handed_off: u64,
    pub spans_handed_off: u64,
    pub traces_received_by_handoff: u64,
    pub spans_received_by_handoff: u64,
    /// Traces kept only by the runtime sampling override.
    pub traces_kept_by_override: u64,
    /// Kept spans whose `tracestate` did not parse, so no `ot=th` could be recorded (the
    /// collector's `count_spans_with_unparseable_tracestate`).
    pub spans_unparseable_tracestate: u64,
    /// Buffered traces decided by a decision that arrived from their previous owner.
    pub traces_decided_by_handoff: u64,
    /// Traces taken for a handoff that failed and came back (`restore_trace`).
    pub traces_handoff_returned: u64,
    /// The replica copies (`replication_factor: 2`).
    pub replica: ReplicaCounters,
}
