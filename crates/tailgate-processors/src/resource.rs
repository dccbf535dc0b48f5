//! `resource` processor: actions on resource attributes, once per distinct resource.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tailgate_config::components::ResourceConfig;
use tailgate_otlp::{EncodedSpan, RESOURCE_ATTRIBUTES, ResourceScope};

use crate::actions::AttributeActions;
use crate::{Processed, SpanProcessor};

#[derive(Debug, Clone)]
pub struct ResourceProcessor {
    actions: AttributeActions,
}

impl ResourceProcessor {
    pub fn new(cfg: &ResourceConfig) -> Self {
        ResourceProcessor {
            actions: AttributeActions::new(&cfg.attributes),
        }
    }

    fn rewrite(&self, ctx: &ResourceScope) -> Option<Bytes> {
        self.actions
            .apply_encoded(&ctx.resource, RESOURCE_ATTRIBUTES)
            .map(Bytes::from)
    }
}

impl SpanProcessor for ResourceProcessor {
    fn process(&self, spans: &mut Vec<EncodedSpan>) -> Processed {
        // Spans of one ScopeSpans share an Arc: rewrite each distinct context once.
        let mut rewritten: HashMap<*const ResourceScope, Arc<ResourceScope>> = HashMap::new();
        for span in spans.iter_mut() {
            let ptr = Arc::as_ptr(&span.context);
            let ctx = rewritten
                .entry(ptr)
                .or_insert_with(|| match self.rewrite(&span.context) {
                    Some(resource) => Arc::new(ResourceScope {
                        resource,
                        ..(*span.context).clone()
                    }),
                    None => Arc::clone(&span.context),
                });
            span.context = Arc::clone(ctx);
        }
        Processed::default()
    }
}
