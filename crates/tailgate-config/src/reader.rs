//! Reading one document into typed components while collecting every problem with its path.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::field_errors::{PathStep, remove_at, with_suggestion};
use crate::model::{ComponentId, ConfigError};

/// The file being loaded and the problems found so far.
pub(crate) struct Loader<'a> {
    pub(crate) file: &'a str,
    pub(crate) errors: Vec<ConfigError>,
    /// Every component ID written in a section, valid or not, so a reference to a component
    /// that failed to load is not reported a second time as undefined.
    pub(crate) declared: BTreeSet<String>,
}

/// Errors reported for one component before the rest of it is left unread: each error
/// removes the offending key and deserializes again, so a bound keeps a pathological
/// component from looping long.
const FIELD_ERRORS_PER_COMPONENT_MAX: usize = 16;

impl Loader<'_> {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            path: path.into(),
            location: None,
            message: message.into(),
        });
    }

    /// Deserializes `value` into `T`, reporting every failing field with its full path: after
    /// each error the offending key is set aside and the rest deserialized again, so two typos
    /// in one component are both reported in one pass.
    pub(crate) fn typed<T: DeserializeOwned>(&mut self, base: &str, value: Value) -> Option<T> {
        let mut value = if value.is_null() {
            Value::Object(Default::default())
        } else {
            value
        };
        let mut set_aside: Vec<String> = Vec::new();
        for _ in 0..FIELD_ERRORS_PER_COMPONENT_MAX {
            let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return set_aside.is_empty().then_some(t),
                Err(e) => e,
            };
            let steps: Vec<PathStep> = error
                .path()
                .iter()
                .filter_map(PathStep::from_segment)
                .collect();
            let inner = error.path().to_string();
            let message = error.into_inner().to_string();
            // A required field reported missing because an earlier error set it aside is not
            // news.
            if set_aside
                .iter()
                .any(|key| message.contains(&format!("missing field `{key}`")))
            {
                return None;
            }
            let path = if inner == "." || inner.is_empty() {
                base.to_string()
            } else if inner.starts_with('[') {
                // `value` is a list: its entries are indexed, not keyed.
                format!("{base}{inner}")
            } else {
                format!("{base}.{inner}")
            };
            self.error(path, with_suggestion(&message));
            match remove_at(&mut value, &steps) {
                Some(key) => set_aside.push(key),
                None => return None,
            }
        }
        None
    }

    /// The components of section `name` (`receivers`, …), each with its parsed ID.
    pub(crate) fn section(
        &mut self,
        root: &mut serde_json::Map<String, Value>,
        name: &str,
    ) -> Vec<(ComponentId, Value)> {
        let mut out = Vec::new();
        match root.remove(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    self.declared.insert(format!("{name}.{key}"));
                    match ComponentId::parse(&key) {
                        Ok(id) => out.push((id, value)),
                        Err(msg) => self.error(format!("{name}.{key}"), msg),
                    }
                }
            }
            Some(other) => self.error(
                name,
                format!(
                    "expected a mapping of component IDs, found {}",
                    kind_of(&other)
                ),
            ),
        }
        out
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `base.sub`, or `base` when `sub` is empty.
pub(crate) fn join(base: &str, sub: &str) -> String {
    if sub.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{sub}")
    }
}
