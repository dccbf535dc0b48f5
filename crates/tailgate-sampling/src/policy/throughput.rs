//! `throughput_target`: about N kept traces per second for the whole cluster, whatever the
//! traffic, with rare fingerprints kept more often than common ones.
//!
//! Each evaluator (one per shard per gateway) holds its share of the target — the cluster's
//! rate divided among owners by the ring and among shards, the same split as rate limits.
//! It counts traces per fingerprint over each `adjustment_interval`; at the end of the
//! interval it divides the traces its share may keep over the next one among the
//! fingerprints by max-min fairness (ascending by count, each gets all it sent or an equal
//! part of what is left), so a fingerprint sending little is kept whole and the common ones
//! share the rest. A fingerprint's probability becomes a threshold, and a trace is kept when
//! its randomness clears it — the same trace gets the same answer on every node, and the
//! threshold is what its spans record (`ot=th`), so backends can re-weight.
//!
//! Traffic that changes is followed one interval later: a load that triples overshoots for
//! one interval, then holds the target again.

use std::collections::BTreeMap;
use std::time::Duration;

use tailgate_config::sampling::ThroughputTargetConfig;
use tailgate_otlp::AnyValueRef;

use super::{Decision, TraceView};
use crate::tracestate::Threshold;

/// Fingerprints past `max_keys` in one interval share this one.
const OVERFLOW_FINGERPRINT: &str = "\u{0}overflow";
/// Separates attribute values in a fingerprint.
const FINGERPRINT_SEPARATOR: char = '\u{1f}';

#[derive(Debug)]
pub(super) struct ThroughputTarget {
    traces_per_second: f64,
    /// This evaluator's share of the cluster-wide target.
    share: f64,
    interval: Duration,
    attributes: Vec<String>,
    max_keys: usize,
    window_start: Option<Duration>,
    /// Traces per fingerprint in the current interval.
    counts: BTreeMap<String, u64>,
    /// Thresholds per fingerprint, from the last interval.
    thresholds: BTreeMap<String, Threshold>,
    /// For a fingerprint the last interval did not see: the least strict threshold any had
    /// (a new fingerprint is as rare as the rarest known one).
    unseen: Threshold,
}

impl ThroughputTarget {
    pub(super) fn compile(c: &ThroughputTargetConfig, rate_share: f64) -> ThroughputTarget {
        ThroughputTarget {
            traces_per_second: c.traces_per_second,
            share: rate_share,
            interval: c.adjustment_interval.0,
            attributes: c.fingerprint_attributes.clone(),
            max_keys: c.max_keys,
            window_start: None,
            counts: BTreeMap::new(),
            thresholds: BTreeMap::new(),
            unseen: Threshold::ALWAYS,
        }
    }

    pub(super) fn set_rate_share(&mut self, share: f64) {
        self.share = share;
    }

    pub(super) fn evaluate(&mut self, t: &TraceView<'_>, now: Duration) -> (Decision, Threshold) {
        self.roll(now);
        let mut key = self.fingerprint(t);
        if !self.counts.contains_key(&key) && self.counts.len() >= self.max_keys {
            key = OVERFLOW_FINGERPRINT.to_string();
        }
        let threshold = self.thresholds.get(&key).copied().unwrap_or(self.unseen);
        *self.counts.entry(key).or_default() += 1;
        let randomness = t.sampling.unwrap_or_default().randomness_or(&t.trace_id);
        if threshold.should_sample(randomness) {
            (Decision::Sampled, threshold)
        } else {
            (Decision::NotSampled, Threshold::ALWAYS)
        }
    }

    /// Values of the fingerprint attributes, each from the first span (or its resource) that
    /// has it.
    fn fingerprint(&self, t: &TraceView<'_>) -> String {
        let mut out = String::new();
        for (i, key) in self.attributes.iter().enumerate() {
            if i > 0 {
                out.push(FINGERPRINT_SEPARATOR);
            }
            if let Some(v) = t.spans.iter().find_map(|s| s.attribute_or_resource(key)) {
                push_value(&mut out, v);
            }
        }
        out
    }

    /// Ends the interval when it is over: the next one's thresholds from this one's counts.
    fn roll(&mut self, now: Duration) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_sub(start);
        if elapsed < self.interval {
            return;
        }
        let goal = self.traces_per_second * self.share * elapsed.as_secs_f64();
        self.thresholds = max_min_thresholds(&self.counts, goal);
        self.unseen = self
            .thresholds
            .values()
            .min()
            .copied()
            .unwrap_or(Threshold::ALWAYS);
        self.counts.clear();
        self.window_start = Some(now);
    }
}

/// Divides `goal` kept traces among fingerprints by max-min fairness and returns each one's
/// threshold: ascending by count, each takes what it sent or an equal part of what is left.
fn max_min_thresholds(counts: &BTreeMap<String, u64>, goal: f64) -> BTreeMap<String, Threshold> {
    let mut by_count: Vec<(&String, u64)> = counts.iter().map(|(k, c)| (k, *c)).collect();
    // Stable: ties stay in key order, so every run divides alike.
    by_count.sort_by_key(|(_, c)| *c);
    let mut left = goal.max(0.0);
    let mut keys_left = by_count.len();
    let mut out = BTreeMap::new();
    for (key, count) in by_count {
        let fair = left / keys_left as f64;
        let kept = (count as f64).min(fair);
        left -= kept;
        keys_left -= 1;
        out.insert(
            key.clone(),
            Threshold::from_probability(kept / count as f64),
        );
    }
    out
}

fn push_value(out: &mut String, v: AnyValueRef<'_>) {
    use std::fmt::Write as _;
    let _ = match v {
        AnyValueRef::String(s) => write!(out, "{s}"),
        AnyValueRef::Bool(b) => write!(out, "{b}"),
        AnyValueRef::Int(i) => write!(out, "{i}"),
        AnyValueRef::Double(d) => write!(out, "{d}"),
        _ => write!(out, "?"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_fingerprints_keep_everything_and_common_ones_share_the_rest() {
        let counts: BTreeMap<String, u64> = [("rare", 10), ("common", 1000), ("mid", 100)]
            .into_iter()
            .map(|(k, c)| (k.to_string(), c))
            .collect();
        let th = max_min_thresholds(&counts, 200.0);
        assert_eq!(th["rare"], Threshold::ALWAYS);
        // 190 left for two: mid keeps its 95 of 100, common 95 of 1000.
        assert!((th["mid"].probability() - 0.95).abs() < 1e-9);
        assert!((th["common"].probability() - 0.095).abs() < 1e-9);
        let all = max_min_thresholds(&counts, 5000.0);
        assert!(
            all.values().all(|t| *t == Threshold::ALWAYS),
            "under target: keep all"
        );
    }
}
