//! A policy compiled from its typed config: what [`super::NamedPolicy`] evaluates.

use std::collections::HashSet;
use std::time::Duration;

use regex::Regex;
use tailgate_config::sampling::{PolicyKind, StatusCodeName, StringValues};
use tailgate_otlp::{AnyValueRef, StatusCode, export_request_len};
use tailgate_ottl::Condition;
use tailgate_processors::filter::{SpanContext, SpanEventContext};

use super::composite::Composite;
use super::rate::TokenBucket;
use super::{
    DEFAULT_HASH_SALT, Decision, NamedPolicy, TraceView, probabilistic_threshold, trace_id_hash,
};

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
    Composite(Composite),
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
                }
            }
            PolicyKind::BytesLimiting(b) => {
                let (rate, burst) = rate_and_burst(b.bytes_per_second, b.burst_capacity);
                CompiledPolicy::BytesLimiting {
                    bucket: TokenBucket::new(rate * rate_share, burst * rate_share),
                    bytes_per_sec: rate,
                    burst,
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
        }
    }

    /// Re-scales rate limits to a new share of the configured rate.
    pub(super) fn set_rate_share(&mut self, share: f64) {
        match self {
            CompiledPolicy::RateLimiting {
                bucket,
                spans_per_sec,
                burst,
            } => bucket.rescale(*spans_per_sec * share, *burst * share),
            CompiledPolicy::BytesLimiting {
                bucket,
                bytes_per_sec,
                burst,
            } => bucket.rescale(*bytes_per_sec * share, *burst * share),
            CompiledPolicy::And(subs) | CompiledPolicy::Drop(subs) => {
                subs.iter_mut().for_each(|s| s.set_rate_share(share));
            }
            CompiledPolicy::Not(sub) => sub.set_rate_share(share),
            CompiledPolicy::Composite(c) => c.set_rate_share(share),
            _ => {}
        }
    }

    /// This policy's vote on a trace.
    pub(super) fn evaluate(&mut self, t: &TraceView<'_>, now: Duration) -> Decision {
        let yes = |b: bool| {
            if b {
                Decision::Sampled
            } else {
                Decision::NotSampled
            }
        };
        let invertible = |found: bool, invert: bool| yes(found != invert);
        match self {
            CompiledPolicy::AlwaysSample => Decision::Sampled,
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
            CompiledPolicy::Probabilistic { threshold, salt } => {
                yes(*threshold > 0 && trace_id_hash(salt, &t.trace_id) <= *threshold)
            }
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
            CompiledPolicy::RateLimiting { bucket, .. } => {
                yes(bucket.try_take(t.spans.len() as f64, now))
            }
            CompiledPolicy::BytesLimiting { bucket, .. } => {
                // The collector charges the protobuf size of the trace's data, resource and
                // scope included.
                yes(bucket.try_take(export_request_len(t.spans) as f64, now))
            }
            CompiledPolicy::SpanCount { min, max } => {
                let n = t.spans.len() as u64;
                yes(n >= *min && max.is_none_or(|m| n <= m))
            }
            CompiledPolicy::TraceState { key, values } => yes(trace_state_matches(t, key, values)),
            CompiledPolicy::TraceFlags => yes(t.spans.iter().any(|s| s.meta.flags & 0x01 != 0)),
            CompiledPolicy::Ottl { span, spanevent } => yes(ottl_matches(t, span, spanevent)),
            CompiledPolicy::And(subs) => {
                for sub in subs {
                    if !sub.evaluate(t, now).is_sampled() {
                        return Decision::NotSampled;
                    }
                }
                Decision::Sampled
            }
            CompiledPolicy::Not(sub) => match sub.evaluate(t, now) {
                Decision::Sampled => Decision::NotSampled,
                Decision::NotSampled => Decision::Sampled,
                Decision::Dropped => Decision::Dropped,
            },
            CompiledPolicy::Drop(subs) => {
                for sub in subs {
                    if !sub.evaluate(t, now).is_sampled() {
                        return Decision::NotSampled;
                    }
                }
                Decision::Dropped
            }
            CompiledPolicy::Composite(c) => yes(c.evaluate(t, now)),
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
