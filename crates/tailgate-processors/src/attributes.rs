//! `attributes` processor: actions on span attributes.

use bytes::Bytes;
use prost::Message;
use tailgate_config::components::AttributesConfig;
use tailgate_otlp::EncodedSpan;
use tailgate_otlp::proto::trace::v1::Span;

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
            if !self.actions.may_change(&span.bytes, SPAN_ATTRIBUTES_FIELD) {
                continue;
            }
            // The scanner accepted these bytes, so they decode; a failure here is a bug.
            let mut decoded = Span::decode(span.bytes.clone()).expect("scanned span decodes");
            if self.actions.apply(&mut decoded.attributes) {
                span.bytes = Bytes::from(decoded.encode_to_vec());
            }
        }
        Processed::default()
    }
}
