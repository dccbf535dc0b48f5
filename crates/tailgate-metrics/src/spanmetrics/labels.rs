//! A span's labels: the series key (concatenated values, as the collector builds it) and a
//! new series' attributes, in the collector's order.

use tailgate_config::connectors::Dimension;
use tailgate_otlp::wire::{FieldReader, FieldValue};
use tailgate_otlp::{AnyValueRef, EncodedSpan, SPAN_ATTRIBUTES};

use super::{KEY_SEPARATOR, SPAN_KIND_NAMES, STATUS_CODE_NAMES, Settings, SpanFacts};
use crate::model::*;

/// A label from an attribute, with its default. `slot` indexes the values read per span
/// (`Settings::dim_names`): every dimension name is read once per span, whichever metrics
/// use it.
pub(super) struct Dim {
    pub(super) name: String,
    pub(super) default: Option<AttrValue>,
    pub(super) slot: usize,
}

impl Dim {
    /// The dimension, its name given a slot in `names` (added when new).
    pub(super) fn from_config(d: &Dimension, names: &mut Vec<String>) -> Dim {
        let slot = match names.iter().position(|n| *n == d.name) {
            Some(i) => i,
            None => {
                names.push(d.name.clone());
                names.len() - 1
            }
        };
        Dim {
            name: d.name.clone(),
            default: d.default.clone().map(AttrValue::Str),
            slot,
        }
    }
}

/// A label value, borrowed from the span or the config.
#[derive(Debug, Clone, Copy)]
pub(super) enum LabelValue<'a> {
    Read(AnyValueRef<'a>),
    Default(&'a AttrValue),
}

impl LabelValue<'_> {
    /// Written into a series key as the collector's `AsString` spells it, allocation-free
    /// for strings, integers and booleans.
    fn write_into(self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        match self {
            LabelValue::Read(AnyValueRef::String(s)) => out.extend_from_slice(s.as_bytes()),
            LabelValue::Read(AnyValueRef::Int(i)) => {
                let _ = write!(out, "{i}");
            }
            LabelValue::Read(AnyValueRef::Bool(b)) => {
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
            LabelValue::Read(other) => {
                if let Some(v) = attr_value(other) {
                    out.extend_from_slice(v.as_label().as_bytes());
                }
            }
            LabelValue::Default(v) => out.extend_from_slice(v.as_label().as_bytes()),
        }
    }

    fn to_attr(self) -> Option<AttrValue> {
        match self {
            LabelValue::Read(v) => attr_value(v),
            LabelValue::Default(v) => Some(v.clone()),
        }
    }
}

/// A span's fields the labels need: its name and trace state (raw bytes, placed by the
/// receive scan; UTF-8 is checked only when a new series is labelled), and the span
/// attribute of every dimension name (into `values`, by slot; scalar values only, as the
/// collector labels only those). The attributes are walked only when some dimension name
/// occurs in the span's bytes at all (exact: an attribute's key is stored verbatim).
pub(super) fn scan_span<'a>(
    span: &'a EncodedSpan,
    s: &Settings,
    values: &mut Vec<Option<AnyValueRef<'a>>>,
) -> (&'a [u8], &'a [u8]) {
    values.clear();
    values.resize(s.dim_names.len(), None);
    let bytes = span.bytes();
    if s.dim_finders.iter().any(|f| f.find(bytes).is_some()) {
        for field in FieldReader::new(bytes) {
            let Ok((SPAN_ATTRIBUTES, FieldValue::Len(b))) = field else {
                continue;
            };
            let Some(slot) = dimension_slot(b, &s.dim_names) else {
                continue;
            };
            let v = AnyValueRef::parse(key_value(b).1);
            if is_scalar(v) {
                values[slot] = Some(v);
            }
        }
    }
    (span.name_bytes(), span.trace_state_bytes())
}

/// Which dimension name an encoded `KeyValue` is for, if any. Most attributes are not: their
/// key is compared where it lies (tag 0x0a, one-byte length) without parsing the value.
fn dimension_slot(kv: &[u8], names: &[String]) -> Option<usize> {
    if let [0x0a, len, rest @ ..] = kv
        && *len < 0x80
    {
        let len = *len as usize;
        return names
            .iter()
            .position(|n| n.len() == len && rest.starts_with(n.as_bytes()));
    }
    let key = key_value(kv).0;
    names.iter().position(|n| n.as_bytes() == key)
}

/// Whether the collector would label the value (strings, booleans, integers, doubles).
pub(super) fn is_scalar(v: AnyValueRef<'_>) -> bool {
    matches!(
        v,
        AnyValueRef::String(_)
            | AnyValueRef::Int(_)
            | AnyValueRef::Double(_)
            | AnyValueRef::Bool(_)
    )
}

/// An encoded `KeyValue`'s key and encoded value. Fast path: it almost always starts with its
/// key (tag 0x0a, one-byte length), and the value follows.
fn key_value(kv: &[u8]) -> (&[u8], &[u8]) {
    if let [0x0a, len, rest @ ..] = kv
        && *len < 0x80
        && let Some(key) = rest.get(..*len as usize)
        && let [0x12, vlen, value @ ..] = &rest[key.len()..]
        && *vlen < 0x80
        && value.len() == *vlen as usize
    {
        return (key, value);
    }
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    for part in FieldReader::new(kv) {
        match part {
            Ok((1, FieldValue::Len(k))) => key = k,
            Ok((2, FieldValue::Len(v))) => value = v,
            _ => {}
        }
    }
    (key, value)
}

/// A dimension's value: the span's attribute, else the event's (for `events`), else the
/// resource's, else the default; `None` leaves the label out.
fn dimension_value<'a>(
    d: &'a Dim,
    f: &SpanFacts<'a>,
    event: Option<&'a [u8]>,
) -> Option<LabelValue<'a>> {
    f.span_values[d.slot]
        .or_else(|| {
            let e = event?;
            tailgate_otlp::find_attribute(e, tailgate_otlp::EVENT_ATTRIBUTES, &d.name)
                .filter(|v| is_scalar(*v))
        })
        .or(f.resource_values[d.slot])
        .map(LabelValue::Read)
        .or(d.default.as_ref().map(LabelValue::Default))
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
pub(super) fn build_key<'a>(
    out: &mut Vec<u8>,
    s: &'a Settings,
    f: &SpanFacts<'a>,
    extra: &'a [Dim],
    event: Option<&'a [u8]>,
) {
    out.clear();
    let intrinsic = [
        f.service.as_bytes(),
        f.name,
        kind_name(f.span.meta.kind).as_bytes(),
        status_name(f.span.meta.status_code.0).as_bytes(),
    ];
    for (value, excluded) in intrinsic.iter().zip(s.exclude) {
        if !excluded {
            out.extend_from_slice(value);
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
        if let Some(v) = dimension_value(d, f, event) {
            out.extend_from_slice(d.name.as_bytes());
            out.push(b':');
            v.write_into(out);
            out.push(KEY_SEPARATOR);
        }
    }
    if s.sampling_method {
        out.push(u8::from(f.adjusted));
    }
}

/// A new series' attributes, in the collector's order.
pub(super) fn build_attributes<'a>(
    s: &'a Settings,
    f: &SpanFacts<'a>,
    extra: &'a [Dim],
    event: Option<&'a [u8]>,
) -> Attributes {
    let mut out: Vec<(String, AttrValue)> = Vec::with_capacity(6 + s.dims.len() + extra.len());
    let name = String::from_utf8_lossy(f.name);
    let intrinsic = [
        ("service.name", f.service),
        ("span.name", &*name),
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
        if let Some(v) = dimension_value(d, f, event).and_then(LabelValue::to_attr) {
            out.push((d.name.clone(), v));
        }
    }
    out.into()
}
