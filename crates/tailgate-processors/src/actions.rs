//! Attribute actions (insert / update / upsert / delete / hash / extract) shared by the
//! `attributes` processor (span attributes) and the `resource` processor (resource attributes).
//!
//! Actions edit the encoded message directly: attributes are read as key bytes and encoded
//! values, changed in place, and written back only when something changed. No span is ever
//! decoded into the generated types here.

use std::borrow::Cow;

use sha2::{Digest, Sha256};
use tailgate_config::AttributeValue;
use tailgate_config::components::{ActionKind, AttributeAction};
use tailgate_otlp::wire::{
    FieldReader, WIRE_FIXED64, WIRE_VARINT, put_key, put_len_field, put_varint,
};
use tailgate_otlp::{AnyValueRef, for_each_attribute_raw};

/// A compiled list of actions, applied in order.
#[derive(Debug, Clone)]
pub struct AttributeActions {
    actions: Vec<AttributeAction>,
}

/// One attribute while actions run: key and encoded `AnyValue`, borrowed until changed.
struct Attr<'a> {
    key: Cow<'a, [u8]>,
    value: Cow<'a, [u8]>,
}

impl AttributeActions {
    pub fn new(actions: &[AttributeAction]) -> Self {
        AttributeActions {
            actions: actions.to_vec(),
        }
    }

    /// Applies the actions to the `KeyValue` list in field `field` of the encoded `message`,
    /// editing the wire format directly. Returns the new message, or `None` when nothing
    /// changed (the caller keeps the original bytes). Other fields are copied as they are;
    /// the attributes are written after them, in their resulting order.
    pub fn apply_encoded(&self, message: &[u8], field: u32) -> Option<Vec<u8>> {
        let mut attrs: Vec<Attr<'_>> = Vec::new();
        for_each_attribute_raw(message, field, |k, v| {
            attrs.push(Attr {
                key: Cow::Borrowed(k),
                value: Cow::Borrowed(v),
            });
        });
        let mut changed = false;
        for a in &self.actions {
            changed |= apply_one(a, &mut attrs);
        }
        if !changed {
            return None;
        }
        let mut out = Vec::with_capacity(message.len() + 64);
        let mut reader = FieldReader::new(message);
        loop {
            let start = reader.position();
            let Some(Ok((num, _))) = reader.next_field() else {
                break;
            };
            if num != field {
                out.extend_from_slice(&message[start..reader.position()]);
            }
        }
        let mut kv = Vec::new();
        for a in &attrs {
            kv.clear();
            put_len_field(&mut kv, 1, &a.key);
            put_len_field(&mut kv, 2, &a.value);
            put_len_field(&mut out, field, &kv);
        }
        Some(out)
    }
}

fn position(attrs: &[Attr<'_>], key: &[u8]) -> Option<usize> {
    attrs.iter().position(|a| &*a.key == key)
}

/// Encodes a literal as an `AnyValue`.
fn encode_literal(v: &AttributeValue) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        AttributeValue::String(s) => put_len_field(&mut out, 1, s.as_bytes()),
        AttributeValue::Bool(b) => {
            put_key(&mut out, 2, WIRE_VARINT);
            put_varint(&mut out, u64::from(*b));
        }
        AttributeValue::Int(i) => {
            put_key(&mut out, 3, WIRE_VARINT);
            put_varint(&mut out, *i as u64);
        }
        AttributeValue::Double(d) => {
            put_key(&mut out, 4, WIRE_FIXED64);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
        }
    }
    out
}

fn string_value(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_len_field(&mut out, 1, s.as_bytes());
    out
}

fn new_value<'a>(a: &AttributeAction, attrs: &[Attr<'a>]) -> Option<Cow<'a, [u8]>> {
    match (&a.value, &a.from_attribute) {
        (Some(v), _) => Some(Cow::Owned(encode_literal(v))),
        (None, Some(src)) => position(attrs, src.as_bytes()).map(|i| attrs[i].value.clone()),
        (None, None) => None,
    }
}

fn key_matches(a: &AttributeAction, key: &[u8]) -> bool {
    match &a.pattern {
        Some(p) => std::str::from_utf8(key).is_ok_and(|k| p.0.is_match(k)),
        None => a.key.as_deref().is_some_and(|k| k.as_bytes() == key),
    }
}

fn apply_one<'a>(a: &AttributeAction, attrs: &mut Vec<Attr<'a>>) -> bool {
    let key = a.key.as_deref().unwrap_or("").as_bytes();
    match a.action {
        ActionKind::Insert => {
            if position(attrs, key).is_some() {
                return false;
            }
            let Some(v) = new_value(a, attrs) else {
                return false;
            };
            attrs.push(Attr {
                key: Cow::Owned(key.to_vec()),
                value: v,
            });
            true
        }
        ActionKind::Update => {
            let Some(i) = position(attrs, key) else {
                return false;
            };
            let Some(v) = new_value(a, attrs) else {
                return false;
            };
            attrs[i].value = v;
            true
        }
        ActionKind::Upsert => {
            let Some(v) = new_value(a, attrs) else {
                return false;
            };
            match position(attrs, key) {
                Some(i) => attrs[i].value = v,
                None => attrs.push(Attr {
                    key: Cow::Owned(key.to_vec()),
                    value: v,
                }),
            }
            true
        }
        ActionKind::Delete => {
            let before = attrs.len();
            attrs.retain(|attr| !key_matches(a, &attr.key));
            attrs.len() != before
        }
        ActionKind::Hash => {
            let mut changed = false;
            for attr in attrs.iter_mut() {
                if key_matches(a, &attr.key) {
                    attr.value = Cow::Owned(string_value(&sha256_hex(&attr.value)));
                    changed = true;
                }
            }
            changed
        }
        ActionKind::Extract => {
            let Some(pattern) = &a.pattern else {
                return false;
            };
            let Some(i) = position(attrs, key) else {
                return false;
            };
            let AnyValueRef::String(s) = AnyValueRef::parse(&attrs[i].value) else {
                return false;
            };
            let Some(caps) = pattern.0.captures(s) else {
                return false;
            };
            let found: Vec<(String, String)> = pattern
                .0
                .capture_names()
                .flatten()
                .filter_map(|name| {
                    caps.name(name)
                        .map(|m| (name.to_string(), m.as_str().to_string()))
                })
                .collect();
            for (name, value) in &found {
                let v = Cow::Owned(string_value(value));
                match position(attrs, name.as_bytes()) {
                    Some(j) => attrs[j].value = v,
                    None => attrs.push(Attr {
                        key: Cow::Owned(name.as_bytes().to_vec()),
                        value: v,
                    }),
                }
            }
            !found.is_empty()
        }
    }
}

/// SHA-256 of the value's canonical bytes (strings as UTF-8, numbers big-endian), hex encoded.
fn sha256_hex(encoded: &[u8]) -> String {
    let mut h = Sha256::new();
    match AnyValueRef::parse(encoded) {
        AnyValueRef::String(s) => h.update(s.as_bytes()),
        AnyValueRef::Bool(b) => h.update([u8::from(b)]),
        AnyValueRef::Int(i) => h.update(i.to_be_bytes()),
        AnyValueRef::Double(d) => h.update(d.to_bits().to_be_bytes()),
        AnyValueRef::Bytes(b) => h.update(b),
        AnyValueRef::Array(b) | AnyValueRef::KvList(b) => h.update(b),
        AnyValueRef::Empty => h.update(encoded),
    }
    hex::encode(h.finalize())
}

/// Converts a borrowed wire value to the OTTL value model.
pub fn ottl_value<'a>(v: Option<AnyValueRef<'a>>) -> tailgate_ottl::Value<'a> {
    use std::borrow::Cow;
    use tailgate_ottl::Value as V;
    match v {
        None | Some(AnyValueRef::Empty) => V::Nil,
        Some(AnyValueRef::String(s)) => V::Str(Cow::Borrowed(s)),
        Some(AnyValueRef::Bool(b)) => V::Bool(b),
        Some(AnyValueRef::Int(i)) => V::Int(i),
        Some(AnyValueRef::Double(d)) => V::Float(d),
        Some(AnyValueRef::Bytes(b)) => V::Bytes(Cow::Borrowed(b)),
        // Composite values compare as their encoded bytes: equal only to identical values.
        Some(AnyValueRef::Array(b) | AnyValueRef::KvList(b)) => V::Bytes(Cow::Borrowed(b)),
    }
}
