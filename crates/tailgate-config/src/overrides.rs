//! `--set KEY=VALUE`, as the collector's flag: keys joined by `::`, the value read as YAML,
//! mappings created where missing; applied to the parsed document before it is typed, so an
//! override is checked like the file.

use serde_json::Value;

use crate::reader::kind_of;

/// Sets `value` at the `::`-joined `key` of `root`, creating mappings on the way.
pub(crate) fn apply_override(
    root: &mut serde_json::Map<String, Value>,
    set: &str,
) -> Result<(), String> {
    let (key, raw) = set.split_once('=').ok_or_else(|| {
        format!("`{set}`: expected KEY=VALUE, e.g. processors::batch::timeout=2s")
    })?;
    let value: Value = if raw.is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(raw).map_err(|e| format!("`{set}`: the value is not YAML: {e}"))?
    };
    let steps: Vec<&str> = key.split("::").collect();
    if steps.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "`{set}`: empty key segment (keys are joined by `::`)"
        ));
    }
    let (last, parents) = steps
        .split_last()
        .expect("split gives one segment at least");
    let mut at = root;
    for step in parents {
        let next = at
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
        if next.is_null() {
            *next = Value::Object(Default::default());
        }
        at = match next {
            Value::Object(m) => m,
            other => {
                return Err(format!(
                    "`{set}`: `{step}` is {}, not a mapping",
                    kind_of(other)
                ));
            }
        };
    }
    at.insert(last.to_string(), value);
    Ok(())
}
