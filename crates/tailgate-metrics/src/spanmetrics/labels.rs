//! A span's labels: the series key (concatenated values, as the collector builds it) and a
//! new series' attributes, in the collector's order.

use tailgate_config::connectors::Dimension;
use tailgate_otlp::{AnyValueRef, EncodedSpan};

use super::{KEY_SEPARATOR, SPAN_KIND_NAMES, STATUS_CODE_NAMES, Settings, SpanFacts};
use crate::model::*;

/// A label from an attribute, with its default.
pub(super) struct Dim {
    pub(super) name: String,
    pub(super) default: Option<AttrValue>,
}

impl Dim {
    pub(super) fn from_config(d: &Dimension) -> Dim {
        Dim {
            name: d.name.clone(),
            default: d.default.clone().map(AttrValue::Str),
        }
    }
}

/// A dimension's value: the span's attribute, else the event's (for `events`), else the
/// resource's, else the default; `None` leaves the label out.
pub(super) fn dimension_value(
    d: &Dim,
    span: &EncodedSpan,
    event: Option<&[u8]>,
) -> Option<AttrValue> {
    span.attribute(&d.name)
        .and_then(attr_value)
        .or_else(|| {
            event.and_then(|e| {
                tailgate_otlp::find_attribute(e, tailgate_otlp::EVENT_ATTRIBUTES, &d.name)
                    .and_then(attr_value)
            })
        })
        .or_else(|| span.resource_attribute(&d.name).and_then(attr_value))
        .or_else(|| d.default.clone())
}

pub(super) fn attr_value(v: AnyValueRef<'_>) -> Option<AttrValue> {
    match v {
        AnyValueRef::String(s) => Some(AttrValue::Str(s.to_string())),
        AnyValueRef::Int(i) => Some(AttrValue::Int(i)),
        AnyValueRef::Double(d) => Some(AttrValue::Double(d)),
        AnyValueRef::Bool(b) => Some(AttrValue::Bool(b)),
        _ => None,
    }
}

pub(super) fn kind_name(kind: i32) -> &'static str {
    SPAN_KIND_NAMES
        .get(kind as usize)
        .copied()
        .unwrap_or("SPAN_KIND_UNSPECIFIED")
}

pub(super) fn status_name(code: i32) -> &'static str {
    STATUS_CODE_NAMES
        .get(code as usize)
        .copied()
        .unwrap_or("STATUS_CODE_UNSET")
}

/// The series key: the intrinsic labels' values, then each dimension's `name:value`, as the
/// collector concatenates them.
pub(super) fn build_key(
    out: &mut Vec<u8>,
    s: &Settings,
    f: &SpanFacts<'_>,
    extra: &[Dim],
    event: Option<&[u8]>,
) {
    out.clear();
    let intrinsic = [
        f.service,
        f.span.name(),
        kind_name(f.span.meta.kind),
        status_name(f.span.meta.status_code.0),
    ];
    for (value, excluded) in intrinsic.iter().zip(s.exclude) {
        if !excluded {
            out.extend_from_slice(value.as_bytes());
            out.push(KEY_SEPARATOR);
        }
    }
    if let Some((name, version)) = f.scope {
        out.extend_from_slice(name.as_bytes());
        out.push(KEY_SEPARATOR);
        out.extend_from_slice(version.as_bytes());
        out.push(KEY_SEPARATOR);
    }
    for d in s.dims.iter().chain(extra) {
        if let Some(v) = dimension_value(d, f.span, event) {
            out.extend_from_slice(d.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(v.as_label().as_bytes());
            out.push(KEY_SEPARATOR);
        }
    }
    if s.sampling_method {
        out.push(u8::from(f.adjusted));
    }
}

/// A new series' attributes, in the collector's order.
pub(super) fn build_attributes(
    s: &Settings,
    f: &SpanFacts<'_>,
    extra: &[Dim],
    event: Option<&[u8]>,
) -> Attributes {
    let mut out: Vec<(String, AttrValue)> = Vec::with_capacity(6 + s.dims.len() + extra.len());
    let intrinsic = [
        ("service.name", f.service),
        ("span.name", f.span.name()),
        ("span.kind", kind_name(f.span.meta.kind)),
        ("status.code", status_name(f.span.meta.status_code.0)),
    ];
    for ((key, value), excluded) in intrinsic.into_iter().zip(s.exclude) {
        if !excluded {
            out.push((key.to_string(), AttrValue::Str(value.to_string())));
        }
    }
    out.push((
        "collector.instance.id".to_string(),
        AttrValue::Str(s.instance_id.clone()),
    ));
    if let Some((name, version)) = f.scope {
        out.push((
            "span.instrumentation.scope.name".to_string(),
            AttrValue::Str(name.to_string()),
        ));
        if !version.is_empty() {
            out.push((
                "span.instrumentation.scope.version".to_string(),
                AttrValue::Str(version.to_string()),
            ));
        }
    }
    if s.sampling_method {
        let method = if f.adjusted {
            "extrapolated"
        } else {
            "counted"
        };
        out.push(("sampling.method".to_string(), AttrValue::Str(method.into())));
    }
    for d in s.dims.iter().chain(extra) {
        if let Some(v) = dimension_value(d, f.span, event) {
            out.push((d.name.clone(), v));
        }
    }
    out.into()
}
