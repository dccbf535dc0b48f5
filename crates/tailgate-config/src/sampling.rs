//! `processors.tail_sampling`: the collector's settings with its names and defaults, plus
//! Tailgate's byte budget. Policies nest (`and`, `not`, `drop`, `composite` hold sub-policies).

use serde::Deserialize;

use crate::components::ErrorMode;
use crate::types::{ConfigRegex, GoDuration, SpanCondition, SpanEventCondition};

/// `processors.tail_sampling`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailSamplingConfig {
    /// Wait after a trace's first span before deciding. Default 30s.
    #[serde(default = "default_decision_wait")]
    pub decision_wait: GoDuration,
    /// Wait after the root span arrives; when shorter than the remaining `decision_wait`, the
    /// trace is decided then ("root + quiet period"). 0 = off. Default 0.
    #[serde(default)]
    pub decision_wait_after_root_received: GoDuration,
    /// Most traces buffered at once. At the limit the oldest trace is decided early (never
    /// dropped unseen), or with `block_on_overflow` new traces are refused retryably. Default 50000.
    #[serde(default = "default_num_traces")]
    pub num_traces: u64,
    /// Sizing hint for the trace table. Default 0.
    #[serde(default)]
    pub expected_new_traces_per_sec: u64,
    #[serde(default)]
    pub decision_cache: DecisionCacheConfig,
    /// Decide as soon as one policy samples. Default false.
    #[serde(default)]
    pub sample_on_first_match: bool,
    /// At `num_traces`, refuse new traces (retryably) instead of deciding the oldest early.
    #[serde(default)]
    pub block_on_overflow: bool,
    /// A trace whose buffered spans exceed this many encoded bytes is decided at once.
    /// 0 = no limit. Default 0.
    #[serde(default)]
    pub maximum_trace_size_bytes: u64,
    /// At shutdown, drop undecided traces (counted) instead of deciding on the data at hand.
    #[serde(default)]
    pub drop_pending_traces_on_shutdown: bool,
    /// Tailgate: encoded bytes of buffered spans, in MiB. Above 90% the oldest traces are
    /// decided early; when full, ingest is refused retryably. Default: half the soft limit of
    /// the pipeline's `memory_limiter`, else 512.
    #[serde(default)]
    pub buffer_limit_mib: Option<u64>,
    /// Tailgate: how long decision-cache entries live. Default 10m.
    #[serde(default = "default_decision_cache_ttl")]
    pub decision_cache_ttl: GoDuration,
    /// Record the deciding policy on kept spans' scopes, as the collector's `recordpolicy` gate
    /// does (`tailsampling.policy`, `tailsampling.composite_policy`, `tailsampling.cached_decision`).
    #[serde(default)]
    pub record_policy: bool,
    /// Tailgate: shard actors hosting the per-trace state machines. Default: CPU count.
    #[serde(default)]
    pub shards: Option<usize>,
    pub policies: Vec<PolicyConfig>,
}

fn default_decision_wait() -> GoDuration {
    GoDuration::from_secs(30)
}
fn default_num_traces() -> u64 {
    50_000
}
fn default_decision_cache_ttl() -> GoDuration {
    GoDuration::from_secs(600)
}

/// `decision_cache`: remembered decisions, so late spans follow them.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Kept-trace IDs remembered. Unset: `num_traces` (the collector's default of 0 disables
    /// the cache, which turns late spans into new traces); 0 disables.
    #[serde(default)]
    pub sampled_cache_size: Option<usize>,
    /// Dropped-trace IDs remembered. Unset: `num_traces`; 0 disables.
    #[serde(default)]
    pub non_sampled_cache_size: Option<usize>,
}

/// A policy type, as `type:` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    AlwaysSample,
    Latency,
    NumericAttribute,
    Probabilistic,
    StatusCode,
    StringAttribute,
    BooleanAttribute,
    RateLimiting,
    BytesLimiting,
    SpanCount,
    TraceState,
    TraceFlags,
    OttlCondition,
    And,
    Not,
    Drop,
    Composite,
}

impl PolicyType {
    /// The key that holds this type's settings (`None` for types without settings).
    pub fn settings_key(self) -> Option<&'static str> {
        Some(match self {
            PolicyType::AlwaysSample | PolicyType::TraceFlags => return None,
            PolicyType::Latency => "latency",
            PolicyType::NumericAttribute => "numeric_attribute",
            PolicyType::Probabilistic => "probabilistic",
            PolicyType::StatusCode => "status_code",
            PolicyType::StringAttribute => "string_attribute",
            PolicyType::BooleanAttribute => "boolean_attribute",
            PolicyType::RateLimiting => "rate_limiting",
            PolicyType::BytesLimiting => "bytes_limiting",
            PolicyType::SpanCount => "span_count",
            PolicyType::TraceState => "trace_state",
            PolicyType::OttlCondition => "ottl_condition",
            PolicyType::And => "and",
            PolicyType::Not => "not",
            PolicyType::Drop => "drop",
            PolicyType::Composite => "composite",
        })
    }
}

/// One policy: `name`, `type`, and the settings under the key named like the type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub policy_type: PolicyType,
    #[serde(default)]
    pub latency: Option<LatencyConfig>,
    #[serde(default)]
    pub numeric_attribute: Option<NumericAttributeConfig>,
    #[serde(default)]
    pub probabilistic: Option<ProbabilisticConfig>,
    #[serde(default)]
    pub status_code: Option<StatusCodeConfig>,
    #[serde(default)]
    pub string_attribute: Option<StringAttributeConfig>,
    #[serde(default)]
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    #[serde(default)]
    pub rate_limiting: Option<RateLimitingConfig>,
    #[serde(default)]
    pub bytes_limiting: Option<BytesLimitingConfig>,
    #[serde(default)]
    pub span_count: Option<SpanCountConfig>,
    #[serde(default)]
    pub trace_state: Option<TraceStateConfig>,
    #[serde(default)]
    pub ottl_condition: Option<OttlConditionConfig>,
    #[serde(default)]
    pub and: Option<AndConfig>,
    #[serde(default)]
    pub not: Option<NotConfig>,
    #[serde(default)]
    pub drop: Option<DropConfig>,
    #[serde(default)]
    pub composite: Option<CompositeConfig>,
}

impl PolicyConfig {
    /// Which settings keys are present, for "wrong key for this type" checks.
    pub fn present_settings(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! check {
            ($($field:ident),*) => { $( if self.$field.is_some() { out.push(stringify!($field)); } )* };
        }
        check!(
            latency,
            numeric_attribute,
            probabilistic,
            status_code,
            string_attribute,
            boolean_attribute,
            rate_limiting,
            bytes_limiting,
            span_count,
            trace_state,
            ottl_condition,
            and,
            not,
            drop,
            composite
        );
        out
    }
}

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

/// Sampled when every sub-policy samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    pub and_sub_policy: Vec<PolicyConfig>,
}

/// The opposite of its one sub-policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    pub not_sub_policy: Box<PolicyConfig>,
}

/// Drops the trace (a veto over every other policy) when every sub-policy samples it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    pub drop_sub_policy: Vec<PolicyConfig>,
}

/// Sub-policies, each with a share of `max_total_spans_per_second`, tried in the order
/// `composite_sub_policy` lists them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig {
    pub max_total_spans_per_second: u64,
    /// Accepted and unused, as in the collector v0.161.0: its composite evaluates
    /// sub-policies in `composite_sub_policy` order.
    #[serde(default)]
    pub policy_order: Vec<String>,
    pub composite_sub_policy: Vec<PolicyConfig>,
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocation {
    pub policy: String,
    pub percent: u64,
}

/// `enabled_regex_matching` patterns compiled at load.
pub fn compile_values(cfg: &StringAttributeConfig) -> Result<Vec<ConfigRegex>, String> {
    cfg.values
        .iter()
        .map(|v| {
            regex::Regex::new(v)
                .map(ConfigRegex)
                .map_err(|e| format!("invalid regex `{v}`: {e}"))
        })
        .collect()
}
