//! Spans kept in their encoded form, with the few fields the pipeline routes and decides on
//! extracted once at scan time.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::wire::{FieldReader, FieldValue, WireError};

/// A 16-byte W3C trace ID. Never all zeros once scanned (the scanner rejects those spans).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID. Never all zeros once scanned.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The low 8 bytes as a big-endian integer: the part W3C requires to be random, used for
    /// probabilistic sampling so every node decides alike.
    pub fn low_u64(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// OTLP `Status.code`: 0 unset, 1 ok, 2 error. Unknown values are kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusCode(pub i32);

impl StatusCode {
    pub const UNSET: StatusCode = StatusCode(0);
    pub const OK: StatusCode = StatusCode(1);
    pub const ERROR: StatusCode = StatusCode(2);
}

/// The fields of a span that routing and decisions need, read once when the request is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanMeta {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` for a root span (absent or all-zero parent ID).
    pub parent_span_id: Option<SpanId>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub status_code: StatusCode,
    /// OTLP `SpanKind` as its enum number (0 unspecified .. 5 consumer).
    pub kind: i32,
    pub flags: u32,
}

impl SpanMeta {
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }

    /// End minus start, zero when the clock went backwards.
    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }
}

/// The resource and instrumentation scope a span was sent under, still encoded. Spans of one
/// `ScopeSpans` share one `Arc`, so regrouping for export is cheap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceScope {
    /// The encoded `Resource` message (empty when the sender sent none).
    pub resource: Bytes,
    pub resource_schema_url: Bytes,
    /// The encoded `InstrumentationScope` message (empty when absent).
    pub scope: Bytes,
    pub scope_schema_url: Bytes,
}

impl ResourceScope {
    /// Bytes this context adds to a request when written once.
    pub fn encoded_len(&self) -> usize {
        self.resource.len()
            + self.resource_schema_url.len()
            + self.scope.len()
            + self.scope_schema_url.len()
    }
}

/// One span: its encoded `Span` message, the extracted [`SpanMeta`], and its shared context.
///
/// **Invariant:** `layout`, when known, describes `bytes`: the bytes change only through
/// [`EncodedSpan::set_bytes`], which forgets it.
#[derive(Debug, Clone)]
pub struct EncodedSpan {
    pub context: Arc<ResourceScope>,
    bytes: Bytes,
    pub meta: SpanMeta,
    layout: SpanLayout,
}

/// Where a span's name and trace state lie in its bytes, as the receive scan found them (it
/// walks every field anyway), so readers need not walk the span again. Offsets and lengths
/// are 16-bit: a span whose name or trace state lies further has no layout and is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanLayout {
    name: (u16, u16),
    trace_state: (u16, u16),
}

impl SpanLayout {
    const UNKNOWN_AT: u16 = u16::MAX;
    pub(crate) const UNKNOWN: SpanLayout = SpanLayout {
        name: (Self::UNKNOWN_AT, 0),
        trace_state: (Self::UNKNOWN_AT, 0),
    };

    /// The layout of `span` whose name and trace state are the subslices given (empty when
    /// absent); unknown when either lies beyond 16-bit offsets.
    pub(crate) fn of(span: &[u8], name: &[u8], trace_state: &[u8]) -> SpanLayout {
        let range = |field: &[u8]| -> Option<(u16, u16)> {
            if field.is_empty() {
                return Some((0, 0));
            }
            let start = (field.as_ptr() as usize).checked_sub(span.as_ptr() as usize)?;
            let start = u16::try_from(start)
                .ok()
                .filter(|s| *s != Self::UNKNOWN_AT)?;
            Some((start, u16::try_from(field.len()).ok()?))
        };
        match (range(name), range(trace_state)) {
            (Some(name), Some(trace_state)) => SpanLayout { name, trace_state },
            _ => SpanLayout::UNKNOWN,
        }
    }

    fn is_known(&self) -> bool {
        self.name.0 != Self::UNKNOWN_AT
    }

    fn slice(bytes: &[u8], (start, len): (u16, u16)) -> &[u8] {
        bytes
            .get(usize::from(start)..usize::from(start) + usize::from(len))
            .unwrap_or_default()
    }
}

/// Spans are equal by content; whether a layout was recorded does not matter.
impl PartialEq for EncodedSpan {
    fn eq(&self, other: &Self) -> bool {
        self.context == other.context && self.bytes == other.bytes && self.meta == other.meta
    }
}

impl EncodedSpan {
    pub fn new(context: Arc<ResourceScope>, bytes: Bytes, meta: SpanMeta) -> EncodedSpan {
        EncodedSpan {
            context,
            bytes,
            meta,
            layout: SpanLayout::UNKNOWN,
        }
    }

    /// A span as the receive scan found it, with its layout.
    pub(crate) fn scanned(
        context: Arc<ResourceScope>,
        bytes: Bytes,
        meta: SpanMeta,
        layout: SpanLayout,
    ) -> EncodedSpan {
        EncodedSpan {
            context,
            bytes,
            meta,
            layout,
        }
    }

    /// The encoded `Span` message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Replaces the encoded message (a processor rewrote it); its meta stays the caller's.
    pub fn set_bytes(&mut self, bytes: Bytes) {
        self.bytes = bytes;
        self.layout = SpanLayout::UNKNOWN;
    }

    /// The raw span name: from the layout when the scan recorded one, else read (the last
    /// occurrence, as protobuf decoders take it).
    pub fn name_bytes(&self) -> &[u8] {
        if self.layout.is_known() {
            return SpanLayout::slice(&self.bytes, self.layout.name);
        }
        last_len_field(&self.bytes, SPAN_NAME)
    }

    /// The raw W3C trace state (empty when absent), as [`EncodedSpan::name_bytes`] finds it.
    pub fn trace_state_bytes(&self) -> &[u8] {
        if self.layout.is_known() {
            return SpanLayout::slice(&self.bytes, self.layout.trace_state);
        }
        last_len_field(&self.bytes, SPAN_TRACE_STATE)
    }

    /// A span attribute by key, read from the encoded span.
    pub fn attribute(&self, key: &str) -> Option<AnyValueRef<'_>> {
        find_attribute(&self.bytes, SPAN_ATTRIBUTES, key)
    }

    /// A resource attribute by key.
    pub fn resource_attribute(&self, key: &str) -> Option<AnyValueRef<'_>> {
        find_attribute(&self.context.resource, RESOURCE_ATTRIBUTES, key)
    }

    /// Span attribute first, then resource attribute: the lookup order sampling policies use.
    pub fn attribute_or_resource(&self, key: &str) -> Option<AnyValueRef<'_>> {
        self.attribute(key).or_else(|| self.resource_attribute(key))
    }

    /// The span name (empty if absent or not UTF-8).
    pub fn name(&self) -> &str {
        std::str::from_utf8(self.name_bytes()).unwrap_or("")
    }

    /// The W3C trace state string (empty if absent or not UTF-8).
    pub fn trace_state(&self) -> &str {
        std::str::from_utf8(self.trace_state_bytes()).unwrap_or("")
    }

    /// The span with its W3C trace state replaced (written where the old one was, or after
    /// the span ID when it had none); every other field keeps its bytes.
    pub fn with_trace_state(&self, trace_state: &str) -> EncodedSpan {
        let mut out = Vec::with_capacity(self.bytes.len() + trace_state.len() + 2);
        let mut written = false;
        let mut reader = FieldReader::new(&self.bytes);
        loop {
            let start = reader.position();
            let Some(Ok((num, _))) = reader.next_field() else {
                break;
            };
            if num == SPAN_TRACE_STATE {
                if !written && !trace_state.is_empty() {
                    crate::wire::put_len_field(&mut out, SPAN_TRACE_STATE, trace_state.as_bytes());
                }
                written = true;
                continue;
            }
            out.extend_from_slice(&self.bytes[start..reader.position()]);
            if num == SPAN_SPAN_ID && !written && !trace_state.is_empty() && !self.has_trace_state()
            {
                crate::wire::put_len_field(&mut out, SPAN_TRACE_STATE, trace_state.as_bytes());
                written = true;
            }
        }
        if !written && !trace_state.is_empty() {
            crate::wire::put_len_field(&mut out, SPAN_TRACE_STATE, trace_state.as_bytes());
        }
        EncodedSpan::new(Arc::clone(&self.context), Bytes::from(out), self.meta)
    }

    fn has_trace_state(&self) -> bool {
        FieldReader::new(&self.bytes)
            .any(|f| matches!(f, Ok((SPAN_TRACE_STATE, FieldValue::Len(_)))))
    }

    /// `service.name` from the resource, if set.
    pub fn service_name(&self) -> Option<&str> {
        match self.resource_attribute("service.name") {
            Some(AnyValueRef::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The span's events, each as its encoded `Span.Event` message.
    pub fn events(&self) -> impl Iterator<Item = &[u8]> {
        FieldReader::new(&self.bytes).filter_map(|f| match f {
            Ok((SPAN_EVENTS, FieldValue::Len(b))) => Some(b),
            _ => None,
        })
    }
}

pub(crate) const SPAN_TRACE_ID: u32 = 1;
pub(crate) const SPAN_SPAN_ID: u32 = 2;
/// `Span.trace_state`.
pub const SPAN_TRACE_STATE: u32 = 3;
pub(crate) const SPAN_PARENT_SPAN_ID: u32 = 4;
/// `Span.name`.
pub const SPAN_NAME: u32 = 5;
pub(crate) const SPAN_KIND: u32 = 6;
pub(crate) const SPAN_START: u32 = 7;
pub(crate) const SPAN_END: u32 = 8;
/// `Span.attributes`.
pub const SPAN_ATTRIBUTES: u32 = 9;
pub(crate) const SPAN_EVENTS: u32 = 11;
pub(crate) const SPAN_LINKS: u32 = 13;
pub(crate) const SPAN_STATUS: u32 = 15;
pub(crate) const SPAN_FLAGS: u32 = 16;
pub(crate) const STATUS_CODE: u32 = 3;
/// `Resource.attributes`.
pub const RESOURCE_ATTRIBUTES: u32 = 1;
/// `Span.Event.attributes`.
pub const EVENT_ATTRIBUTES: u32 = 3;
/// `Span.Event.name`.
pub const EVENT_NAME: u32 = 2;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;

/// An attribute value borrowed from an encoded message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyValueRef<'a> {
    String(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An encoded `ArrayValue`.
    Array(&'a [u8]),
    /// An encoded `KeyValueList`.
    KvList(&'a [u8]),
    /// A value with no field set.
    Empty,
}

impl<'a> AnyValueRef<'a> {
    /// Decodes an encoded `AnyValue`. Malformed or unknown content reads as `Empty`.
    pub fn parse(buf: &'a [u8]) -> AnyValueRef<'a> {
        let mut out = AnyValueRef::Empty;
        for field in FieldReader::new(buf) {
            let Ok((num, value)) = field else {
                return AnyValueRef::Empty;
            };
            out = match (num, value) {
                (1, FieldValue::Len(b)) => match std::str::from_utf8(b) {
                    Ok(s) => AnyValueRef::String(s),
                    Err(_) => AnyValueRef::Empty,
                },
                (2, FieldValue::Varint(v)) => AnyValueRef::Bool(v != 0),
                (3, FieldValue::Varint(v)) => AnyValueRef::Int(v as i64),
                (4, FieldValue::Fixed64(v)) => AnyValueRef::Double(f64::from_bits(v)),
                (5, FieldValue::Len(b)) => AnyValueRef::Array(b),
                (6, FieldValue::Len(b)) => AnyValueRef::KvList(b),
                (7, FieldValue::Len(b)) => AnyValueRef::Bytes(b),
                _ => out,
            };
        }
        out
    }
}

/// Looks up `key` among the `KeyValue` entries stored in field `field` of an encoded message.
/// When a key repeats, the last entry wins, as in a decoded map.
pub fn find_attribute<'a>(message: &'a [u8], field: u32, key: &str) -> Option<AnyValueRef<'a>> {
    let mut found = None;
    let key = key.as_bytes();
    for entry in FieldReader::new(message) {
        let Ok((num, FieldValue::Len(kv))) = entry else {
            continue;
        };
        if num != field {
            continue;
        }
        // Fast path: a KeyValue almost always starts with its key (tag 0x0a, one-byte
        // length). Compare the length, then the bytes, before parsing anything else.
        if let [0x0a, len, rest @ ..] = kv
            && *len < 0x80
        {
            let len = *len as usize;
            if len != key.len() || rest.len() < len || &rest[..len] != key {
                continue;
            }
        }
        let mut k: &[u8] = &[];
        let mut value: &[u8] = &[];
        for part in FieldReader::new(kv) {
            match part {
                Ok((KEY_VALUE_KEY, FieldValue::Len(b))) => k = b,
                Ok((KEY_VALUE_VALUE, FieldValue::Len(b))) => value = b,
                _ => {}
            }
        }
        if k == key {
            found = Some(AnyValueRef::parse(value));
        }
    }
    found
}

/// Calls `f(key bytes, encoded AnyValue)` for each attribute in field `field` of `message`.
pub fn for_each_attribute_raw<'a>(
    message: &'a [u8],
    field: u32,
    mut f: impl FnMut(&'a [u8], &'a [u8]),
) {
    for entry in FieldReader::new(message) {
        let Ok((num, FieldValue::Len(kv))) = entry else {
            continue;
        };
        if num != field {
            continue;
        }
        let mut key: &[u8] = &[];
        let mut value: &[u8] = &[];
        for part in FieldReader::new(kv) {
            match part {
                Ok((KEY_VALUE_KEY, FieldValue::Len(b))) => key = b,
                Ok((KEY_VALUE_VALUE, FieldValue::Len(b))) => value = b,
                _ => {}
            }
        }
        f(key, value);
    }
}

/// Calls `f(key, encoded AnyValue)` for each attribute in field `field` of `message`.
pub fn for_each_attribute<'a>(message: &'a [u8], field: u32, mut f: impl FnMut(&'a str, &'a [u8])) {
    for_each_attribute_raw(message, field, |k, v| {
        if let Ok(k) = std::str::from_utf8(k) {
            f(k, v);
        }
    });
}

/// The last occurrence of a string field, if present and UTF-8.
/// The payload of the last length-delimited `field` of `message`; empty when absent.
fn last_len_field(message: &[u8], field: u32) -> &[u8] {
    let mut out: &[u8] = &[];
    for entry in FieldReader::new(message) {
        if let Ok((num, FieldValue::Len(b))) = entry
            && num == field
        {
            out = b;
        }
    }
    out
}

pub fn string_field(message: &[u8], field: u32) -> Option<&str> {
    let mut out = None;
    for entry in FieldReader::new(message) {
        if let Ok((num, FieldValue::Len(b))) = entry
            && num == field
        {
            out = std::str::from_utf8(b).ok();
        }
    }
    out
}

/// Reads the routing metadata of one encoded span. `Err` for malformed bytes; the caller
/// separately rejects well-formed spans whose IDs are missing.
pub(crate) fn read_meta(span: &[u8]) -> Result<RawMeta<'_>, WireError> {
    let mut m = RawMeta::default();
    let mut fields = FieldReader::new(span);
    while let Some(field) = fields.next() {
        let (num, value) = field?;
        match num {
            // Most of a span's fields: skipped as runs, not dispatched one by one.
            SPAN_ATTRIBUTES | SPAN_EVENTS | SPAN_LINKS => fields.skip_run(num),
            SPAN_TRACE_ID => m.trace_id = Some(value.as_len(num)?),
            SPAN_SPAN_ID => m.span_id = Some(value.as_len(num)?),
            SPAN_PARENT_SPAN_ID => m.parent_span_id = Some(value.as_len(num)?),
            // Read leniently, as before the layout was recorded: a name of another wire type
            // reads as absent rather than failing the request.
            SPAN_NAME => m.name = value.as_len(num).unwrap_or_default(),
            SPAN_TRACE_STATE => m.trace_state = value.as_len(num).unwrap_or_default(),
            SPAN_KIND => m.kind = value.as_varint(num)? as i32,
            SPAN_START => m.start = value.as_fixed64(num)?,
            SPAN_END => m.end = value.as_fixed64(num)?,
            SPAN_FLAGS => m.flags = value.as_fixed32(num)?,
            SPAN_STATUS => {
                for status_field in FieldReader::new(value.as_len(num)?) {
                    let (snum, svalue) = status_field?;
                    if snum == STATUS_CODE {
                        m.status = svalue.as_varint(snum)? as i32;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(m)
}

#[derive(Default)]
pub(crate) struct RawMeta<'a> {
    pub trace_id: Option<&'a [u8]>,
    pub span_id: Option<&'a [u8]>,
    pub parent_span_id: Option<&'a [u8]>,
    pub name: &'a [u8],
    pub trace_state: &'a [u8],
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub flags: u32,
    pub status: i32,
}
