//! A rate or bytes limit as a threshold over one batch of traces, as the collector's
//! `budgetLimiter` computes it with the `usetracestate` gate on: the traces due together are
//! ordered by randomness, highest first, and kept while their cost fits in the tokens
//! available; the threshold is one above the randomness of the first that did not fit, so
//! the kept set is exactly the traces whose randomness clears it, and the threshold records
//! the probability the limit implied.

use std::time::Duration;

use super::TraceView;
use super::rate::TokenBucket;
use crate::tracestate::Threshold;

/// The threshold the budget implies for `candidates` (each with its cost), taking the
/// tokens the kept ones cost. Traces costing more than the burst are left out: they are
/// never kept.
pub(super) fn budget_threshold(
    bucket: &mut TokenBucket,
    candidates: &[&TraceView<'_>],
    cost: impl Fn(&TraceView<'_>) -> f64,
    now: Duration,
) -> Threshold {
    // The collector truncates the tokens available to a whole number.
    let budget = bucket.tokens_at(now).floor();
    let burst = bucket.capacity();
    let mut items: Vec<(u64, f64)> = candidates
        .iter()
        .map(|t| (t, cost(t)))
        .filter(|(_, c)| *c <= burst)
        .map(|(t, c)| {
            let randomness = t.sampling.unwrap_or_default().randomness_or(&t.trace_id);
            (randomness.unsigned(), c)
        })
        .collect();
    // Stable, highest randomness first.
    items.sort_by_key(|item| std::cmp::Reverse(item.0));
    let mut cumulative = 0.0;
    let mut kept = items.len();
    for (i, (_, c)) in items.iter().enumerate() {
        if cumulative + c > budget {
            kept = i;
            break;
        }
        cumulative += c;
    }
    let threshold = if kept == items.len() {
        Threshold::ALWAYS
    } else if kept == 0 {
        Threshold::NEVER
    } else {
        // Traces sharing the first rejected randomness cannot be told apart by a threshold:
        // reject them all.
        let first_rejected = items[kept].0;
        while kept > 0 && items[kept - 1].0 == first_rejected {
            kept -= 1;
            cumulative -= items[kept].1;
        }
        if kept == 0 {
            Threshold::NEVER
        } else {
            Threshold::from_unsigned(first_rejected + 1)
        }
    };
    if cumulative > 0.0 {
        bucket.try_take(cumulative, now);
    }
    threshold
}
