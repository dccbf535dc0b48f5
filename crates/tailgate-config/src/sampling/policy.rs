//! One tail-sampling policy: the collector's YAML shape ([`RawPolicy`]) and the typed form
//! ([`Policy`]) it is converted into at load.
//!
//! The YAML shape has one optional key per policy type, of which exactly the one named like
//! `type` must be present. The conversion checks that once and yields a [`PolicyKind`] that
//! holds only that type's settings, so no consumer has to re-check or `expect` it.

use std::fmt;

use serde::Deserialize;

use super::settings::*;
use crate::types::ConfigRegex;

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
    ThroughputTarget,
}

impl PolicyType {
    /// The name `type:` gives it.
    pub fn name(self) -> &'static str {
        match self {
            PolicyType::AlwaysSample => "always_sample",
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
            PolicyType::TraceFlags => "trace_flags",
            PolicyType::OttlCondition => "ottl_condition",
            PolicyType::And => "and",
            PolicyType::Not => "not",
            PolicyType::Drop => "drop",
            PolicyType::Composite => "composite",
            PolicyType::ThroughputTarget => "throughput_target",
        }
    }

    /// The key that holds this type's settings (`None` for types without settings).
    fn settings_key(self) -> Option<&'static str> {
        match self {
            PolicyType::AlwaysSample | PolicyType::TraceFlags => None,
            other => Some(other.name()),
        }
    }
}

/// One policy as the collector's YAML writes it: `name`, `type`, and the settings under the
/// key named like the type. Only [`Policy::try_from`] reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) policy_type: PolicyType,
    #[serde(default)]
    pub(crate) latency: Option<LatencyConfig>,
    #[serde(default)]
    pub(crate) numeric_attribute: Option<NumericAttributeConfig>,
    #[serde(default)]
    pub(crate) probabilistic: Option<ProbabilisticConfig>,
    #[serde(default)]
    pub(crate) status_code: Option<StatusCodeConfig>,
    #[serde(default)]
    pub(crate) string_attribute: Option<StringAttributeConfig>,
    #[serde(default)]
    pub(crate) boolean_attribute: Option<BooleanAttributeConfig>,
    #[serde(default)]
    pub(crate) rate_limiting: Option<RateLimitingConfig>,
    #[serde(default)]
    pub(crate) bytes_limiting: Option<BytesLimitingConfig>,
    #[serde(default)]
    pub(crate) span_count: Option<SpanCountConfig>,
    #[serde(default)]
    pub(crate) trace_state: Option<TraceStateConfig>,
    #[serde(default)]
    pub(crate) ottl_condition: Option<OttlConditionConfig>,
    #[serde(default)]
    pub(crate) and: Option<RawAndConfig>,
    #[serde(default)]
    pub(crate) not: Option<RawNotConfig>,
    #[serde(default)]
    pub(crate) drop: Option<RawDropConfig>,
    #[serde(default)]
    pub(crate) composite: Option<CompositeConfig<RawPolicy>>,
    #[serde(default)]
    pub(crate) throughput_target: Option<ThroughputTargetConfig>,
}

/// `and`: sampled when every sub-policy samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAndConfig {
    and_sub_policy: Vec<RawPolicy>,
}

/// `not`: the opposite of its one sub-policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotConfig {
    not_sub_policy: Box<RawPolicy>,
}

/// `drop`: drops the trace (a veto over every other policy) when every sub-policy samples it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDropConfig {
    drop_sub_policy: Vec<RawPolicy>,
}

impl RawPolicy {
    /// The settings keys present, in declaration order.
    fn present_settings(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! present {
            ($($field:ident),*) => { $( if self.$field.is_some() { out.push(stringify!($field)); } )* };
        }
        present!(
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
            composite,
            throughput_target
        );
        out
    }
}

/// A policy after load: its name and exactly its type's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub struct Policy {
    pub name: String,
    pub kind: PolicyKind,
}

/// A policy's type with its settings.
#[derive(Debug, Clone)]
pub enum PolicyKind {
    AlwaysSample,
    Latency(LatencyConfig),
    NumericAttribute(NumericAttributeConfig),
    Probabilistic(ProbabilisticConfig),
    StatusCode(StatusCodeConfig),
    StringAttribute(StringAttributePolicy),
    BooleanAttribute(BooleanAttributeConfig),
    RateLimiting(RateLimitingConfig),
    BytesLimiting(BytesLimitingConfig),
    SpanCount(SpanCountConfig),
    TraceState(TraceStateConfig),
    TraceFlags,
    OttlCondition(OttlConditionConfig),
    And(Vec<Policy>),
    Not(Box<Policy>),
    Drop(Vec<Policy>),
    Composite(CompositeConfig<Policy>),
    ThroughputTarget(ThroughputTargetConfig),
}

impl PolicyKind {
    pub fn policy_type(&self) -> PolicyType {
        match self {
            PolicyKind::AlwaysSample => PolicyType::AlwaysSample,
            PolicyKind::Latency(_) => PolicyType::Latency,
            PolicyKind::NumericAttribute(_) => PolicyType::NumericAttribute,
            PolicyKind::Probabilistic(_) => PolicyType::Probabilistic,
            PolicyKind::StatusCode(_) => PolicyType::StatusCode,
            PolicyKind::StringAttribute(_) => PolicyType::StringAttribute,
            PolicyKind::BooleanAttribute(_) => PolicyType::BooleanAttribute,
            PolicyKind::RateLimiting(_) => PolicyType::RateLimiting,
            PolicyKind::BytesLimiting(_) => PolicyType::BytesLimiting,
            PolicyKind::SpanCount(_) => PolicyType::SpanCount,
            PolicyKind::TraceState(_) => PolicyType::TraceState,
            PolicyKind::TraceFlags => PolicyType::TraceFlags,
            PolicyKind::OttlCondition(_) => PolicyType::OttlCondition,
            PolicyKind::And(_) => PolicyType::And,
            PolicyKind::Not(_) => PolicyType::Not,
            PolicyKind::Drop(_) => PolicyType::Drop,
            PolicyKind::Composite(_) => PolicyType::Composite,
            PolicyKind::ThroughputTarget(_) => PolicyType::ThroughputTarget,
        }
    }
}

/// `string_attribute` with its values read as `enabled_regex_matching` says.
#[derive(Debug, Clone)]
pub struct StringAttributePolicy {
    pub key: String,
    pub values: StringValues,
    pub invert_match: bool,
}

/// Values compared exactly, or patterns compiled at load.
#[derive(Debug, Clone)]
pub enum StringValues {
    Exact(Vec<String>),
    Regex(Vec<ConfigRegex>),
}

impl StringValues {
    pub fn is_empty(&self) -> bool {
        match self {
            StringValues::Exact(v) => v.is_empty(),
            StringValues::Regex(v) => v.is_empty(),
        }
    }
}

/// `composite`: sub-policies, each with a share of `max_total_spans_per_second`, tried in the
/// order `composite_sub_policy` lists them. `P` is [`RawPolicy`] as read, [`Policy`] after load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig<P> {
    pub max_total_spans_per_second: u64,
    /// Accepted and unused, as in the collector v0.161.0: its composite evaluates
    /// sub-policies in `composite_sub_policy` order.
    #[serde(default)]
    pub policy_order: Vec<String>,
    pub composite_sub_policy: Vec<P>,
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocation {
    pub policy: String,
    pub percent: u64,
}

/// Shape problems in policies, each as (path below where the conversion started, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyShapeErrors(pub Vec<(String, String)>);

impl fmt::Display for PolicyShapeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (path, message)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if path.is_empty() {
                f.write_str(message)?;
            } else {
                write!(f, "{path}: {message}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for PolicyShapeErrors {}

impl TryFrom<RawPolicy> for Policy {
    type Error = PolicyShapeErrors;

    fn try_from(raw: RawPolicy) -> Result<Policy, PolicyShapeErrors> {
        let mut problems = Vec::new();
        match convert(raw, "", &mut problems) {
            Some(policy) if problems.is_empty() => Ok(policy),
            _ => Err(PolicyShapeErrors(problems)),
        }
    }
}

/// Converts a policy list, reporting problems at `[i].…` paths.
pub(crate) fn convert_policies(raw: Vec<RawPolicy>) -> Result<Vec<Policy>, PolicyShapeErrors> {
    let mut problems = Vec::new();
    match convert_list(raw, "", &mut problems) {
        Some(policies) if problems.is_empty() => Ok(policies),
        _ => Err(PolicyShapeErrors(problems)),
    }
}

type Problems = Vec<(String, String)>;

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Every entry is converted, so all problems are reported; `None` when any failed.
fn convert_list(raw: Vec<RawPolicy>, at: &str, out: &mut Problems) -> Option<Vec<Policy>> {
    let converted: Vec<Option<Policy>> = raw
        .into_iter()
        .enumerate()
        .map(|(i, p)| convert(p, &format!("{at}[{i}]"), out))
        .collect();
    converted.into_iter().collect()
}

/// `None` when a problem was reported for this policy or below it.
fn convert(raw: RawPolicy, at: &str, out: &mut Problems) -> Option<Policy> {
    let reported_before = out.len();
    let expected = raw.policy_type.settings_key();
    let present = raw.present_settings();
    for key in &present {
        if Some(*key) != expected {
            let message = match expected {
                Some(e) => format!(
                    "`{key}` does not apply to a policy of type `{e}`; its settings go under `{e}`"
                ),
                None => {
                    format!("`{key}` does not apply to this policy type, which takes no settings")
                }
            };
            out.push((join(at, key), message));
        }
    }
    if let Some(key) = expected
        && !present.contains(&key)
    {
        out.push((
            join(at, key),
            format!("missing: a policy of type `{key}` needs its settings under `{key}`"),
        ));
        return None;
    }
    // The expected key is present (checked above), so each `?` below only passes on a
    // problem already reported for a sub-policy.
    let kind = match raw.policy_type {
        PolicyType::AlwaysSample => PolicyKind::AlwaysSample,
        PolicyType::TraceFlags => PolicyKind::TraceFlags,
        PolicyType::Latency => PolicyKind::Latency(raw.latency?),
        PolicyType::NumericAttribute => PolicyKind::NumericAttribute(raw.numeric_attribute?),
        PolicyType::Probabilistic => PolicyKind::Probabilistic(raw.probabilistic?),
        PolicyType::StatusCode => PolicyKind::StatusCode(raw.status_code?),
        PolicyType::StringAttribute => PolicyKind::StringAttribute(string_attribute(
            raw.string_attribute?,
            &join(at, "string_attribute.values"),
            out,
        )?),
        PolicyType::BooleanAttribute => PolicyKind::BooleanAttribute(raw.boolean_attribute?),
        PolicyType::RateLimiting => PolicyKind::RateLimiting(raw.rate_limiting?),
        PolicyType::BytesLimiting => PolicyKind::BytesLimiting(raw.bytes_limiting?),
        PolicyType::SpanCount => PolicyKind::SpanCount(raw.span_count?),
        PolicyType::TraceState => PolicyKind::TraceState(raw.trace_state?),
        PolicyType::OttlCondition => PolicyKind::OttlCondition(raw.ottl_condition?),
        PolicyType::ThroughputTarget => PolicyKind::ThroughputTarget(raw.throughput_target?),
        PolicyType::And => PolicyKind::And(convert_list(
            raw.and?.and_sub_policy,
            &join(at, "and.and_sub_policy"),
            out,
        )?),
        PolicyType::Not => PolicyKind::Not(Box::new(convert(
            *raw.not?.not_sub_policy,
            &join(at, "not.not_sub_policy"),
            out,
        )?)),
        PolicyType::Drop => PolicyKind::Drop(convert_list(
            raw.drop?.drop_sub_policy,
            &join(at, "drop.drop_sub_policy"),
            out,
        )?),
        PolicyType::Composite => {
            let c = raw.composite?;
            PolicyKind::Composite(CompositeConfig {
                max_total_spans_per_second: c.max_total_spans_per_second,
                policy_order: c.policy_order,
                composite_sub_policy: convert_list(
                    c.composite_sub_policy,
                    &join(at, "composite.composite_sub_policy"),
                    out,
                )?,
                rate_allocation: c.rate_allocation,
            })
        }
    };
    (out.len() == reported_before).then_some(Policy {
        name: raw.name,
        kind,
    })
}

/// Compiles the patterns when `enabled_regex_matching` is set.
fn string_attribute(
    s: StringAttributeConfig,
    at: &str,
    out: &mut Problems,
) -> Option<StringAttributePolicy> {
    let values = if s.enabled_regex_matching {
        let mut patterns = Vec::with_capacity(s.values.len());
        for v in &s.values {
            match regex::Regex::new(v) {
                Ok(r) => patterns.push(ConfigRegex(r)),
                Err(e) => out.push((at.to_string(), format!("invalid regex `{v}`: {e}"))),
            }
        }
        (patterns.len() == s.values.len()).then_some(StringValues::Regex(patterns))?
    } else {
        StringValues::Exact(s.values)
    };
    Some(StringAttributePolicy {
        key: s.key,
        values,
        invert_match: s.invert_match,
    })
}
