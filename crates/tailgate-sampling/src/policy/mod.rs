//! Sampling policies: compiled from config once, evaluated against a whole buffered trace.
//!
//! Combination follows the collector exactly ([`PolicySet::decide`]): `drop` policies are
//! evaluated first and veto; then a trace is kept when any policy samples it. `invert_match`
//! votes plainly, as the collector does since it removed inverted decisions (checked against
//! the collector itself by `tests/e2e/parity.rs`): not sampled when the key/value is found,
//! sampled when it is not, and a sampled vote of any other policy keeps the trace. Each
//! verdict names the policy that made it.
//!
//! **Invariant:** evaluation is a pure function of the trace, the policy state (token buckets)
//! and the `now` passed in. Probabilistic sampling hashes only the trace ID (FNV-1a 64 with the
//! salt, as the collector does), so every node decides alike.

mod batch;
mod compiled;
mod composite;
mod rate;
mod set;
mod throughput;

use std::time::Duration;

use tailgate_config::sampling::Policy as PolicyConfig;
use tailgate_otlp::{EncodedSpan, TraceId};

use crate::tracestate::{SamplingInfo, Threshold};
use compiled::CompiledPolicy;
pub use rate::TokenBucket;
pub use set::{PolicySet, Verdict};

/// The collector's default salt for probabilistic sampling, so decisions match it.
pub const DEFAULT_HASH_SALT: &str = "default-hash-seed";

/// One policy's vote, and a trace's final decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Sampled,
    NotSampled,
    /// A `drop` policy matched: not sampled, over everything.
    Dropped,
}

impl Decision {
    /// Every decision, in the order of [`Decision::index`].
    pub const ALL: [Decision; 3] = [Decision::Sampled, Decision::NotSampled, Decision::Dropped];

    /// Position in [`Decision::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The collector's `decision` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Sampled => "sampled",
            Decision::NotSampled => "not_sampled",
            Decision::Dropped => "dropped",
        }
    }

    fn is_sampled(self) -> bool {
        self == Decision::Sampled
    }
}

/// What a policy sees: one trace's buffered spans and their totals.
#[derive(Clone, Copy)]
pub struct TraceView<'a> {
    pub trace_id: TraceId,
    pub spans: &'a [EncodedSpan],
    /// The attribute keys found in the trace's bytes as it was buffered, when known: a key
    /// the filter looked for and did not find is in no span.
    keys_seen: Option<(&'a KeyFilter, u64)>,
    /// What the spans' `tracestate` says about sampling; `None` when thresholds are off
    /// (filled in by [`PolicySet`]).
    pub sampling: Option<SamplingInfo>,
}

impl<'a> TraceView<'a> {
    pub fn new(trace_id: TraceId, spans: &'a [EncodedSpan]) -> TraceView<'a> {
        TraceView {
            trace_id,
            spans,
            keys_seen: None,
            sampling: None,
        }
    }

    /// The view of spans in whose bytes `filter` found the keys `seen` (bits in the filter's
    /// order).
    ///
    /// **Invariant** (the caller's): `seen` was computed by `filter` over every span's bytes.
    pub fn with_keys_seen(self, filter: &'a KeyFilter, seen: u64) -> TraceView<'a> {
        TraceView {
            keys_seen: Some((filter, seen)),
            ..self
        }
    }

    /// False when no span can hold attribute `key`: the filter looked for it and found it in
    /// no span's bytes. True otherwise.
    pub(crate) fn may_contain_key(&self, key: &str) -> bool {
        self.keys_seen
            .is_none_or(|(filter, seen)| filter.bit(key).is_none_or(|b| seen & b != 0))
    }

    /// The view with the spans' sampling information read.
    fn with_sampling_info(&self) -> TraceView<'a> {
        TraceView {
            sampling: Some(SamplingInfo::scan(
                self.spans.iter().map(EncodedSpan::trace_state),
            )),
            ..*self
        }
    }
}

/// The span attribute keys the policies look up, searched in a trace's bytes as they are
/// buffered (hot in the cache after the copy), so that a decision reads a bit instead of
/// searching every span's bytes, cold by then (that search was 4% of the gateway at full
/// speed). A hit only means the bytes contain the key somewhere; the policy then walks
/// the spans as before.
#[derive(Debug, Default)]
pub struct KeyFilter {
    /// At most [`KeyFilter::KEYS_MAX`] keys; key `i` is bit `1 << i`.
    keys: Vec<(String, memchr::memmem::Finder<'static>)>,
}

impl KeyFilter {
    /// Keys past this many are not filtered: their policies search every span.
    pub const KEYS_MAX: usize = 64;

    fn new(mut keys: Vec<String>) -> KeyFilter {
        keys.sort();
        keys.dedup();
        keys.truncate(Self::KEYS_MAX);
        KeyFilter {
            keys: keys
                .into_iter()
                .map(|k| {
                    let finder = memchr::memmem::Finder::new(k.as_bytes()).into_owned();
                    (k, finder)
                })
                .collect(),
        }
    }

    /// The keys found in `bytes`, as bits.
    pub fn keys_in(&self, bytes: &[u8]) -> u64 {
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, (_, finder))| finder.find(bytes).is_some())
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// The bit of `key`, if this filter looks for it.
    fn bit(&self, key: &str) -> Option<u64> {
        self.keys.iter().position(|(k, _)| k == key).map(|i| 1 << i)
    }
}

/// A policy with its configured name.
#[derive(Debug)]
pub struct NamedPolicy {
    pub name: String,
    policy: CompiledPolicy,
}

impl NamedPolicy {
    /// Compiles a loaded policy. `rate_share` scales rate limits (this shard's share of the
    /// cluster-wide rate).
    pub fn compile(cfg: &PolicyConfig, rate_share: f64) -> NamedPolicy {
        NamedPolicy {
            name: cfg.name.clone(),
            policy: CompiledPolicy::compile(&cfg.kind, rate_share),
        }
    }

    /// Whether this is a `drop` policy (evaluated first, vetoes).
    pub fn is_drop(&self) -> bool {
        matches!(self.policy, CompiledPolicy::Drop(_))
    }

    /// Re-scales rate limits to a new share of the configured rate.
    pub fn set_rate_share(&mut self, share: f64) {
        self.policy.set_rate_share(share);
    }

    /// This policy's vote on a trace.
    pub fn evaluate(&mut self, t: &TraceView<'_>, now: Duration) -> Decision {
        self.policy.evaluate(t, now).0
    }

    /// This policy's vote, with the threshold it implies when it samples.
    fn evaluate_with_threshold(
        &mut self,
        t: &TraceView<'_>,
        now: Duration,
    ) -> (Decision, Threshold) {
        self.policy.evaluate(t, now)
    }

    /// For a `composite`, the sub-policy that sampled at its last evaluation.
    fn composite_sampled_by(&self) -> Option<&str> {
        match &self.policy {
            CompiledPolicy::Composite(c) => c.sampled_by(),
            _ => None,
        }
    }
}

/// FNV-1a 64 of `salt` then the trace ID bytes.
pub fn trace_id_hash(salt: &str, trace_id: &TraceId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in salt.as_bytes().iter().chain(trace_id.0.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

fn probabilistic_threshold(percentage: f64) -> u64 {
    if percentage <= 0.0 {
        0
    } else if percentage >= 100.0 {
        u64::MAX
    } else {
        (percentage / 100.0 * u64::MAX as f64) as u64
    }
}

#[cfg(test)]
mod tests;
