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

mod composite;
mod rate;

use std::collections::HashSet;
use std::time::Duration;

use regex::Regex;
use tailgate_config::sampling::{PolicyConfig, PolicyType, StatusCodeName};
use tailgate_otlp::{AnyValueRef, EncodedSpan, StatusCode, TraceId, export_request_len};
use tailgate_ottl::Condition;
use tailgate_processors::filter::{SpanContext, SpanEventContext};

pub use rate::TokenBucket;

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
pub struct TraceView<'a> {
    pub trace_id: TraceId,
    pub spans: &'a [EncodedSpan],
}

#[derive(Debug)]
enum StringMatcher {
    Exact(HashSet<String>),
    Regex(Vec<Regex>),
}

#[derive(Debug)]
enum Policy {
    AlwaysSample,
    Latency {
        threshold: Duration,
        upper: Option<Duration>,
    },
    NumericAttribute {
        key: AttributeKey,
        min: Option<i64>,
        max: Option<i64>,
        invert: bool,
    },
    Probabilistic {
        threshold: u64,
        salt: String,
    },
    StatusCode {
        codes: Vec<StatusCode>,
    },
    StringAttribute {
        key: AttributeKey,
        matcher: StringMatcher,
        invert: bool,
    },
    BooleanAttribute {
        key: AttributeKey,
        value: bool,
        invert: bool,
    },
    RateLimiting {
        bucket: TokenBucket,
        spans_per_sec: f64,
        burst: f64,
    },
    BytesLimiting {
        bucket: TokenBucket,
        bytes_per_sec: f64,
        burst: f64,
    },
    SpanCount {
        min: u64,
        max: Option<u64>,
    },
    TraceState {
        key: String,
        values: Vec<String>,
    },
    TraceFlags,
    Ottl {
        span: Vec<Condition>,
        spanevent: Vec<Condition>,
    },
    And(Vec<NamedPolicy>),
    Not(Box<NamedPolicy>),
    Drop(Vec<NamedPolicy>),
    Composite(composite::Composite),
}

/// A policy with its configured name.
#[derive(Debug)]
pub struct NamedPolicy {
    pub name: String,
    policy: Policy,
}

/// An attribute key with a substring prefilter: a span whose bytes do not contain the key
/// cannot have the attribute, and a SIMD substring search is several times cheaper than
/// walking the span's fields. A hit in some other field only costs the walk.
#[derive(Debug)]
struct AttributeKey {
    key: String,
    finder: memchr::memmem::Finder<'static>,
}

impl AttributeKey {
    fn new(key: &str) -> Self {
        AttributeKey {
            key: key.to_string(),
            finder: memchr::memmem::Finder::new(key.as_bytes()).into_owned(),
        }
    }

    fn maybe_in(&self, bytes: &[u8]) -> bool {
        self.finder.find(bytes).is_some()
    }
}

/// True when some span's attribute `key`, or its resource's, satisfies `pred`. Each distinct
/// resource is checked once, not once per span.
fn any_attribute(
    t: &TraceView<'_>,
    key: &AttributeKey,
    pred: impl Fn(Option<AnyValueRef<'_>>) -> bool,
) -> bool {
    let mut seen: Vec<*const tailgate_otlp::ResourceScope> = Vec::new();
    for s in t.spans {
        if key.maybe_in(&s.bytes) && pred(s.attribute(&key.key)) {
            return true;
        }
        let ctx = std::sync::Arc::as_ptr(&s.context);
        if !seen.contains(&ctx) {
            seen.push(ctx);
            if key.maybe_in(&s.context.resource) && pred(s.resource_attribute(&key.key)) {
                return true;
            }
        }
    }
    false
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

impl NamedPolicy {
    /// Compiles a validated policy config. `rate_share` scales rate limits (this shard's share
    /// of the cluster-wide rate).
    pub fn compile(cfg: &PolicyConfig, rate_share: f64) -> NamedPolicy {
        let policy = match cfg.policy_type {
            PolicyType::AlwaysSample => Policy::AlwaysSample,
            PolicyType::Latency => {
                let l = cfg.latency.as_ref().expect("validated");
                Policy::Latency {
                    threshold: Duration::from_millis(l.threshold_ms),
                    upper: (l.upper_threshold_ms > 0)
                        .then(|| Duration::from_millis(l.upper_threshold_ms)),
                }
            }
            PolicyType::NumericAttribute => {
                let n = cfg.numeric_attribute.as_ref().expect("validated");
                Policy::NumericAttribute {
                    key: AttributeKey::new(&n.key),
                    min: (n.min_value != 0).then_some(n.min_value),
                    max: (n.max_value != 0).then_some(n.max_value),
                    invert: n.invert_match,
                }
            }
            PolicyType::Probabilistic => {
                let p = cfg.probabilistic.as_ref().expect("validated");
                Policy::Probabilistic {
                    threshold: probabilistic_threshold(p.sampling_percentage),
                    salt: p
                        .hash_salt
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| DEFAULT_HASH_SALT.to_string()),
                }
            }
            PolicyType::StatusCode => {
                let s = cfg.status_code.as_ref().expect("validated");
                Policy::StatusCode {
                    codes: s
                        .status_codes
                        .iter()
                        .map(|c| match c {
                            StatusCodeName::Unset => StatusCode::UNSET,
                            StatusCodeName::Ok => StatusCode::OK,
                            StatusCodeName::Error => StatusCode::ERROR,
                        })
                        .collect(),
                }
            }
            PolicyType::StringAttribute => {
                let s = cfg.string_attribute.as_ref().expect("validated");
                let matcher = if s.enabled_regex_matching {
                    StringMatcher::Regex(
                        tailgate_config::sampling::compile_values(s)
                            .expect("validated")
                            .into_iter()
                            .map(|r| r.0)
                            .collect(),
                    )
                } else {
                    StringMatcher::Exact(s.values.iter().cloned().collect())
                };
                Policy::StringAttribute {
                    key: AttributeKey::new(&s.key),
                    matcher,
                    invert: s.invert_match,
                }
            }
            PolicyType::BooleanAttribute => {
                let b = cfg.boolean_attribute.as_ref().expect("validated");
                Policy::BooleanAttribute {
                    key: AttributeKey::new(&b.key),
                    value: b.value,
                    invert: b.invert_match,
                }
            }
            PolicyType::RateLimiting => {
                let r = cfg.rate_limiting.as_ref().expect("validated");
                let rate = r.spans_per_second as f64;
                // The collector's default burst: two seconds of the rate.
                let burst = if r.burst_capacity > 0 {
                    r.burst_capacity as f64
                } else {
                    2.0 * rate
                };
                Policy::RateLimiting {
                    bucket: TokenBucket::new(rate * rate_share, burst * rate_share),
                    spans_per_sec: rate,
                    burst,
                }
            }
            PolicyType::BytesLimiting => {
                let b = cfg.bytes_limiting.as_ref().expect("validated");
                let rate = b.bytes_per_second as f64;
                let burst = if b.burst_capacity > 0 {
                    b.burst_capacity as f64
                } else {
                    2.0 * rate
                };
                Policy::BytesLimiting {
                    bucket: TokenBucket::new(rate * rate_share, burst * rate_share),
                    bytes_per_sec: rate,
                    burst,
                }
            }
            PolicyType::SpanCount => {
                let c = cfg.span_count.as_ref().expect("validated");
                Policy::SpanCount {
                    min: c.min_spans,
                    max: (c.max_spans > 0).then_some(c.max_spans),
                }
            }
            PolicyType::TraceState => {
                let t = cfg.trace_state.as_ref().expect("validated");
                Policy::TraceState {
                    key: t.key.clone(),
                    values: t.values.clone(),
                }
            }
            PolicyType::TraceFlags => Policy::TraceFlags,
            PolicyType::OttlCondition => {
                let o = cfg.ottl_condition.as_ref().expect("validated");
                Policy::Ottl {
                    span: o.span.iter().map(|c| c.0.clone()).collect(),
                    spanevent: o.spanevent.iter().map(|c| c.0.clone()).collect(),
                }
            }
            PolicyType::And => Policy::And(
                cfg.and
                    .as_ref()
                    .expect("validated")
                    .and_sub_policy
                    .iter()
                    .map(|p| NamedPolicy::compile(p, rate_share))
                    .collect(),
            ),
            PolicyType::Not => Policy::Not(Box::new(NamedPolicy::compile(
                &cfg.not.as_ref().expect("validated").not_sub_policy,
                rate_share,
            ))),
            PolicyType::Drop => Policy::Drop(
                cfg.drop
                    .as_ref()
                    .expect("validated")
                    .drop_sub_policy
                    .iter()
                    .map(|p| NamedPolicy::compile(p, rate_share))
                    .collect(),
            ),
            PolicyType::Composite => Policy::Composite(composite::Composite::compile(
                cfg.composite.as_ref().expect("validated"),
                rate_share,
            )),
        };
        NamedPolicy {
            name: cfg.name.clone(),
            policy,
        }
    }

    /// Whether this is a `drop` policy (evaluated first, vetoes).
    pub fn is_drop(&self) -> bool {
        matches!(self.policy, Policy::Drop(_))
    }

    /// Re-scales rate limits to a new share of the configured rate.
    pub fn set_rate_share(&mut self, share: f64) {
        match &mut self.policy {
            Policy::RateLimiting {
                bucket,
                spans_per_sec,
                burst,
            } => bucket.rescale(*spans_per_sec * share, *burst * share),
            Policy::BytesLimiting {
                bucket,
                bytes_per_sec,
                burst,
            } => bucket.rescale(*bytes_per_sec * share, *burst * share),
            Policy::And(subs) | Policy::Drop(subs) => {
                subs.iter_mut().for_each(|s| s.set_rate_share(share))
            }
            Policy::Not(sub) => sub.set_rate_share(share),
            Policy::Composite(c) => c.set_rate_share(share),
            _ => {}
        }
    }

    /// This policy's vote on a trace.
    pub fn evaluate(&mut self, t: &TraceView<'_>, now: Duration) -> Decision {
        let yes = |b: bool| {
            if b {
                Decision::Sampled
            } else {
                Decision::NotSampled
            }
        };
        let invertible = |found: bool, invert: bool| yes(found != invert);
        match &mut self.policy {
            Policy::AlwaysSample => Decision::Sampled,
            Policy::Latency { threshold, upper } => {
                let start = t
                    .spans
                    .iter()
                    .map(|s| s.meta.start_time_unix_nano)
                    .min()
                    .unwrap_or(0);
                let end = t
                    .spans
                    .iter()
                    .map(|s| s.meta.end_time_unix_nano)
                    .max()
                    .unwrap_or(0);
                let d = Duration::from_nanos(end.saturating_sub(start));
                yes(d >= *threshold && upper.is_none_or(|u| d <= u))
            }
            Policy::NumericAttribute {
                key,
                min,
                max,
                invert,
            } => {
                let in_range = |v: Option<AnyValueRef<'_>>| {
                    let n = match v {
                        Some(AnyValueRef::Int(i)) => i as f64,
                        Some(AnyValueRef::Double(d)) => d,
                        _ => return false,
                    };
                    min.is_none_or(|m| n >= m as f64) && max.is_none_or(|m| n <= m as f64)
                };
                invertible(any_attribute(t, key, in_range), *invert)
            }
            Policy::Probabilistic { threshold, salt } => {
                yes(*threshold > 0 && trace_id_hash(salt, &t.trace_id) <= *threshold)
            }
            Policy::StatusCode { codes } => {
                yes(t.spans.iter().any(|s| codes.contains(&s.meta.status_code)))
            }
            Policy::StringAttribute {
                key,
                matcher,
                invert,
            } => {
                let matcher = &*matcher;
                let matches = |v: Option<AnyValueRef<'_>>| match v {
                    Some(AnyValueRef::String(s)) => match matcher {
                        StringMatcher::Exact(set) => set.contains(s),
                        StringMatcher::Regex(rs) => rs.iter().any(|r| r.is_match(s)),
                    },
                    _ => false,
                };
                invertible(any_attribute(t, key, matches), *invert)
            }
            Policy::BooleanAttribute { key, value, invert } => {
                let value = *value;
                let matches = |v: Option<AnyValueRef<'_>>| matches!(v, Some(AnyValueRef::Bool(b)) if b == value);
                invertible(any_attribute(t, key, matches), *invert)
            }
            Policy::RateLimiting { bucket, .. } => yes(bucket.try_take(t.spans.len() as f64, now)),
            Policy::BytesLimiting { bucket, .. } => {
                // The collector charges the protobuf size of the trace's data, resource and
                // scope included.
                yes(bucket.try_take(export_request_len(t.spans) as f64, now))
            }
            Policy::SpanCount { min, max } => {
                let n = t.spans.len() as u64;
                yes(n >= *min && max.is_none_or(|m| n <= m))
            }
            Policy::TraceState { key, values } => yes(t.spans.iter().any(|s| {
                s.trace_state()
                    .split(',')
                    .filter_map(|kv| kv.trim().split_once('='))
                    .any(|(k, v)| k == key && values.iter().any(|x| x == v))
            })),
            Policy::TraceFlags => yes(t.spans.iter().any(|s| s.meta.flags & 0x01 != 0)),
            Policy::Ottl { span, spanevent } => yes(t.spans.iter().any(|s| {
                span.iter().any(|c| c.eval(&SpanContext(s)))
                    || (!spanevent.is_empty()
                        && s.events().any(|event| {
                            spanevent
                                .iter()
                                .any(|c| c.eval(&SpanEventContext { span: s, event }))
                        }))
            })),
            Policy::And(subs) => {
                for sub in subs {
                    if !sub.evaluate(t, now).is_sampled() {
                        return Decision::NotSampled;
                    }
                }
                Decision::Sampled
            }
            Policy::Not(sub) => match sub.evaluate(t, now) {
                Decision::Sampled => Decision::NotSampled,
                Decision::NotSampled => Decision::Sampled,
                Decision::Dropped => Decision::Dropped,
            },
            Policy::Drop(subs) => {
                for sub in subs {
                    if !sub.evaluate(t, now).is_sampled() {
                        return Decision::NotSampled;
                    }
                }
                Decision::Dropped
            }
            Policy::Composite(c) => yes(c.evaluate(t, now)),
        }
    }
}

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
            .filter_map(|(i, _)| match &self.policies[*i].policy {
                Policy::Composite(c) => c.sampled_by(),
                _ => None,
            })
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

#[cfg(test)]
mod tests;
