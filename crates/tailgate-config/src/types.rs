//! Value types shared by component configs: Go-style durations, sizes, regexes, OTTL conditions.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};
use tailgate_ottl::{Condition, Scope};

/// A duration written the Go way (`"200ms"`, `"5s"`, `"1m30s"`), as collector configs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub const fn from_secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        GoDuration(Duration::from_millis(ms))
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// Parses `"1h2m3.5s"`-style durations: a sequence of number+unit with units ns, us, µs, ms, s, m, h.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "invalid duration `{text}`: expected a number before `{rest}`"
            ));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration `{text}`: missing unit (use ns, us, ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration `{text}`: unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total_nanos += number * scale;
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"200ms\", \"5s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v).map(GoDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                // The collector reads bare integers as nanoseconds.
                Ok(GoDuration(Duration::from_nanos(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                u64::try_from(v)
                    .map(|v| GoDuration(Duration::from_nanos(v)))
                    .map_err(|_| E::custom("negative duration"))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A regular expression compiled when the config loads, so a bad pattern is a config error.
#[derive(Debug, Clone)]
pub struct ConfigRegex(pub regex::Regex);

impl<'de> Deserialize<'de> for ConfigRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s)
            .map(ConfigRegex)
            .map_err(|e| de::Error::custom(format!("invalid regex `{s}`: {e}")))
    }
}

/// An OTTL condition in the span context, parsed at load.
#[derive(Debug, Clone)]
pub struct SpanCondition(pub Condition);

/// An OTTL condition in the span event context, parsed at load.
#[derive(Debug, Clone)]
pub struct SpanEventCondition(pub Condition);

impl<'de> Deserialize<'de> for SpanCondition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Condition::parse(&s, Scope::Span)
            .map(SpanCondition)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for SpanEventCondition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Condition::parse(&s, Scope::SpanEvent)
            .map(SpanEventCondition)
            .map_err(de::Error::custom)
    }
}

/// Deserializes a section that is enabled by its mere presence (`grpc:` with no body).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// A scalar attribute value as written in YAML (`value:` of attribute actions).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl<'de> Deserialize<'de> for AttributeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(AttributeValue::String(s)),
            serde_json::Value::Bool(b) => Ok(AttributeValue::Bool(b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(AttributeValue::Int(i)),
                None => Ok(AttributeValue::Double(n.as_f64().unwrap_or(f64::NAN))),
            },
            other => Err(de::Error::custom(format!(
                "expected a string, number or boolean, found {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_go_duration("200ms").unwrap(),
            Duration::from_millis(200)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("5").unwrap_err().contains("missing unit"));
        assert!(
            parse_go_duration("5 days")
                .unwrap_err()
                .contains("unknown unit")
        );
    }
}
