//! `filter` processor: drops spans (and span events) matching any OTTL condition.

use std::borrow::Cow;

use bytes::Bytes;
use tailgate_config::components::FilterConfig;
use tailgate_otlp::{
    EVENT_ATTRIBUTES, EVENT_NAME, EncodedSpan, RESOURCE_ATTRIBUTES, find_attribute, string_field,
};
use tailgate_ottl::{Condition, Context, Path, Value};

use crate::actions::ottl_value;
use crate::{Processed, SpanProcessor};

#[derive(Debug, Clone)]
pub struct FilterProcessor {
    span: Vec<Condition>,
    spanevent: Vec<Condition>,
}

impl FilterProcessor {
    pub fn new(cfg: &FilterConfig) -> Self {
        FilterProcessor {
            span: cfg.traces.span.iter().map(|c| c.0.clone()).collect(),
            spanevent: cfg.traces.spanevent.iter().map(|c| c.0.clone()).collect(),
        }
    }
}

/// A span seen through the OTTL span context.
pub struct SpanContext<'a>(pub &'a EncodedSpan);

impl Context for SpanContext<'_> {
    fn get(&self, path: &Path) -> Value<'_> {
        let s = self.0;
        match path {
            Path::Name => Value::Str(Cow::Borrowed(s.name())),
            Path::Kind => Value::Int(i64::from(s.meta.kind)),
            Path::StatusCode => Value::Int(i64::from(s.meta.status_code.0)),
            Path::TraceState => Value::Str(Cow::Borrowed(s.trace_state())),
            Path::StartTimeUnixNano => Value::Int(s.meta.start_time_unix_nano as i64),
            Path::EndTimeUnixNano => Value::Int(s.meta.end_time_unix_nano as i64),
            Path::Attribute(k) => ottl_value(s.attribute(k)),
            Path::ResourceAttribute(k) => ottl_value(s.resource_attribute(k)),
            _ => Value::Nil,
        }
    }
}

/// One encoded span event seen through the OTTL spanevent context.
pub struct SpanEventContext<'a> {
    pub span: &'a EncodedSpan,
    pub event: &'a [u8],
}

impl Context for SpanEventContext<'_> {
    fn get(&self, path: &Path) -> Value<'_> {
        match path {
            Path::Name => Value::Str(Cow::Borrowed(
                string_field(self.event, EVENT_NAME).unwrap_or(""),
            )),
            Path::Attribute(k) => ottl_value(find_attribute(self.event, EVENT_ATTRIBUTES, k)),
            Path::TimeUnixNano => {
                let mut t = 0u64;
                for f in tailgate_otlp::wire::FieldReader::new(self.event).flatten() {
                    if let (1, tailgate_otlp::wire::FieldValue::Fixed64(v)) = f {
                        t = v;
                    }
                }
                Value::Int(t as i64)
            }
            Path::SpanName => Value::Str(Cow::Borrowed(self.span.name())),
            Path::SpanKind => Value::Int(i64::from(self.span.meta.kind)),
            Path::SpanStatusCode => Value::Int(i64::from(self.span.meta.status_code.0)),
            Path::SpanAttribute(k) => ottl_value(self.span.attribute(k)),
            Path::ResourceAttribute(k) => ottl_value(find_attribute(
                &self.span.context.resource,
                RESOURCE_ATTRIBUTES,
                k,
            )),
            _ => Value::Nil,
        }
    }
}

/// The span's bytes without the events whose index is marked in `drop`; every other field is
/// copied as it is (no decode, so malformed nested content cannot fail here).
fn without_events(span: &[u8], drop: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(span.len());
    let mut reader = tailgate_otlp::wire::FieldReader::new(span);
    let mut event = 0;
    loop {
        let start = reader.position();
        let Some(Ok((num, _))) = reader.next_field() else {
            break;
        };
        if num == SPAN_EVENTS_FIELD {
            event += 1;
            if drop.get(event - 1).copied().unwrap_or(false) {
                continue;
            }
        }
        out.extend_from_slice(&span[start..reader.position()]);
    }
    out
}

const SPAN_EVENTS_FIELD: u32 = 11;

impl SpanProcessor for FilterProcessor {
    fn process(&self, spans: &mut Vec<EncodedSpan>) -> Processed {
        let before = spans.len();
        if !self.span.is_empty() {
            spans.retain(|s| !self.span.iter().any(|c| c.eval(&SpanContext(s))));
        }
        let mut events_dropped = 0;
        if !self.spanevent.is_empty() {
            for span in spans.iter_mut() {
                let drop: Vec<bool> = span
                    .events()
                    .map(|event| {
                        self.spanevent
                            .iter()
                            .any(|c| c.eval(&SpanEventContext { span, event }))
                    })
                    .collect();
                if drop.iter().any(|d| *d) {
                    events_dropped += drop.iter().filter(|d| **d).count();
                    span.set_bytes(Bytes::from(without_events(span.bytes(), &drop)));
                }
            }
        }
        Processed {
            spans_dropped: before - spans.len(),
            events_dropped,
        }
    }
}
