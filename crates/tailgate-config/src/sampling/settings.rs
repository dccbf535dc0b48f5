//! The settings of the leaf policy types, under the key named like the type.

use serde::Deserialize;

use crate::components::ErrorMode;
use crate::types::{GoDuration, SpanCondition, SpanEventCondition};

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

/// Tailgate's `throughput_target` (the collector v0.161.0 has no adaptive sampler to match):
/// keeps about `traces_per_second` traces per second across the whole cluster, whatever the
/// traffic. Every `adjustment_interval` each evaluator re-divides its share of the target
/// among the fingerprints it saw (values of `fingerprint_attributes`, at most `max_keys`),
/// giving rare fingerprints everything they send before common ones get the rest, and
/// samples each trace by its randomness at its fingerprint's probability.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputTargetConfig {
    /// Kept traces per second, for the whole cluster.
    pub traces_per_second: f64,
    /// How often the per-fingerprint probabilities are recomputed. Default 10s.
    #[serde(default = "default_adjustment_interval")]
    pub adjustment_interval: GoDuration,
    /// Span or resource attributes whose values form a trace's fingerprint (the first span
    /// that has each). Default `[service.name]`.
    #[serde(default = "default_fingerprint_attributes")]
    pub fingerprint_attributes: Vec<String>,
    /// Distinct fingerprints tracked per interval; the rest share one overflow fingerprint.
    /// Default 1000.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_adjustment_interval() -> GoDuration {
    GoDuration::from_secs(10)
}

fn default_fingerprint_attributes() -> Vec<String> {
    vec!["service.name".to_string()]
}

fn default_max_keys() -> usize {
    1000
}
