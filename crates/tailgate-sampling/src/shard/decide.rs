//! Deciding a trace: the policies' verdict applied — cached, counted, its kept spans
//! released with what `record_policy` and thresholds (`ot=th`) write on them.

use std::time::Duration;

use tailgate_otlp::{EncodedSpan, TraceId};

use super::{DECISION_TICK, EarlyReason, Released, TraceEntry, TraceShard};
use crate::cache::CachedDecision;
use crate::policy::{Decision, TraceView, Verdict};
use crate::record::DecisionRecord;
use crate::shard::DecisionTransfer;
use crate::tracestate::{Threshold, ThresholdUpdate, record_threshold};

impl TraceShard {
    pub(super) fn decide(
        &mut self,
        id: TraceId,
        early: Option<EarlyReason>,
        now: Duration,
        out: &mut Released,
    ) {
        let Some((entry, spans)) = self.take_for_decision(id, now, out) else {
            return;
        };
        let view =
            TraceView::new(id, &spans).with_keys_seen(&self.key_filter, entry.buffer.keys_seen());
        let verdict = self.policies.decide(&view, now);
        self.apply_verdict(id, &entry, spans, verdict, early, now, out);
    }

    /// Decides every trace due by the last whole tick together, as the collector decides one
    /// tick's batch: a rate or bytes limit's budget becomes one threshold for all of them.
    pub(super) fn decide_due_batch(&mut self, now: Duration, out: &mut Released) {
        let tick = DECISION_TICK.as_nanos();
        let due_by = Duration::from_nanos((now.as_nanos() / tick * tick) as u64);
        let mut due = Vec::new();
        while let Some(&(at, _, id)) = self.by_deadline.first() {
            if self.fenced || at > due_by {
                break;
            }
            self.counters.decision_lateness.push(now.saturating_sub(at));
            if let Some(taken) = self.take_for_decision(id, now, out) {
                due.push((id, taken));
            }
        }
        if due.is_empty() {
            return;
        }
        let views: Vec<TraceView<'_>> = due
            .iter()
            .map(|(id, (entry, spans))| {
                TraceView::new(*id, spans)
                    .with_keys_seen(&self.key_filter, entry.buffer.keys_seen())
            })
            .collect();
        let verdicts = self.policies.decide_batch(&views, now);
        drop(views);
        for ((id, (entry, spans)), verdict) in due.into_iter().zip(verdicts) {
            self.apply_verdict(id, &entry, spans, verdict, None, now, out);
        }
    }

    /// Removes a buffered trace for its decision; `None` when a decision was cached before
    /// (held spans of a decided trace: that decision stands, and they have followed it).
    fn take_for_decision(
        &mut self,
        id: TraceId,
        now: Duration,
        out: &mut Released,
    ) -> Option<(TraceEntry, Vec<EncodedSpan>)> {
        let entry = self.remove(&id).expect("deciding a buffered trace");
        let spans = entry.buffer.spans();
        if let Some(d) = self.cache.get(&id, now) {
            self.follow_decision(id, d, spans, now, out);
            return None;
        }
        Some((entry, spans))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_verdict(
        &mut self,
        id: TraceId,
        entry: &TraceEntry,
        spans: Vec<EncodedSpan>,
        verdict: Verdict,
        early: Option<EarlyReason>,
        now: Duration,
        out: &mut Released,
    ) {
        if let Some(reason) = early {
            *self.counters.early_decisions.entry(reason).or_default() += 1;
        }
        if verdict.by_override {
            self.counters.traces_kept_by_override += 1;
        }
        for (i, d) in &verdict.votes {
            *self.counters.votes.entry((*i, *d)).or_default() += 1;
        }
        let decision = match (
            verdict.keep,
            verdict.votes.iter().any(|(_, d)| *d == Decision::Dropped),
        ) {
            (true, _) => Decision::Sampled,
            (false, true) => Decision::Dropped,
            (false, false) => Decision::NotSampled,
        };
        *self.counters.decisions.entry(decision).or_default() += 1;
        for service in entry.buffer.orphans() {
            *self
                .counters
                .orphan_spans
                .entry(service.unwrap_or_default())
                .or_default() += 1;
        }
        self.cache.insert(
            id,
            CachedDecision {
                keep: verdict.keep,
                decided_at: now,
                policy: verdict.decided_by,
                threshold: verdict.threshold,
            },
        );
        let n = spans.len() as u64;
        if self.cfg.report_decisions {
            out.decided.push(DecisionTransfer {
                trace_id: id,
                keep: verdict.keep,
                age: Duration::ZERO,
                released: if verdict.keep {
                    spans.iter().map(|s| s.meta.span_id).collect()
                } else {
                    Vec::new()
                },
            });
        }
        if verdict.keep {
            self.cache
                .record_released(id, spans.iter().map(|s| s.meta.span_id));
            self.counters.spans_kept += n;
            let spans = self.write_threshold(spans, verdict.threshold);
            let record = self.record(verdict.decided_by, verdict.composite_policy.as_deref());
            out.kept.extend(record.write(spans));
        } else {
            self.counters.spans_dropped_policy += n;
        }
    }

    /// Records a kept trace's effective threshold in its spans' `tracestate` (`ot=th`), never
    /// lowering one already there; spans whose trace state does not parse are left as they are
    /// and counted, as the collector counts them.
    pub(super) fn write_threshold(
        &mut self,
        spans: Vec<EncodedSpan>,
        threshold: Option<Threshold>,
    ) -> Vec<EncodedSpan> {
        let Some(th) = threshold else {
            return spans;
        };
        spans
            .into_iter()
            .map(|span| match record_threshold(span.trace_state(), th) {
                ThresholdUpdate::Rewrite(state) => span.with_trace_state(&state),
                ThresholdUpdate::Unchanged => span,
                ThresholdUpdate::Unparseable => {
                    self.counters.spans_unparseable_tracestate += 1;
                    span
                }
            })
            .collect()
    }

    /// What `record_policy` writes on a kept trace (nothing when it is off).
    pub(super) fn record<'a>(
        &'a self,
        policy: Option<usize>,
        composite_policy: Option<&'a str>,
    ) -> DecisionRecord<'a> {
        if !self.cfg.record_policy {
            return DecisionRecord::default();
        }
        DecisionRecord {
            policy: policy.map(|i| self.policies.names()[i].as_str()),
            composite_policy,
            cached: false,
        }
    }
}
