//! `${env:NAME}`, `${NAME}` and `${env:NAME:-default}` substitution in string values, as the
//! collector does it: after YAML parsing, so substituted text can never change the structure.
//! A value that is exactly one reference takes the referenced value's YAML type (`${env:PORT}`
//! can fill an integer field); `$$` is a literal `$`. Unset variables without a default
//! become empty strings, like the collector.

use serde_json::Value;

pub(crate) fn substitute(
    value: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        Value::String(s) if s.contains('$') => {
            let whole_ref =
                s.starts_with("${") && s.ends_with('}') && s[2..].find('}') == Some(s.len() - 3);
            let replaced = expand(s, env)?;
            *value = if whole_ref {
                typed_scalar(replaced)
            } else {
                Value::String(replaced)
            };
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| substitute(v, env)),
        Value::Object(map) => map.values_mut().try_for_each(|v| substitute(v, env)),
        _ => Ok(()),
    }
}

fn typed_scalar(text: String) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && text.contains('.')
    {
        return Value::from(f);
    }
    match text.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text),
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
            let reference = &after[..end];
            let reference = reference.strip_prefix("env:").unwrap_or(reference);
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "invalid variable reference `${{{}}}` in `{s}`",
                    &after[..end]
                ));
            }
            match (env(name), default) {
                (Some(v), _) if !v.is_empty() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (v, None) => out.push_str(&v.unwrap_or_default()),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("tempo".into()),
            "PORT" => Some("4317".into()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        let mut v = serde_json::json!({
            "a": "${env:HOST}:${PORT}", "b": "${env:PORT}", "c": "${env:MISSING:-fallback}",
            "d": "$$literal", "e": "${MISSING}", "f": ["${HOST}"]
        });
        substitute(&mut v, &env).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": "tempo:4317", "b": 4317, "c": "fallback", "d": "$literal", "e": "", "f": ["tempo"]})
        );
    }

    #[test]
    fn bad_reference() {
        let mut v = serde_json::json!("${env:bad name}");
        assert!(
            substitute(&mut v, &env)
                .unwrap_err()
                .contains("invalid variable reference")
        );
    }
}
