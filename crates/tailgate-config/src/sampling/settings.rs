//! The settings of the leaf policy types, under the key named like the type.

use serde::Deserialize;

use crate::components::ErrorMode;
use crate::types::{SpanCondition, SpanEventCondition};

/// Sampled when the trace (earliest start to latest end) lasts at least `threshold_ms` and,
/// when set, at most `upper_threshold_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    pub threshold_ms: u64,
    #[serde(default)]
    pub upper_threshold_ms: u64,
}

/// Sampled when a span or resource has integer/double attribute `key` within
/// `[min_value, max_value]` (a 0 bound is open, as in the collector).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericAttributeConfig {
    pub key: String,
    #[serde(default)]
    pub min_value: i64,
    #[serde(default)]
    pub max_value: i64,
    #[serde(default)]
    pub invert_match: bool,
}

/// Keeps `sampling_percentage` of traces by a hash of the trace ID and `hash_salt`: the same
/// trace ID gets the same answer on every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    pub sampling_percentage: f64,
    #[serde(default)]
    pub hash_salt: Option<String>,
}

/// Sampled when any span's status is one of `status_codes` (`OK`, `ERROR`, `UNSET`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    pub status_codes: Vec<StatusCodeName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum StatusCodeName {
    #[serde(rename = "UNSET")]
    Unset,
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "ERROR")]
    Error,
}

/// Sampled when a span or resource has string attribute `key` equal to (or, with regex
/// matching, matching) one of `values`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringAttributeConfig {
    pub key: String,
    pub values: Vec<String>,
    #[serde(default)]
    pub enabled_regex_matching: bool,
    /// Accepted for compatibility; Tailgate compiles the patterns once and needs no cache.
    #[serde(default)]
    pub cache_max_size: usize,
    #[serde(default)]
    pub invert_match: bool,
}

/// Sampled when a span or resource has boolean attribute `key` equal to `value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    pub key: String,
    pub value: bool,
    #[serde(default)]
    pub invert_match: bool,
}

/// Sampled while the spans of sampled traces stay under `spans_per_second` (token bucket of
/// `burst_capacity`, default `spans_per_second`). In a cluster the rate is shared among members.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    pub spans_per_second: u64,
    #[serde(default)]
    pub burst_capacity: u64,
}

/// Sampled while encoded bytes of sampled traces stay under `bytes_per_second` (token bucket
/// of `burst_capacity`, default twice the rate).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesLimitingConfig {
    pub bytes_per_second: u64,
    #[serde(default)]
    pub burst_capacity: u64,
}

/// Sampled when the trace has between `min_spans` and `max_spans` spans (0 = no maximum).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanCountConfig {
    #[serde(default)]
    pub min_spans: u64,
    #[serde(default)]
    pub max_spans: u64,
}

/// Sampled when a span's W3C trace state has `key` with one of `values`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStateConfig {
    pub key: String,
    pub values: Vec<String>,
}

/// Sampled when any `span` condition holds for a span or any `spanevent` condition for an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OttlConditionConfig {
    #[serde(default)]
    pub error_mode: ErrorMode,
    #[serde(default)]
    pub span: Vec<SpanCondition>,
    #[serde(default)]
    pub spanevent: Vec<SpanEventCondition>,
}
