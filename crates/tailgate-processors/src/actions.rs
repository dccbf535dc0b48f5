//! Attribute actions (insert / update / upsert / delete / hash / extract) shared by the
//! `attributes` processor (span attributes) and the `resource` processor (resource attributes).
//!
//! Checking whether any action applies reads the encoded message only; the message is decoded
//! and rewritten only when something changes.

use sha2::{Digest, Sha256};
use tailgate_config::AttributeValue;
use tailgate_config::components::{ActionKind, AttributeAction};
use tailgate_otlp::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use tailgate_otlp::{AnyValueRef, for_each_attribute_raw};

/// A compiled list of actions, applied in order.
#[derive(Debug, Clone)]
pub struct AttributeActions {
    actions: Vec<AttributeAction>,
}

impl AttributeActions {
    pub fn new(actions: &[AttributeAction]) -> Self {
        AttributeActions {
            actions: actions.to_vec(),
        }
    }

    /// Whether applying the actions to the attributes in field `field` of the encoded
    /// `message` could change anything. False means the bytes can be passed on untouched.
    pub fn may_change(&self, message: &[u8], field: u32) -> bool {
        // Actions that apply whatever the attributes are.
        if self.actions.iter().any(|a| a.action == ActionKind::Upsert) {
            return true;
        }
        let mut present = vec![false; self.actions.len()];
        let mut pattern_hit = false;
        let has_patterns = self.actions.iter().any(|a| a.pattern.is_some());
        // One pass over the attributes, comparing key bytes; no allocation per attribute.
        for_each_attribute_raw(message, field, |k, _| {
            for (i, a) in self.actions.iter().enumerate() {
                if a.key.as_deref().is_some_and(|key| key.as_bytes() == k) {
                    present[i] = true;
                }
            }
            if has_patterns && !pattern_hit && let Ok(k) = std::str::from_utf8(k) {
                pattern_hit = self.actions.iter().any(|a| {
                    matches!(a.action, ActionKind::Delete | ActionKind::Hash) && a.pattern.as_ref().is_some_and(|p| p.0.is_match(k))
                });
            }
        });
        self.actions.iter().enumerate().any(|(i, a)| match a.action {
            ActionKind::Insert => !present[i],
            ActionKind::Upsert => true,
            ActionKind::Update | ActionKind::Extract => present[i],
            ActionKind::Delete | ActionKind::Hash => match &a.pattern {
                Some(_) => pattern_hit,
                None => present[i],
            },
        })
    }

    /// Applies every action to a decoded attribute list; true when something changed.
    pub fn apply(&self, attrs: &mut Vec<KeyValue>) -> bool {
        let mut changed = false;
        for a in &self.actions {
            changed |= apply_one(a, attrs);
        }
        changed
    }
}

fn position(attrs: &[KeyValue], key: &str) -> Option<usize> {
    attrs.iter().position(|kv| kv.key == key)
}

fn literal(v: &AttributeValue) -> AnyValue {
    let value = match v {
        AttributeValue::String(s) => Value::StringValue(s.clone()),
        AttributeValue::Bool(b) => Value::BoolValue(*b),
        AttributeValue::Int(i) => Value::IntValue(*i),
        AttributeValue::Double(d) => Value::DoubleValue(*d),
    };
    AnyValue { value: Some(value) }
}

fn new_value(a: &AttributeAction, attrs: &[KeyValue]) -> Option<AnyValue> {
    match (&a.value, &a.from_attribute) {
        (Some(v), _) => Some(literal(v)),
        (None, Some(src)) => position(attrs, src).and_then(|i| attrs[i].value.clone()),
        (None, None) => None,
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

fn apply_one(a: &AttributeAction, attrs: &mut Vec<KeyValue>) -> bool {
    let key = a.key.as_deref().unwrap_or("");
    match a.action {
        ActionKind::Insert => {
            if position(attrs, key).is_some() {
                return false;
            }
            let Some(v) = new_value(a, attrs) else {
                return false;
            };
            attrs.push(kv(key, v));
            true
        }
        ActionKind::Update => {
            let Some(i) = position(attrs, key) else {
                return false;
            };
            let Some(v) = new_value(a, attrs) else {
                return false;
            };
            attrs[i].value = Some(v);
            true
        }
        ActionKind::Upsert => {
            let Some(v) = new_value(a, attrs) else {
                return false;
            };
            match position(attrs, key) {
                Some(i) => attrs[i].value = Some(v),
                None => attrs.push(kv(key, v)),
            }
            true
        }
        ActionKind::Delete => {
            let before = attrs.len();
            match &a.pattern {
                Some(p) => attrs.retain(|kv| !p.0.is_match(&kv.key)),
                None => attrs.retain(|kv| kv.key != key),
            }
            attrs.len() != before
        }
        ActionKind::Hash => {
            let mut changed = false;
            for kv in attrs.iter_mut() {
                let matches = match &a.pattern {
                    Some(p) => p.0.is_match(&kv.key),
                    None => kv.key == key,
                };
                if matches && let Some(v) = &mut kv.value {
                    *v = AnyValue {
                        value: Some(Value::StringValue(sha256_hex(v))),
                    };
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
            let Some(AnyValue {
                value: Some(Value::StringValue(s)),
            }) = attrs[i].value.clone()
            else {
                return false;
            };
            let Some(caps) = pattern.0.captures(&s) else {
                return false;
            };
            let mut changed = false;
            for name in pattern.0.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    let v = AnyValue {
                        value: Some(Value::StringValue(m.as_str().to_string())),
                    };
                    match position(attrs, name) {
                        Some(j) => attrs[j].value = Some(v),
                        None => attrs.push(kv(name, v)),
                    }
                    changed = true;
                }
            }
            changed
        }
    }
}

/// SHA-256 of the value's canonical bytes (strings as UTF-8, numbers big-endian), hex encoded.
fn sha256_hex(v: &AnyValue) -> String {
    let mut h = Sha256::new();
    match &v.value {
        Some(Value::StringValue(s)) => h.update(s.as_bytes()),
        Some(Value::BoolValue(b)) => h.update([u8::from(*b)]),
        Some(Value::IntValue(i)) => h.update(i.to_be_bytes()),
        Some(Value::DoubleValue(d)) => h.update(d.to_bits().to_be_bytes()),
        Some(Value::BytesValue(b)) => h.update(b),
        _ => h.update(format!("{v:?}").as_bytes()),
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
