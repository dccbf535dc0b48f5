//! `attributes` processor: actions on span attributes.

use bytes::Bytes;
use tailgate_config::components::AttributesConfig;
use tailgate_otlp::EncodedSpan;

use crate::actions::AttributeActions;
use crate::{Processed, SpanProcessor};

const SPAN_ATTRIBUTES_FIELD: u32 = 9;

#[derive(Debug, Clone)]
pub struct AttributesProcessor {
    actions: AttributeActions,
}

impl AttributesProcessor {
    pub fn new(cfg: &AttributesConfig) -> Self {
        AttributesProcessor {
            actions: AttributeActions::new(&cfg.actions),
        }
    }
}

impl SpanProcessor for AttributesProcessor {
    fn process(&self, spans: &mut Vec<EncodedSpan>) -> Processed {
        for span in spans.iter_mut() {
            if let Some(bytes) = self
                .actions
                .apply_encoded(span.bytes(), SPAN_ATTRIBUTES_FIELD)
            {
                span.set_bytes(Bytes::from(bytes));
            }
        }
        Processed::default()
    }
}
