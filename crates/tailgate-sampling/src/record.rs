//! What `record_policy` (the collector's `processor.tailsamplingprocessor.recordpolicy` gate)
//! writes on kept spans: the collector's scope attributes, with the collector's names, so
//! dashboards and queries built on them work unchanged.
//!
//! The attributes go on each span's instrumentation scope, as the collector puts them (it
//! sets them on every `ScopeSpans` of the trace). Spans share their scope through an `Arc`;
//! each distinct scope of a trace is rewritten once, on the wire, and the rewritten scope is
//! shared again by that trace's spans.

use std::collections::HashMap;
use std::sync::Arc;

use tailgate_config::AttributeValue;
use tailgate_config::components::{ActionKind, AttributeAction};
use tailgate_otlp::{EncodedSpan, ResourceScope};
use tailgate_processors::actions::AttributeActions;

/// The policy a kept trace was attributed to.
pub const POLICY_ATTRIBUTE: &str = "tailsampling.policy";
/// The sub-policy of a `composite` policy that sampled the trace.
pub const COMPOSITE_POLICY_ATTRIBUTE: &str = "tailsampling.composite_policy";
/// `true` on spans that followed a decision made earlier (late spans).
pub const CACHED_DECISION_ATTRIBUTE: &str = "tailsampling.cached_decision";
/// `InstrumentationScope.attributes`.
const SCOPE_ATTRIBUTES: u32 = 3;

/// What to record on one kept trace's spans.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecisionRecord<'a> {
    pub policy: Option<&'a str>,
    pub composite_policy: Option<&'a str>,
    /// The spans followed a cached decision.
    pub cached: bool,
}

impl DecisionRecord<'_> {
    fn actions(&self) -> Vec<AttributeAction> {
        let upsert = |key: &str, value: AttributeValue| AttributeAction {
            key: Some(key.to_string()),
            pattern: None,
            action: ActionKind::Upsert,
            value: Some(value),
            from_attribute: None,
        };
        let mut actions = Vec::new();
        if let Some(p) = self.policy {
            actions.push(upsert(POLICY_ATTRIBUTE, AttributeValue::String(p.into())));
        }
        if let Some(c) = self.composite_policy {
            actions.push(upsert(
                COMPOSITE_POLICY_ATTRIBUTE,
                AttributeValue::String(c.into()),
            ));
        }
        if self.cached {
            actions.push(upsert(
                CACHED_DECISION_ATTRIBUTE,
                AttributeValue::Bool(true),
            ));
        }
        actions
    }

    /// The spans with the record on their scopes (unchanged when there is nothing to record).
    pub fn write(&self, mut spans: Vec<EncodedSpan>) -> Vec<EncodedSpan> {
        let actions = self.actions();
        if actions.is_empty() {
            return spans;
        }
        let actions = AttributeActions::new(&actions);
        let mut rewritten: HashMap<*const ResourceScope, Arc<ResourceScope>> = HashMap::new();
        for span in &mut spans {
            let context = rewritten
                .entry(Arc::as_ptr(&span.context))
                .or_insert_with(|| {
                    let mut context = ResourceScope::clone(&span.context);
                    if let Some(scope) = actions.apply_encoded(&context.scope, SCOPE_ATTRIBUTES) {
                        context.scope = scope.into();
                    }
                    Arc::new(context)
                });
            span.context = Arc::clone(context);
        }
        spans
    }
}
