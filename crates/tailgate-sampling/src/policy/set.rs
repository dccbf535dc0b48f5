//! The configured policies together, combined as the collector combines them.

use std::time::Duration;

use tailgate_config::sampling::Policy as PolicyConfig;

use super::{
    DEFAULT_HASH_SALT, Decision, NamedPolicy, TraceView, probabilistic_threshold, trace_id_hash,
};

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
}

/// The configured policies in evaluation order (drop policies first).
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<NamedPolicy>,
    names: Vec<String>,
    sample_on_first_match: bool,
    /// Runtime sampling override (replicated through the cluster), as a hash threshold.
    override_threshold: Option<u64>,
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
        PolicySet {
            policies,
            names,
            sample_on_first_match,
            override_threshold: None,
        }
    }

    /// Policy names in evaluation order.
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
        const SAMPLED: usize = 0;
        const NOT_SAMPLED: usize = 1;
        const DROPPED: usize = 2;
        let mut votes = Vec::with_capacity(self.policies.len());
        let mut first = [None::<usize>; 3];
        let slot = |d: Decision| match d {
            Decision::Sampled => SAMPLED,
            Decision::NotSampled => NOT_SAMPLED,
            Decision::Dropped => DROPPED,
        };
        for (i, p) in self.policies.iter_mut().enumerate() {
            let d = p.evaluate(t, now);
            votes.push((i, d));
            first[slot(d)].get_or_insert(i);
            if d == Decision::Dropped || (self.sample_on_first_match && d == Decision::Sampled) {
                break;
            }
        }
        let (keep, decided_by) = if let Some(i) = first[DROPPED] {
            (false, Some(i))
        } else if let Some(i) = first[SAMPLED] {
            (true, Some(i))
        } else {
            (false, first[NOT_SAMPLED])
        };
        // A runtime override raises sampling: it keeps traces the policies did not, never
        // those a drop policy vetoed.
        let by_override = !keep
            && first[DROPPED].is_none()
            && self.override_threshold.is_some_and(|threshold| {
                threshold > 0 && trace_id_hash(DEFAULT_HASH_SALT, &t.trace_id) <= threshold
            });
        let composite_policy = votes
            .iter()
            .filter(|(_, d)| d.is_sampled())
            .filter_map(|(i, _)| self.policies[*i].composite_sampled_by())
            .next_back()
            .map(str::to_string);
        Verdict {
            keep: keep || by_override,
            decided_by: if by_override { None } else { decided_by },
            votes,
            by_override,
            composite_policy,
        }
    }

    /// Sets (or clears) the runtime sampling override: while set, traces the policies do not
    /// keep are kept at this percentage, chosen by trace ID like `probabilistic`.
    pub fn set_override(&mut self, percentage: Option<f64>) {
        self.override_threshold = percentage.map(probabilistic_threshold);
    }
}
