//! A shard's metric handles, registered once when the shard starts — every label they carry
//! (processor, policy, decision, reason) is known then, so recording on the hot path
//! allocates nothing. Only orphan spans' `service_name` is open-ended; its handles are made
//! on first sight.

use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tailgate_sampling::policy::Decision;
use tailgate_sampling::{EarlyReason, ShardCounters};

use crate::telemetry::*;

/// `sampled` label of a decision, as the collector writes it.
fn sampled_label(d: Decision) -> &'static str {
    if d == Decision::Sampled {
        "true"
    } else {
        "false"
    }
}

pub(super) struct ShardMetrics {
    processor: String,
    received: Counter,
    kept: Counter,
    new_traces: Counter,
    after_forget: Counter,
    handed_off: Counter,
    received_by_handoff: Counter,
    dropped: [Counter; 4],
    late: [Counter; 2],
    late_age: Histogram,
    unparseable_tracestate: Counter,
    timer_latency: Histogram,
    pub(super) buffered_spans: Gauge,
    pub(super) traces_on_memory: Gauge,
    pub(super) buffered_bytes: Gauge,
    /// Per policy (in evaluation order), per [`Decision::ALL`].
    votes: Vec<[Counter; 3]>,
    /// Per [`Decision::ALL`].
    decisions: [Counter; 3],
    /// Per [`EarlyReason::ALL`].
    early: [Counter; 4],
    orphans: HashMap<String, Counter>,
    /// Replica copies: received, settled, expired, evicted, promoted, moved.
    replica: [Counter; 6],
    replica_traces_promoted: Counter,
    pub(super) replica_held_spans: Gauge,
}

impl ShardMetrics {
    /// Handles for shard `shard` of `processor`, whose policies are `policies` in evaluation
    /// order.
    pub(super) fn new(processor: &str, shard: usize, policies: &[String]) -> Self {
        let p = || processor.to_string();
        let dropped = |reason: &'static str| counter!(SAMPLING_SPANS_DROPPED, "processor" => p(), "reason" => reason);
        let vote = |policy: &String, d: Decision| counter!(TAIL_SAMPLING_COUNT_TRACES_SAMPLED, "processor" => p(), "policy" => policy.clone(), "decision" => d.label(), "sampled" => sampled_label(d));
        let decision = |d: Decision| counter!(TAIL_SAMPLING_GLOBAL_COUNT_TRACES_SAMPLED, "processor" => p(), "decision" => d.label(), "sampled" => sampled_label(d));
        let early = |r: EarlyReason| counter!(SAMPLING_EARLY_DECISIONS, "processor" => p(), "reason" => r.label());
        ShardMetrics {
            processor: p(),
            received: counter!(SAMPLING_SPANS_RECEIVED, "processor" => p()),
            kept: counter!(SAMPLING_SPANS_KEPT, "processor" => p()),
            new_traces: counter!(TAIL_SAMPLING_NEW_TRACE_ID_RECEIVED, "processor" => p()),
            after_forget: counter!(SAMPLING_LATE_SPANS_AFTER_FORGET, "processor" => p()),
            handed_off: counter!(SAMPLING_TRACES_HANDED_OFF, "processor" => p()),
            received_by_handoff: counter!(SAMPLING_TRACES_RECEIVED_BY_HANDOFF, "processor" => p()),
            dropped: [
                dropped("policy"),
                dropped("late_dropped_trace"),
                dropped("shutdown"),
                dropped("duplicate"),
            ],
            late: [
                counter!(TAIL_SAMPLING_EARLY_RELEASES_FROM_CACHE, "processor" => p(), "sampled" => "true"),
                counter!(TAIL_SAMPLING_EARLY_RELEASES_FROM_CACHE, "processor" => p(), "sampled" => "false"),
            ],
            late_age: histogram!(TAIL_SAMPLING_LATE_SPAN_AGE, "processor" => p()),
            unparseable_tracestate: counter!(TAIL_SAMPLING_UNPARSEABLE_TRACESTATE, "processor" => p()),
            timer_latency: histogram!(TAIL_SAMPLING_DECISION_TIMER_LATENCY, "processor" => p()),
            buffered_spans: gauge!(SAMPLING_BUFFERED_SPANS, "processor" => p(), "shard" => shard.to_string()),
            traces_on_memory: gauge!(TAIL_SAMPLING_TRACES_ON_MEMORY, "processor" => p()),
            buffered_bytes: gauge!(SAMPLING_BUFFERED_BYTES, "processor" => p()),
            votes: policies
                .iter()
                .map(|policy| Decision::ALL.map(|d| vote(policy, d)))
                .collect(),
            decisions: Decision::ALL.map(decision),
            early: EarlyReason::ALL.map(early),
            orphans: HashMap::new(),
            replica: [
                "received", "settled", "expired", "evicted", "promoted", "moved",
            ]
            .map(|event| counter!(REPLICA_SPANS, "event" => event)),
            replica_traces_promoted: counter!(REPLICA_TRACES_PROMOTED),
            replica_held_spans: gauge!(REPLICA_HELD_SPANS, "shard" => shard.to_string()),
        }
    }

    pub(super) fn record(&mut self, c: ShardCounters) {
        self.received.increment(c.spans_received);
        self.kept.increment(c.spans_kept);
        self.new_traces.increment(c.traces_new);
        self.after_forget.increment(c.late_spans_after_forget);
        self.handed_off.increment(c.traces_handed_off);
        self.received_by_handoff
            .increment(c.traces_received_by_handoff);
        let dropped = [
            c.spans_dropped_policy,
            c.spans_dropped_late,
            c.spans_dropped_shutdown,
            c.spans_duplicate,
        ];
        for (counter, v) in self.dropped.iter().zip(dropped) {
            counter.increment(v);
        }
        self.late[0].increment(c.late_spans_kept);
        self.late[1].increment(c.late_spans_dropped);
        self.unparseable_tracestate
            .increment(c.spans_unparseable_tracestate);
        for age in c.late_span_ages {
            self.late_age.record(age.as_secs_f64());
        }
        for late in c.decision_lateness {
            self.timer_latency.record(late.as_secs_f64() * 1000.0);
        }
        for ((policy, decision), v) in c.votes {
            self.votes[policy][decision.index()].increment(v);
        }
        for (decision, v) in c.decisions {
            self.decisions[decision.index()].increment(v);
        }
        for (reason, v) in c.early_decisions {
            self.early[reason.index()].increment(v);
        }
        let r = c.replica;
        let replica = [
            r.spans_received,
            r.spans_settled,
            r.spans_expired,
            r.spans_evicted,
            r.spans_promoted,
            r.spans_moved,
        ];
        for (counter, v) in self.replica.iter().zip(replica) {
            counter.increment(v);
        }
        self.replica_traces_promoted.increment(r.traces_promoted);
        for (service, v) in c.orphan_spans {
            let processor = &self.processor;
            self.orphans
                .entry(service)
                .or_insert_with_key(|service| counter!(ORPHAN_SPANS, "processor" => processor.clone(), "service_name" => service.clone()))
                .increment(v);
        }
    }
}
