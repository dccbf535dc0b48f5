//! `composite`: sub-policies, each with a share of a spans-per-second budget, evaluated as the
//! collector v0.161.0 does (`internal/sampling/composite.go`, checked by `tests/e2e/parity.rs`):
//!
//! - sub-policies are tried in the order `composite_sub_policy` lists them (the collector parses
//!   `policy_order` but does not use it, and neither does Tailgate);
//! - the first sub-policy that samples decides: sampled if its spans fit in what it has left
//!   of this second, else not sampled (the next sub-policies are not asked);
//! - a sub-policy named in `rate_allocation` with a percentage above 0 gets that percentage of
//!   `max_total_spans_per_second`, every other one an equal share (total / number of
//!   sub-policies);
//! - budgets are counted per second of the clock and start from zero each second.
//!
//! One difference, on purpose: Tailgate also caps the sum over all sub-policies at
//! `max_total_spans_per_second`. The collector compares each sub-policy's own count with the
//! total, so allocations that add up to more than the total let more through.

use std::time::Duration;

use tailgate_config::sampling::{CompositeConfig, Policy as PolicyConfig};

use super::{NamedPolicy, TraceView};

#[derive(Debug)]
struct Sub {
    policy: NamedPolicy,
    /// Spans per second this sub-policy may keep, before the share.
    allocated_sps: f64,
    spans_this_second: f64,
}

#[derive(Debug)]
pub(super) struct Composite {
    subs: Vec<Sub>,
    total_sps: f64,
    /// This evaluator's share of the configured rates (shards, cluster members).
    share: f64,
    second: Option<u64>,
    spans_this_second: f64,
    /// The sub-policy that sampled at the last evaluation, if it did.
    sampled_by: Option<usize>,
}

impl Composite {
    /// The span attribute keys the sub-policies look up.
    pub(super) fn attribute_keys(&self, out: &mut Vec<String>) {
        for sub in &self.subs {
            sub.policy.policy.attribute_keys(out);
        }
    }

    pub(super) fn compile(c: &CompositeConfig<PolicyConfig>, rate_share: f64) -> Composite {
        let total = c.max_total_spans_per_second as f64;
        let equal_share = total / c.composite_sub_policy.len().max(1) as f64;
        let subs = c
            .composite_sub_policy
            .iter()
            .map(|sub| {
                let allocated_sps = c
                    .rate_allocation
                    .iter()
                    .find(|r| r.policy == sub.name && r.percent > 0)
                    .map_or(equal_share, |r| total * r.percent as f64 / 100.0);
                Sub {
                    policy: NamedPolicy::compile(sub, rate_share),
                    allocated_sps,
                    spans_this_second: 0.0,
                }
            })
            .collect();
        Composite {
            subs,
            total_sps: total,
            share: rate_share,
            second: None,
            spans_this_second: 0.0,
            sampled_by: None,
        }
    }

    pub(super) fn set_rate_share(&mut self, share: f64) {
        self.share = share;
        self.subs
            .iter_mut()
            .for_each(|s| s.policy.set_rate_share(share));
    }

    /// The name of the sub-policy that sampled at the last evaluation.
    pub(super) fn sampled_by(&self) -> Option<&str> {
        self.sampled_by.map(|i| self.subs[i].policy.name.as_str())
    }

    pub(super) fn evaluate(&mut self, t: &TraceView<'_>, now: Duration) -> bool {
        self.sampled_by = None;
        let second = now.as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            self.spans_this_second = 0.0;
            self.subs.iter_mut().for_each(|s| s.spans_this_second = 0.0);
        }
        let n = t.spans.len() as f64;
        for (i, sub) in self.subs.iter_mut().enumerate() {
            if !sub.policy.evaluate(t, now).is_sampled() {
                continue;
            }
            let fits = sub.spans_this_second + n <= sub.allocated_sps * self.share
                && self.spans_this_second + n <= self.total_sps * self.share;
            if fits {
                sub.spans_this_second += n;
                self.spans_this_second += n;
                self.sampled_by = Some(i);
            }
            return fits;
        }
        false
    }
}
