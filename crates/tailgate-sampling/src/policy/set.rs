//! The configured policies together, combined as the collector combines them.

use std::time::Duration;

use tailgate_config::sampling::Policy as PolicyConfig;

use super::{
    DEFAULT_HASH_SALT, Decision, KeyFilter, NamedPolicy, TraceView, probabilistic_threshold,
    trace_id_hash,
};
use crate::tracestate::Threshold;

/// The outcome of all policies for one trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub keep: bool,
    /// Index (into [`PolicySet::names`]) of the policy the decision is attributed to.
    pub decided_by: Option<usize>,
    /// Every vote cast, in evaluation order, for per-policy metrics.
    pub votes: Vec<(usize, Decision)>,
    /// Kept only because a runtime sampling override selected it.
    pub by_override: bool,
    /// The sub-policy of a `composite` that sampled the trace (the last, if several did).
    pub composite_policy: Option<String>,
    /// With thresholds on (`usetracestate`), the effective threshold of a kept trace: the
    /// least strict of the policies that sampled it, recorded on its spans as `ot=th`.
    pub threshold: Option<Threshold>,
}

/// The configured policies in evaluation order (drop policies first).
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<NamedPolicy>,
    names: Vec<String>,
    sample_on_first_match: bool,
    /// Runtime sampling override (replicated through the cluster), as a hash threshold.
    override_threshold: Option<u64>,
    /// The override's percentage as an OpenTelemetry threshold.
    override_otel: Option<Threshold>,
    /// OpenTelemetry probability sampling in `tracestate` (the `usetracestate` gate).
    use_tracestate: bool,
    /// Kept traces record their threshold: the gate is on, or a `throughput_target` samples
    /// at probabilities backends must be able to re-weight.
    records_thresholds: bool,
}

/// The votes cast on one trace so far.
struct Tally {
    votes: Vec<(usize, Decision)>,
    /// The first policy to cast each decision, by [`Decision::index`].
    first: [Option<usize>; 3],
    /// The least strict threshold among sampled votes.
    threshold: Option<Threshold>,
    /// A drop vote, or the first sample with `sample_on_first_match`: nothing more is asked.
    done: bool,
}

impl Tally {
    fn new(capacity: usize) -> Tally {
        Tally {
            votes: Vec::with_capacity(capacity),
            first: [None; 3],
            threshold: None,
            done: false,
        }
    }

    fn dropped(&self) -> bool {
        self.first[Decision::Dropped.index()].is_some()
    }
}

impl PolicySet {
    pub fn compile(
        configs: &[PolicyConfig],
        sample_on_first_match: bool,
        rate_share: f64,
    ) -> PolicySet {
        let mut policies: Vec<NamedPolicy> = configs
            .iter()
            .map(|c| NamedPolicy::compile(c, rate_share))
            .collect();
        // Stable: drop policies first, each group in configured order.
        policies.sort_by_key(|p| !p.is_drop());
        let names = policies.iter().map(|p| p.name.clone()).collect();
        let records_thresholds = policies.iter().any(|p| p.policy.has_throughput_target());
        PolicySet {
            policies,
            names,
            sample_on_first_match,
            override_threshold: None,
            override_otel: None,
            use_tracestate: false,
            records_thresholds,
        }
    }

    /// Turns OpenTelemetry probability sampling in `tracestate` on (the collector's
    /// `processor.tailsamplingprocessor.usetracestate` gate).
    pub fn set_use_tracestate(&mut self, on: bool) {
        self.use_tracestate = on;
        self.records_thresholds |= on;
    }

    /// Decisions must be taken in batches ([`PolicySet::decide_batch`]): thresholds are on
    /// and a top-level rate or bytes limit turns each batch's budget into a threshold.
    pub fn decides_in_batches(&self) -> bool {
        self.use_tracestate && self.policies.iter().any(|p| p.policy.is_budget_limit())
    }

    /// Policy names in evaluation order.
    /// A filter for the span attribute keys these policies look up, for buffers to run over
    /// their bytes as they arrive ([`TraceView::with_keys_seen`]).
    pub fn key_filter(&self) -> KeyFilter {
        let mut keys = Vec::new();
        for p in &self.policies {
            p.policy.attribute_keys(&mut keys);
        }
        KeyFilter::new(keys)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn set_rate_share(&mut self, share: f64) {
        self.policies
            .iter_mut()
            .for_each(|p| p.set_rate_share(share));
    }

    /// The collector's combination: drop vetoes; any sampled keeps.
    pub fn decide(&mut self, t: &TraceView<'_>, now: Duration) -> Verdict {
        if self.decides_in_batches() {
            return self
                .decide_batch(std::slice::from_ref(t), now)
                .pop()
                .expect("one verdict per trace");
        }
        let t = self.view(t);
        let mut tally = Tally::new(self.policies.len());
        self.vote(&t, now, 0..self.policies.len(), &mut tally);
        self.verdict(&t, tally)
    }

    /// Decides several traces due together, as the collector decides one tick's batch: drop
    /// policies first, then each top-level rate or bytes limit turns its budget into a
    /// threshold over the traces not dropped (`batch.rs`), then the other policies.
    pub fn decide_batch(&mut self, traces: &[TraceView<'_>], now: Duration) -> Vec<Verdict> {
        let views: Vec<TraceView<'_>> = traces.iter().map(|t| self.view(t)).collect();
        let drops = self.policies.iter().take_while(|p| p.is_drop()).count();
        let mut tallies: Vec<Tally> = views
            .iter()
            .map(|t| {
                let mut tally = Tally::new(self.policies.len());
                self.vote(t, now, 0..drops, &mut tally);
                tally
            })
            .collect();
        if self.use_tracestate {
            let candidates: Vec<&TraceView<'_>> = views
                .iter()
                .zip(&tallies)
                .filter(|(_, tally)| !tally.dropped())
                .map(|(t, _)| t)
                .collect();
            for p in &mut self.policies[drops..] {
                p.policy.calculate_batch_threshold(&candidates, now);
            }
        }
        for (t, tally) in views.iter().zip(&mut tallies) {
            self.vote(t, now, drops..self.policies.len(), tally);
        }
        views
            .iter()
            .zip(tallies)
            .map(|(t, tally)| self.verdict(t, tally))
            .collect()
    }

    /// The view policies see: with the spans' sampling information when thresholds are on.
    fn view<'a>(&self, t: &TraceView<'a>) -> TraceView<'a> {
        if self.use_tracestate && t.sampling.is_none() {
            t.with_sampling_info()
        } else {
            *t
        }
    }

    /// Asks the policies in `range`, in order, until one drops the trace (or samples it, with
    /// `sample_on_first_match`).
    fn vote(
        &mut self,
        t: &TraceView<'_>,
        now: Duration,
        range: std::ops::Range<usize>,
        tally: &mut Tally,
    ) {
        if tally.done {
            return;
        }
        for i in range {
            let (d, th) = self.policies[i].evaluate_with_threshold(t, now);
            tally.votes.push((i, d));
            tally.first[d.index()].get_or_insert(i);
            if d == Decision::Sampled {
                tally.threshold = Some(tally.threshold.map_or(th, |least| least.min(th)));
            }
            if d == Decision::Dropped || (self.sample_on_first_match && d == Decision::Sampled) {
                tally.done = true;
                return;
            }
        }
    }

    fn verdict(&self, t: &TraceView<'_>, tally: Tally) -> Verdict {
        let first = tally.first;
        let (keep, decided_by) = if let Some(i) = first[Decision::Dropped.index()] {
            (false, Some(i))
        } else if let Some(i) = first[Decision::Sampled.index()] {
            (true, Some(i))
        } else {
            (false, first[Decision::NotSampled.index()])
        };
        // A runtime override raises sampling: it keeps traces the policies did not, never
        // those a drop policy vetoed.
        let by_override = !keep
            && first[Decision::Dropped.index()].is_none()
            && self.override_threshold.is_some_and(|threshold| {
                threshold > 0 && trace_id_hash(DEFAULT_HASH_SALT, &t.trace_id) <= threshold
            });
        let composite_policy = tally
            .votes
            .iter()
            .filter(|(_, d)| d.is_sampled())
            .filter_map(|(i, _)| self.policies[*i].composite_sampled_by())
            .next_back()
            .map(str::to_string);
        let threshold = match (self.records_thresholds, keep, by_override) {
            (true, true, _) => tally.threshold,
            (true, false, true) => self.override_otel,
            _ => None,
        };
        Verdict {
            keep: keep || by_override,
            decided_by: if by_override { None } else { decided_by },
            votes: tally.votes,
            by_override,
            composite_policy,
            threshold,
        }
    }

    /// Sets (or clears) the runtime sampling override: while set, traces the policies do not
    /// keep are kept at this percentage, chosen by trace ID like `probabilistic`.
    pub fn set_override(&mut self, percentage: Option<f64>) {
        self.override_threshold = percentage.map(probabilistic_threshold);
        self.override_otel = percentage.map(|p| Threshold::from_probability(p / 100.0));
    }
}
