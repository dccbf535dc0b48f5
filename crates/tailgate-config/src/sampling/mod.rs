//! `processors.tail_sampling`: the collector's settings with its names and defaults, plus
//! Tailgate's byte budget.
//!
//! Policies are read in the collector's YAML shape ([`RawPolicy`]: `name`, `type`, and the
//! settings under the key named like the type) and converted once, at load, into a typed
//! [`Policy`] whose [`PolicyKind`] carries exactly that type's settings. Validation and the
//! sampling crate match on the kind; nothing downstream re-checks which keys were present.

mod policy;
mod settings;

use serde::Deserialize;

use crate::types::GoDuration;

pub(crate) use policy::convert_policies;
pub use policy::{
    CompositeConfig, Policy, PolicyKind, PolicyShapeErrors, PolicyType, RateAllocation, RawPolicy,
    StringAttributePolicy, StringValues,
};
pub use settings::*;

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
    /// OpenTelemetry probability sampling in `tracestate` (OTEP 235): set only by the
    /// collector's gate `processor.tailsamplingprocessor.usetracestate`, as in the collector
    /// (no config key). `probabilistic` then samples by the trace's randomness when its spans
    /// carry `ot=rv`/`ot=th`, rate and bytes limits become batch thresholds, and kept spans
    /// record the effective `ot=th`.
    #[serde(skip)]
    pub use_tracestate: bool,
    /// Tailgate: shard actors hosting the per-trace state machines. Default: CPU count.
    #[serde(default)]
    pub shards: Option<usize>,
    /// The loader converts the YAML list itself (see `load::tail_sampling`) so that each shape
    /// problem is reported at its own path; a missing list is the empty list validation reports.
    #[serde(default)]
    pub policies: Vec<Policy>,
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
