//! A policy compiled from its typed config: what [`super::NamedPolicy`] evaluates.

use std::collections::HashSet;
use std::time::Duration;

use regex::Regex;
use tailgate_config::sampling::{PolicyKind, StatusCodeName, StringValues};
use tailgate_otlp::{AnyValueRef, StatusCode, export_request_len};
use tailgate_ottl::Condition;
use tailgate_processors::filter::{SpanContext, SpanEventContext};

use super::batch::budget_threshold;
use super::composite::Composite;
use super::rate::TokenBucket;
use super::throughput::ThroughputTarget;
use super::{
    DEFAULT_HASH_SALT, Decision, NamedPolicy, TraceView, probabilistic_threshold, trace_id_hash,
};
use crate::tracestate::Threshold;

#[derive(Debug)]
pub(super) enum StringMatcher {
    Exact(HashSet<String>),
    Regex(Vec<Regex>),
}

#[derive(Debug)]
pub(super) enum CompiledPolicy {
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
        /// The same percentage as an OpenTelemetry threshold (recorded on kept spans, and
        /// compared with the trace's randomness when its spans carry `ot=rv`/`ot=th`).
        otel_threshold: Threshold,
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
        /// Set by `batch::threshold_for_batch` when thresholds are on (`usetracestate`).
        batch: Option<Threshold>,
    },
    BytesLimiting {
        bucket: TokenBucket,
        bytes_per_sec: f64,
        burst: f64,
        batch: Option<Threshold>,
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
    Composite(Composite),
    ThroughputTarget(ThroughputTarget),
}

/// An attribute key with a substring prefilter: a span whose bytes do not contain the key
/// cannot have the attribute, and a SIMD substring search is several times cheaper than
/// walking the span's fields. A hit in some other field only costs the walk.
#[derive(Debug)]
pub(super) struct AttributeKey {
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
/// resource is checked once, not once per span; spans are skipped at once when the trace's
/// buffer found no such key in their bytes ([`super::KeyFilter`]).
fn any_attribute(
    t: &TraceView<'_>,
    key: &AttributeKey,
    pred: impl Fn(Option<AnyValueRef<'_>>) -> bool,
) -> bool {
    let mut seen: Vec<*const tailgate_otlp::ResourceScope> = Vec::new();
    let spans_may_have_it = t.may_contain_key(&key.key);
    for s in t.spans {
        if spans_may_have_it && key.maybe_in(s.bytes()) && pred(s.attribute(&key.key)) {
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

impl CompiledPolicy {
    /// `rate_share` scales rate limits (this evaluator's share of the cluster-wide rate).
    pub(super) fn compile(kind: &PolicyKind, rate_share: f64) -> CompiledPolicy {
        let subs = |list: &[tailgate_config::sampling::Policy]| {
            list.iter()
                .map(|p| NamedPolicy::compile(p, rate_share))
                .collect()
        };
        match kind {
            PolicyKind::AlwaysSample => CompiledPolicy::AlwaysSample,
            PolicyKind::Latency(l) => CompiledPolicy::Latency {
                threshold: Duration::from_millis(l.threshold_ms),
                upper: (l.upper_threshold_ms > 0)
                    .then(|| Duration::from_millis(l.upper_threshold_ms)),
            },
            PolicyKind::NumericAttribute(n) => CompiledPolicy::NumericAttribute {
                key: AttributeKey::new(&n.key),
                min: (n.min_value != 0).then_some(n.min_value),
                max: (n.max_value != 0).then_some(n.max_value),
                invert: n.invert_match,
            },
            PolicyKind::Probabilistic(p) => CompiledPolicy::Probabilistic {
                threshold: probabilistic_threshold(p.sampling_percentage),
                otel_threshold: Threshold::from_probability(p.sampling_percentage / 100.0),
                salt: p
                    .hash_salt
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| DEFAULT_HASH_SALT.to_string()),
            },
            PolicyKind::StatusCode(s) => CompiledPolicy::StatusCode {
                codes: s.status_codes.iter().map(|c| status_code(*c)).collect(),
            },
            PolicyKind::StringAttribute(s) => CompiledPolicy::StringAttribute {
                key: AttributeKey::new(&s.key),
                matcher: match &s.values {
                    StringValues::Exact(values) => {
                        StringMatcher::Exact(values.iter().cloned().collect())
                    }
                    StringValues::Regex(patterns) => {
                        StringMatcher::Regex(patterns.iter().map(|r| r.0.clone()).collect())
                    }
                },
                invert: s.invert_match,
            },
            PolicyKind::BooleanAttribute(b) => CompiledPolicy::BooleanAttribute {
                key: AttributeKey::new(&b.key),
                value: b.value,
                invert: b.invert_match,
            },
            PolicyKind::RateLimiting(r) => {
                let (rate, burst) = rate_and_burst(r.spans_per_second, r.burst_capacity);
                CompiledPolicy::RateLimiting {
                    bucket: TokenBucket::new(rate * rate_share, burst * rate_share),
                    spans_per_sec: rate,
                    burst,
                    batch: None,
                }
            }
            PolicyKind::BytesLimiting(b) => {
                let (rate, burst) = rate_and_burst(b.bytes_per_second, b.burst_capacity);
                CompiledPolicy::BytesLimiting {
                    bucket: TokenBucket::new(rate * rate_share, burst * rate_share),
                    bytes_per_sec: rate,
                    burst,
                    batch: None,
                }
            }
            PolicyKind::SpanCount(c) => CompiledPolicy::SpanCount {
                min: c.min_spans,
                max: (c.max_spans > 0).then_some(c.max_spans),
            },
            PolicyKind::TraceState(t) => CompiledPolicy::TraceState {
                key: t.key.clone(),
                values: t.values.clone(),
            },
            PolicyKind::TraceFlags => CompiledPolicy::TraceFlags,
            PolicyKind::OttlCondition(o) => CompiledPolicy::Ottl {
                span: o.span.iter().map(|c| c.0.clone()).collect(),
                spanevent: o.spanevent.iter().map(|c| c.0.clone()).collect(),
            },
            PolicyKind::And(list) => CompiledPolicy::And(subs(list)),
            PolicyKind::Not(sub) => {
                CompiledPolicy::Not(Box::new(NamedPolicy::compile(sub, rate_share)))
            }
            PolicyKind::Drop(list) => CompiledPolicy::Drop(subs(list)),
            PolicyKind::Composite(c) => {
                CompiledPolicy::Composite(Composite::compile(c, rate_share))
            }
            PolicyKind::ThroughputTarget(t) => {
                CompiledPolicy::ThroughputTarget(ThroughputTarget::compile(t, rate_share))
            }
        }
    }

    /// The span attribute keys this policy, or one below it, looks up.
    pub(super) fn attribute_keys(&self, out: &mut Vec<String>) {
        match self {
            CompiledPolicy::NumericAttribute { key, .. }
            | CompiledPolicy::StringAttribute { key, .. }
            | CompiledPolicy::BooleanAttribute { key, .. } => out.push(key.key.clone()),
            CompiledPolicy::And(subs) | CompiledPolicy::Drop(subs) => {
                subs.iter().for_each(|s| s.policy.attribute_keys(out));
            }
            CompiledPolicy::Not(sub) => sub.policy.attribute_keys(out),
            CompiledPolicy::Composite(c) => c.attribute_keys(out),
            _ => {}
        }
    }

    /// Re-scales rate limits to a new share of the configured rate.
    pub(super) fn set_rate_share(&mut self, share: f64) {
        match self {
            CompiledPolicy::RateLimiting {
                bucket,
                spans_per_sec,
                burst,
                ..
            } => bucket.rescale(*spans_per_sec * share, *burst * share),
            CompiledPolicy::BytesLimiting {
                bucket,
                bytes_per_sec,
                burst,
                ..
            } => bucket.rescale(*bytes_per_sec * share, *burst * share),
            CompiledPolicy::And(subs) | CompiledPolicy::Drop(subs) => {
                subs.iter_mut().for_each(|s| s.set_rate_share(share));
            }
            CompiledPolicy::Not(sub) => sub.set_rate_share(share),
            CompiledPolicy::Composite(c) => c.set_rate_share(share),
            CompiledPolicy::ThroughputTarget(t) => t.set_rate_share(share),
            _ => {}
        }
    }

    /// Whether this policy, or one below it, is a `throughput_target` (whose thresholds are
    /// recorded on kept spans whether or not the `usetracestate` gate is on).
    pub(super) fn has_throughput_target(&self) -> bool {
        match self {
            CompiledPolicy::ThroughputTarget(_) => true,
            CompiledPolicy::And(subs) | CompiledPolicy::Drop(subs) => {
                subs.iter().any(|s| s.policy.has_throughput_target())
            }
            CompiledPolicy::Not(sub) => sub.policy.has_throughput_target(),
            _ => false,
        }
    }

    /// A rate or bytes limit, which becomes a batch threshold when thresholds are on.
    pub(super) fn is_budget_limit(&self) -> bool {
        matches!(
            self,
            CompiledPolicy::RateLimiting { .. } | CompiledPolicy::BytesLimiting { .. }
        )
    }

    /// For a rate or bytes limit, the threshold its budget implies for the traces due
    /// together (`batch.rs`); other policies ignore batches, as in the collector.
    pub(super) fn calculate_batch_threshold(
        &mut self,
        candidates: &[&TraceView<'_>],
        now: Duration,
    ) {
        match self {
            CompiledPolicy::RateLimiting { bucket, batch, .. } => {
                let cost = |t: &TraceView<'_>| t.spans.len() as f64;
                *batch = Some(budget_threshold(bucket, candidates, cost, now));
            }
            CompiledPolicy::BytesLimiting { bucket, batch, .. } => {
                let cost = |t: &TraceView<'_>| export_request_len(t.spans) as f64;
                *batch = Some(budget_threshold(bucket, candidates, cost, now));
            }
            _ => {}
        }
    }

    /// This policy's vote on a trace, with the threshold it implies when it samples
    /// (`Threshold::ALWAYS` for every policy that has no probability of its own, as in the
    /// collector).
    pub(super) fn evaluate(&mut self, t: &TraceView<'_>, now: Duration) -> (Decision, Threshold) {
        let yes = |b: bool| {
            let d = if b {
                Decision::Sampled
            } else {
                Decision::NotSampled
            };
            (d, Threshold::ALWAYS)
        };
        let invertible = |found: bool, invert: bool| yes(found != invert);
        match self {
            CompiledPolicy::AlwaysSample => yes(true),
            CompiledPolicy::Latency { threshold, upper } => {
                let d = trace_duration(t);
                yes(d >= *threshold && upper.is_none_or(|u| d <= u))
            }
            CompiledPolicy::NumericAttribute {
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
            CompiledPolicy::Probabilistic {
                threshold,
                salt,
                otel_threshold,
            } => probabilistic_vote(*threshold, salt, *otel_threshold, t),
            CompiledPolicy::StatusCode { codes } => {
                yes(t.spans.iter().any(|s| codes.contains(&s.meta.status_code)))
            }
            CompiledPolicy::StringAttribute {
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
            CompiledPolicy::BooleanAttribute { key, value, invert } => {
                let value = *value;
                let matches = |v: Option<AnyValueRef<'_>>| matches!(v, Some(AnyValueRef::Bool(b)) if b == value);
                invertible(any_attribute(t, key, matches), *invert)
            }
            CompiledPolicy::RateLimiting { bucket, batch, .. } => {
                limit_vote(bucket, *batch, t.spans.len() as f64, t, now)
            }
            CompiledPolicy::BytesLimiting { bucket, batch, .. } => {
                // The collector charges the protobuf size of the trace's data, resource and
                // scope included.
                let cost = export_request_len(t.spans) as f64;
                limit_vote(bucket, *batch, cost, t, now)
            }
            CompiledPolicy::SpanCount { min, max } => {
                let n = t.spans.len() as u64;
                yes(n >= *min && max.is_none_or(|m| n <= m))
            }
            CompiledPolicy::TraceState { key, values } => yes(trace_state_matches(t, key, values)),
            CompiledPolicy::TraceFlags => yes(t.spans.iter().any(|s| s.meta.flags & 0x01 != 0)),
            CompiledPolicy::Ottl { span, spanevent } => yes(ottl_matches(t, span, spanevent)),
            CompiledPolicy::And(subs) => and_vote(subs, t, now),
            CompiledPolicy::Not(sub) => match sub.evaluate(t, now) {
                Decision::Sampled => yes(false),
                Decision::NotSampled => yes(true),
                Decision::Dropped => (Decision::Dropped, Threshold::ALWAYS),
            },
            CompiledPolicy::Drop(subs) => {
                for sub in subs {
                    if !sub.evaluate(t, now).is_sampled() {
                        return yes(false);
                    }
                }
                (Decision::Dropped, Threshold::ALWAYS)
            }
            CompiledPolicy::Composite(c) => yes(c.evaluate(t, now)),
            CompiledPolicy::ThroughputTarget(target) => target.evaluate(t, now),
        }
    }
}

/// With thresholds on, a trace whose spans carry OpenTelemetry sampling information is
/// sampled by its randomness; otherwise (and always with them off) by the salted hash, as the
/// collector does. Either way the vote carries the percentage as a threshold.
fn probabilistic_vote(
    hash_threshold: u64,
    salt: &str,
    otel_threshold: Threshold,
    t: &TraceView<'_>,
) -> (Decision, Threshold) {
    let sampled = match t.sampling.filter(|info| info.present) {
        Some(info) => otel_threshold.should_sample(info.randomness_or(&t.trace_id)),
        None => hash_threshold > 0 && trace_id_hash(salt, &t.trace_id) <= hash_threshold,
    };
    let decision = if sampled {
        Decision::Sampled
    } else {
        Decision::NotSampled
    };
    (decision, otel_threshold)
}

/// Kept only if every sub-policy keeps it: the strictest threshold applies.
fn and_vote(subs: &mut [NamedPolicy], t: &TraceView<'_>, now: Duration) -> (Decision, Threshold) {
    let mut strictest = Threshold::ALWAYS;
    for sub in subs {
        let (d, th) = sub.policy.evaluate(t, now);
        if !d.is_sampled() {
            return (Decision::NotSampled, Threshold::ALWAYS);
        }
        strictest = strictest.max(th);
    }
    (Decision::Sampled, strictest)
}

/// A rate or bytes limit's vote. Without a batch threshold it is a token bucket; with one
/// (thresholds on, the tick's budget already taken by `batch`), a trace is kept when its
/// randomness clears the threshold the budget implied — a trace costing more than the burst
/// never is.
fn limit_vote(
    bucket: &mut TokenBucket,
    batch: Option<Threshold>,
    cost: f64,
    t: &TraceView<'_>,
    now: Duration,
) -> (Decision, Threshold) {
    let not_sampled = (Decision::NotSampled, Threshold::ALWAYS);
    if cost > bucket.capacity() {
        return not_sampled;
    }
    match batch {
        None if bucket.try_take(cost, now) => (Decision::Sampled, Threshold::ALWAYS),
        None => not_sampled,
        Some(th) => {
            let randomness = t.sampling.unwrap_or_default().randomness_or(&t.trace_id);
            if th.should_sample(randomness) {
                (Decision::Sampled, th)
            } else {
                not_sampled
            }
        }
    }
}

/// From the earliest span start to the latest span end.
fn trace_duration(t: &TraceView<'_>) -> Duration {
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
    Duration::from_nanos(end.saturating_sub(start))
}

/// Some span's W3C trace state has `key` with one of `values`.
fn trace_state_matches(t: &TraceView<'_>, key: &str, values: &[String]) -> bool {
    t.spans.iter().any(|s| {
        s.trace_state()
            .split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == key && values.iter().any(|x| x == v))
    })
}

/// Some span satisfies a `span` condition, or some event a `spanevent` condition.
fn ottl_matches(t: &TraceView<'_>, span: &[Condition], spanevent: &[Condition]) -> bool {
    t.spans.iter().any(|s| {
        span.iter().any(|c| c.eval(&SpanContext(s)))
            || (!spanevent.is_empty()
                && s.events().any(|event| {
                    spanevent
                        .iter()
                        .any(|c| c.eval(&SpanEventContext { span: s, event }))
                }))
    })
}

fn status_code(name: StatusCodeName) -> StatusCode {
    match name {
        StatusCodeName::Unset => StatusCode::UNSET,
        StatusCodeName::Ok => StatusCode::OK,
        StatusCodeName::Error => StatusCode::ERROR,
    }
}

/// The rate and the bucket size: the collector's default burst is two seconds of the rate.
fn rate_and_burst(per_second: u64, burst_capacity: u64) -> (f64, f64) {
    let rate = per_second as f64;
    let burst = if burst_capacity > 0 {
        burst_capacity as f64
    } else {
        2.0 * rate
    };
    (rate, burst)
}
