//! [`TraceShard`]: the per-trace state machines of one shard, and everything that moves them.
//!
//! ## Trace states
//!
//! ```text
//!            first span                 decide_at reached / early decision
//!  (absent) ───────────► Buffering ──────────────────────────────────────► Decided(keep|drop)
//!                           │  ▲                                               │ cache entry
//!                take_traces│  │accept_trace (handoff)                         ▼ evicted/expired
//!                           ▼  │                                             Forgotten
//!                        (moved to another node)
//! ```
//!
//! - **Buffering**: the trace is in `traces`, indexed by deadline and arrival. `decide_at` is
//!   `first_seen + decision_wait`, pulled earlier to `root_seen_at + decision_wait_after_root_received`
//!   when the root span arrives. Only this shard's owner (the actor) mutates it.
//! - **Decided**: policies ran once on the spans at hand; kept spans were released downstream;
//!   the decision sits in the [`DecisionCache`], so late spans follow it.
//! - **Forgotten**: the cache let it go; a later span starts a new trace (counted apart).
//!
//! Early decisions (on partial data, counted by [`EarlyReason`]) happen when the shared byte
//! budget passes its high watermark, when the shard holds more than its share of
//! `num_traces`, or when one trace exceeds `maximum_trace_size_bytes`. Nothing is ever
//! evicted without a decision.
//!
//! **Invariants:** no I/O and no clock: every method takes `now` (time since the engine's
//! epoch). Iteration that affects outcomes goes through ordered indexes, never hash-map order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tailgate_otlp::{EncodedSpan, TraceId};

use crate::IdMap;
use crate::budget::BufferBudget;
use crate::buffer::TraceBuffer;
use crate::cache::{CachedDecision, DecisionCache};
use crate::policy::{KeyFilter, PolicySet};
use crate::record::DecisionRecord;

mod counters;
mod decide;
mod handoff;
mod replica;

pub use counters::{EarlyReason, ShardCounters};
pub use handoff::{DecisionTransfer, TraceTransfer};
pub use replica::ReplicaCounters;

use replica::ReplicaStore;

/// Deciding in batches (thresholds on, with a rate or bytes limit), traces due within one
/// tick are decided together, as the collector's decision ticker does once a second.
pub const DECISION_TICK: Duration = Duration::from_secs(1);

/// Settings of one shard, derived from the processor config.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub decision_wait: Duration,
    /// `decision_wait_after_root_received`; `None` = off.
    pub decision_wait_after_root: Option<Duration>,
    /// This shard's share of `num_traces`.
    pub traces_max: usize,
    /// `maximum_trace_size_bytes`; 0 = no limit.
    pub trace_bytes_max: u64,
    pub sampled_cache_size: usize,
    pub non_sampled_cache_size: usize,
    pub cache_ttl: Duration,
    pub record_policy: bool,
    pub drop_pending_on_shutdown: bool,
    /// Report every decision in [`Released::decided`] (for the replicas, with
    /// `replication_factor: 2`).
    pub report_decisions: bool,
    /// How long past the owner's expected decision a replica copy waits for it.
    pub replica_grace: Duration,
}

/// Spans a shard operation released downstream (kept traces, late spans of kept traces).
#[derive(Debug, Default)]
pub struct Released {
    pub kept: Vec<EncodedSpan>,
    /// The decisions taken, when `ShardConfig::report_decisions` (kept ones with the span
    /// IDs released).
    pub decided: Vec<DecisionTransfer>,
}

impl Released {
    /// Adds what another operation released.
    pub fn absorb(&mut self, other: Released) {
        self.kept.extend(other.kept);
        self.decided.extend(other.decided);
    }
}

#[derive(Debug)]
struct TraceEntry {
    buffer: TraceBuffer,
    first_seen: Duration,
    decide_at: Duration,
    root_seen: bool,
    seq: u64,
}

/// One shard of the tail-sampling engine.
pub struct TraceShard {
    cfg: ShardConfig,
    policies: PolicySet,
    /// The policies' attribute keys, run over spans as they are buffered.
    key_filter: KeyFilter,
    budget: Arc<BufferBudget>,
    shard_count: u64,
    traces: IdMap<TraceId, TraceEntry>,
    by_deadline: BTreeSet<(Duration, u64, TraceId)>,
    by_arrival: BTreeMap<u64, TraceId>,
    cache: DecisionCache,
    next_seq: u64,
    counters: ShardCounters,
    /// Spans across `traces`, kept incrementally (reading it must not walk every trace).
    spans_buffered: usize,
    /// While set, deadlines pass without decisions (see `set_fenced`).
    fenced: bool,
    /// Copies of traces other gateways own (`replica.rs`).
    replicas: ReplicaStore,
}

impl TraceShard {
    pub fn new(
        cfg: ShardConfig,
        policies: PolicySet,
        budget: Arc<BufferBudget>,
        shard_count: usize,
    ) -> Self {
        assert!(shard_count > 0 && cfg.traces_max > 0, "validated config");
        let cache = DecisionCache::new(
            cfg.sampled_cache_size,
            cfg.non_sampled_cache_size,
            cfg.cache_ttl,
        );
        TraceShard {
            cfg,
            key_filter: policies.key_filter(),
            policies,
            budget,
            shard_count: shard_count as u64,
            traces: IdMap::default(),
            by_deadline: BTreeSet::new(),
            by_arrival: BTreeMap::new(),
            cache,
            next_seq: 0,
            counters: ShardCounters::default(),
            spans_buffered: 0,
            fenced: false,
            replicas: ReplicaStore::default(),
        }
    }

    pub fn policy_names(&self) -> &[String] {
        self.policies.names()
    }

    /// This node's share of the cluster-wide rates (rate limits, throughput targets); each of
    /// its `shard_count` shards takes an equal part of it.
    pub fn set_rate_share(&mut self, share: f64) {
        self.policies
            .set_rate_share(share / self.shard_count as f64);
    }

    pub fn traces_buffered(&self) -> usize {
        self.traces.len()
    }

    pub fn spans_buffered(&self) -> usize {
        debug_assert_eq!(
            self.spans_buffered,
            self.traces
                .values()
                .map(|t| t.buffer.span_count())
                .sum::<usize>()
        );
        self.spans_buffered
    }

    pub fn bytes_buffered(&self) -> u64 {
        self.traces.values().map(|t| t.buffer.encoded_bytes()).sum()
    }

    /// Memory held by buffered spans (bytes plus per-span records), for the P2 benchmark.
    pub fn memory_bytes(&self) -> usize {
        self.traces.values().map(|t| t.buffer.memory_bytes()).sum()
    }

    pub fn take_counters(&mut self) -> ShardCounters {
        ShardCounters {
            replica: std::mem::take(&mut self.replicas.counters),
            ..std::mem::take(&mut self.counters)
        }
    }

    /// When the next decision falls due, if any trace is buffered. Deciding in batches, due
    /// traces wait for the next whole tick.
    pub fn next_deadline(&self) -> Option<Duration> {
        let at = self.by_deadline.first().map(|(at, _, _)| *at)?;
        if !self.policies.decides_in_batches() {
            return Some(at);
        }
        let tick = DECISION_TICK.as_nanos();
        Some(Duration::from_nanos(
            (at.as_nanos().div_ceil(tick) * tick) as u64,
        ))
    }

    /// When the next replica copy expires, if any is held.
    pub fn next_replica_expiry(&self) -> Option<Duration> {
        self.replicas.next_expiry()
    }

    /// Takes spans whose encoded bytes the caller has already reserved in the budget.
    pub fn ingest(&mut self, spans: Vec<EncodedSpan>, now: Duration) -> Released {
        let mut out = Released::default();
        self.counters.spans_received += spans.len() as u64;
        let grouped = TraceGroups::of(spans);
        for (trace_id, group) in grouped.iter() {
            self.ingest_trace(trace_id, group, None, now, &mut out);
        }
        self.enforce_limits(now, &mut out);
        out
    }

    /// Takes spans whose owner could not be reached (or may have received them without this
    /// node seeing the acknowledgement), and holds their traces undecided for at least `hold`:
    /// long enough for a partition to end and the owner's decision to arrive, so the trace is
    /// decided once rather than on both sides. Bytes are reserved by the caller.
    pub fn ingest_held(
        &mut self,
        spans: Vec<EncodedSpan>,
        now: Duration,
        hold: Duration,
    ) -> Released {
        let mut out = Released::default();
        self.counters.spans_received += spans.len() as u64;
        let grouped = TraceGroups::of(spans);
        for (trace_id, group) in grouped.iter() {
            // Buffered even when this node decided the trace: its owner may hold these spans
            // already, and only the owner releases each span once. Following the cached
            // decision here exported them twice (asymmetric partition, seed 20983: a forward
            // whose reply broke, of a trace whose decision this node had handed on).
            self.buffer_trace(trace_id, group, None, now, &mut out);
        }
        for (id, _) in grouped.iter() {
            self.hold_until(&id, now + hold);
        }
        self.enforce_limits(now, &mut out);
        out
    }

    /// The spans of a kept trace not released before (counting the others as duplicates),
    /// remembered as released from now on.
    fn release_once(&mut self, id: TraceId, spans: Vec<EncodedSpan>) -> Vec<EncodedSpan> {
        let before = spans.len();
        let fresh: Vec<EncodedSpan> = spans
            .into_iter()
            .filter(|s| !self.cache.was_released(&id, &s.meta.span_id))
            .collect();
        self.counters.spans_duplicate += (before - fresh.len()) as u64;
        self.cache
            .record_released(id, fresh.iter().map(|s| s.meta.span_id));
        fresh
    }

    /// Pushes a buffered trace's deadline to at least `at`.
    fn hold_until(&mut self, id: &TraceId, at: Duration) {
        let Some(entry) = self.traces.get_mut(id) else {
            return;
        };
        if entry.decide_at >= at {
            return;
        }
        let (old, seq) = (entry.decide_at, entry.seq);
        entry.decide_at = at;
        self.by_deadline.remove(&(old, seq, *id));
        self.by_deadline.insert((at, seq, *id));
    }

    fn ingest_trace(
        &mut self,
        trace_id: TraceId,
        spans: &[EncodedSpan],
        transfer: Option<(Duration, Duration, bool)>,
        now: Duration,
        out: &mut Released,
    ) {
        let bytes: u64 = spans.iter().map(|s| s.bytes().len() as u64).sum();
        if let Some(d) = self.cache.get(&trace_id, now) {
            self.budget.release(bytes);
            self.follow_decision(trace_id, d, spans.to_vec(), now, out);
            return;
        }
        self.buffer_trace(trace_id, spans, transfer, now, out);
    }

    /// Late spans follow the decision already taken; a kept trace's span sent again (a
    /// resent forward or handoff, held spans) is not released twice. Bytes are released by
    /// the caller.
    fn follow_decision(
        &mut self,
        id: TraceId,
        d: CachedDecision,
        spans: Vec<EncodedSpan>,
        now: Duration,
        out: &mut Released,
    ) {
        let spans = if d.keep {
            self.release_once(id, spans)
        } else {
            spans
        };
        let n = spans.len() as u64;
        self.counters.late_span_ages.extend(std::iter::repeat_n(
            now.saturating_sub(d.decided_at),
            spans.len(),
        ));
        if d.keep {
            self.counters.late_spans_kept += n;
            self.counters.spans_kept += n;
            let spans = self.write_threshold(spans, d.threshold);
            let record = DecisionRecord {
                cached: self.cfg.record_policy,
                ..self.record(d.policy, None)
            };
            out.kept.extend(record.write(spans));
        } else {
            self.counters.late_spans_dropped += n;
            self.counters.spans_dropped_late += n;
        }
    }

    fn buffer_trace(
        &mut self,
        trace_id: TraceId,
        spans: &[EncodedSpan],
        transfer: Option<(Duration, Duration, bool)>,
        now: Duration,
        out: &mut Released,
    ) {
        // One lookup finds or makes the entry (the trace table is large: each lookup is a
        // likely cache miss). Fields are borrowed apart so the index can be updated meanwhile.
        let entry = match self.traces.entry(trace_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if self.cache.was_forgotten(&trace_id) {
                    self.counters.late_spans_after_forget += spans.len() as u64;
                }
                let (first_seen, decide_at) = match transfer {
                    Some((remaining, age, _)) => (now.saturating_sub(age), now + remaining),
                    None => (now, now + self.cfg.decision_wait),
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                self.by_deadline.insert((decide_at, seq, trace_id));
                self.by_arrival.insert(seq, trace_id);
                self.budget.trace_added();
                if transfer.is_none() {
                    self.counters.traces_new += 1;
                }
                e.insert(TraceEntry {
                    buffer: TraceBuffer::default(),
                    first_seen,
                    decide_at,
                    root_seen: false,
                    seq,
                })
            }
        };
        let appended = entry.buffer.append(spans, &self.key_filter);
        self.spans_buffered += appended.spans;
        if appended.duplicate_bytes > 0 {
            self.budget.release(appended.duplicate_bytes);
            self.counters.spans_duplicate += appended.duplicate_spans as u64;
        }
        let mut new_deadline = entry.decide_at;
        if let Some((remaining, _, root_seen)) = transfer {
            // Merge with what this node already holds: the earlier deadline wins.
            new_deadline = new_deadline.min(now + remaining);
            entry.root_seen |= root_seen;
        }
        if appended.root_seen && !entry.root_seen {
            entry.root_seen = true;
            if let Some(quiet) = self.cfg.decision_wait_after_root {
                new_deadline = new_deadline.min(now + quiet);
            }
        }
        if new_deadline != entry.decide_at {
            let (old, seq) = (entry.decide_at, entry.seq);
            entry.decide_at = new_deadline;
            self.by_deadline.remove(&(old, seq, trace_id));
            self.by_deadline.insert((new_deadline, seq, trace_id));
        }
        if self.cfg.trace_bytes_max > 0 && entry.buffer.encoded_bytes() > self.cfg.trace_bytes_max {
            self.decide(trace_id, Some(EarlyReason::TraceTooLarge), now, out);
        }
    }

    /// Fences the shard (the cluster lost contact with this node): deadlines pass without
    /// decisions until unfenced, or until the traces are handed to their new owners. Early
    /// decisions under memory pressure still happen (the budget wins).
    pub fn set_fenced(&mut self, fenced: bool) {
        self.fenced = fenced;
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Decides every trace whose deadline has come, and expires old cache entries.
    pub fn poll(&mut self, now: Duration) -> Released {
        let mut out = Released::default();
        if self.policies.decides_in_batches() {
            self.decide_due_batch(now, &mut out);
        } else {
            while let Some(&(at, _, id)) = self.by_deadline.first() {
                if self.fenced || at > now {
                    break;
                }
                self.counters.decision_lateness.push(now.saturating_sub(at));
                self.decide(id, None, now, &mut out);
            }
        }
        self.cache.expire(now);
        self.expire_replicas(now);
        self.enforce_limits(now, &mut out);
        out
    }

    fn oldest(&self) -> Option<TraceId> {
        self.by_arrival.first_key_value().map(|(_, id)| *id)
    }

    fn enforce_limits(&mut self, now: Duration, out: &mut Released) {
        while self.traces.len() > self.cfg.traces_max {
            let id = self.oldest().expect("non-empty");
            self.decide(id, Some(EarlyReason::NumTraces), now, out);
        }
        let excess = self.budget.excess_bytes();
        if excess > 0 {
            // Each shard frees its share of the excess: replica copies first (copies of data
            // held elsewhere), then its oldest traces.
            let target = excess.div_ceil(self.shard_count);
            let mut freed = self.evict_replicas(target);
            while freed < target {
                let Some(id) = self.oldest() else { break };
                freed += self.traces[&id].buffer.encoded_bytes();
                self.decide(id, Some(EarlyReason::BufferFull), now, out);
            }
        }
    }

    fn remove(&mut self, id: &TraceId) -> Option<TraceEntry> {
        let entry = self.traces.remove(id)?;
        self.spans_buffered -= entry.buffer.span_count();
        self.by_deadline.remove(&(entry.decide_at, entry.seq, *id));
        self.by_arrival.remove(&entry.seq);
        self.budget.release(entry.buffer.encoded_bytes());
        self.budget.trace_removed();
        Some(entry)
    }

    /// Shutdown without a peer: decide every buffered trace on the data at hand (or drop them
    /// all, counted, with `drop_pending_traces_on_shutdown`).
    pub fn drain(&mut self, now: Duration) -> Released {
        let mut out = Released::default();
        while let Some(id) = self.oldest() {
            if self.cfg.drop_pending_on_shutdown {
                let entry = self.remove(&id).expect("buffered");
                self.counters.spans_dropped_shutdown += entry.buffer.span_count() as u64;
            } else {
                self.decide(id, Some(EarlyReason::Shutdown), now, &mut out);
            }
        }
        out
    }

    /// Sets or clears the runtime sampling override (see `PolicySet::set_override`).
    pub fn set_override(&mut self, percentage: Option<f64>) {
        self.policies.set_override(percentage);
    }
}

/// A batch's spans grouped by trace, each group contiguous, in order of first appearance
/// (deterministic). Spans of a trace usually come together, and then nothing moves; else each
/// span moves once into its group's place. Groups are slices: a group copied out span by
/// span moved every span several times (the ingest profile's largest copy after the span
/// bytes themselves).
struct TraceGroups {
    spans: Vec<EncodedSpan>,
    /// Each trace and where its spans lie in `spans`.
    groups: Vec<(TraceId, std::ops::Range<usize>)>,
}

impl TraceGroups {
    fn of(spans: Vec<EncodedSpan>) -> TraceGroups {
        let mut index: IdMap<TraceId, u32> = IdMap::default();
        // (trace, start, end) of each run of one trace, and the group each run belongs to.
        let mut runs: Vec<(usize, usize, u32)> = Vec::new();
        let mut groups: Vec<(TraceId, usize)> = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            let id = s.meta.trace_id;
            if let Some(run) = runs.last_mut()
                && groups[run.2 as usize].0 == id
            {
                run.1 = i + 1;
                continue;
            }
            let group = *index.entry(id).or_insert_with(|| {
                groups.push((id, 0));
                (groups.len() - 1) as u32
            });
            runs.push((i, i + 1, group));
        }
        for &(start, end, g) in &runs {
            groups[g as usize].1 += end - start;
        }
        let mut at = 0;
        let ranges: Vec<(TraceId, std::ops::Range<usize>)> = groups
            .iter()
            .map(|&(id, n)| {
                at += n;
                (id, at - n..at)
            })
            .collect();
        if runs.len() == groups.len() {
            return TraceGroups {
                spans,
                groups: ranges,
            };
        }
        // Runs of one trace apart from each other: each span moves once, to its group.
        let mut next: Vec<usize> = ranges.iter().map(|(_, r)| r.start).collect();
        let mut place: Vec<usize> = vec![0; spans.len()];
        for &(start, end, g) in &runs {
            for slot in &mut place[start..end] {
                *slot = next[g as usize];
                next[g as usize] += 1;
            }
        }
        let mut slots: Vec<Option<EncodedSpan>> = (0..spans.len()).map(|_| None).collect();
        for (s, p) in spans.into_iter().zip(place) {
            slots[p] = Some(s);
        }
        TraceGroups {
            spans: slots
                .into_iter()
                .map(|s| s.expect("every place filled once"))
                .collect(),
            groups: ranges,
        }
    }

    /// Each trace with its spans.
    fn iter(&self) -> impl Iterator<Item = (TraceId, &[EncodedSpan])> {
        self.groups
            .iter()
            .map(|(id, range)| (*id, &self.spans[range.clone()]))
    }
}
