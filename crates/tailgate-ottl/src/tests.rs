use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::*;

#[derive(Default)]
struct FakeSpan {
    name: String,
    kind: i64,
    status: i64,
    start: i64,
    end: i64,
    attrs: BTreeMap<String, Value<'static>>,
    resource: BTreeMap<String, Value<'static>>,
}

impl Context for FakeSpan {
    fn get(&self, path: &Path) -> Value<'_> {
        match path {
            Path::Name => Value::Str(Cow::Borrowed(&self.name)),
            Path::Kind => Value::Int(self.kind),
            Path::StatusCode => Value::Int(self.status),
            Path::StartTimeUnixNano => Value::Int(self.start),
            Path::EndTimeUnixNano => Value::Int(self.end),
            Path::Attribute(k) => self.attrs.get(k).cloned().unwrap_or(Value::Nil),
            Path::ResourceAttribute(k) => self.resource.get(k).cloned().unwrap_or(Value::Nil),
            _ => Value::Nil,
        }
    }
}

fn span() -> FakeSpan {
    let mut s = FakeSpan {
        name: "GET /healthz".into(),
        kind: 2,
        status: 2,
        start: 1_000,
        end: 3_000_001_000,
        ..Default::default()
    };
    s.attrs
        .insert("http.route".into(), Value::Str("/healthz".into()));
    s.attrs.insert("http.status_code".into(), Value::Int(503));
    s.attrs.insert("sampled".into(), Value::Bool(true));
    s.resource
        .insert("service.name".into(), Value::Str("api".into()));
    s
}

fn check(src: &str) -> bool {
    Condition::parse(src, Scope::Span)
        .unwrap_or_else(|e| panic!("{e}"))
        .eval(&span())
}

#[test]
fn comparison_table() {
    let cases: &[(&str, bool)] = &[
        (r#"attributes["http.route"] == "/healthz""#, true),
        (r#"attributes["http.route"] != "/healthz""#, false),
        (r#"attributes["http.route"] == "/readyz""#, false),
        (r#"attributes["missing"] == "/healthz""#, false),
        (r#"attributes["missing"] != "/healthz""#, true),
        (r#"attributes["missing"] == nil"#, true),
        (r#"attributes["http.route"] == nil"#, false),
        (r#"attributes["http.status_code"] >= 500"#, true),
        (r#"attributes["http.status_code"] < 500"#, false),
        (r#"attributes["http.status_code"] > 502.5"#, true),
        (r#"attributes["http.status_code"] == "503""#, false),
        (r#"attributes["sampled"] == true"#, true),
        (r#"attributes["sampled"] > false"#, false),
        (r#"resource.attributes["service.name"] == "api""#, true),
        (r#"name == "GET /healthz""#, true),
        (r"kind == SPAN_KIND_SERVER", true),
        (r"kind == 3", false),
        (r"status.code == STATUS_CODE_ERROR", true),
        (
            r"end_time_unix_nano - start_time_unix_nano > 2000000000",
            true,
        ),
        (
            r"end_time_unix_nano - start_time_unix_nano < 2000000000",
            false,
        ),
        (r#"name < "Z""#, true),
    ];
    for (src, want) in cases {
        assert_eq!(check(src), *want, "{src}");
    }
}

#[test]
fn boolean_operators_and_precedence() {
    assert!(check(r#"name == "x" or kind == 2 and status.code == 2"#));
    assert!(!check(r#"(name == "x" or kind == 2) and status.code == 1"#));
    assert!(check(r#"not name == "x""#));
    assert!(!check(r"not (kind == 2)"));
    assert!(check("true"));
    assert!(!check("false or not true"));
}

#[test]
fn is_match_converter() {
    assert!(check(
        r#"IsMatch(attributes["http.route"], "^/(healthz|readyz)$")"#
    ));
    assert!(!check(r#"IsMatch(attributes["missing"], ".*")"#));
    assert!(check(r#"IsMatch(attributes["http.status_code"], "^5")"#));
}

#[test]
fn errors_name_what_is_allowed() {
    let cases: &[(&str, &str)] = &[
        (
            r#"attributes["a"] = "b""#,
            "invalid OTTL condition `attributes[\"a\"] = \"b\"` at column 17: unexpected `=`; comparisons are == != < > <= >=",
        ),
        (
            r#"span.name == "x""#,
            "invalid OTTL condition `span.name == \"x\"` at column 1: unsupported path `span.name` in the span context; allowed: name, kind, status.code, trace_state, start_time_unix_nano, end_time_unix_nano, attributes[\"key\"], resource.attributes[\"key\"]",
        ),
        (
            r#"Concat(name, "x") == "y""#,
            "invalid OTTL condition `Concat(name, \"x\") == \"y\"` at column 1: unsupported function or enum `Concat`; supported: IsMatch, SPAN_KIND_*, STATUS_CODE_*",
        ),
        (
            r#"name == "x" and"#,
            "invalid OTTL condition `name == \"x\" and` at column 16: expected a condition, found the end",
        ),
        (
            r"name",
            "invalid OTTL condition `name` at column 5: expected a comparison (== != < > <= >=), found the end",
        ),
        (
            r#"name == "unterminated"#,
            "invalid OTTL condition `name == \"unterminated` at column 9: unterminated string",
        ),
        (
            r#"name == "x" name"#,
            "invalid OTTL condition `name == \"x\" name` at column 13: unexpected `name` after the end of the condition",
        ),
    ];
    for (src, want) in cases {
        let err = Condition::parse(src, Scope::Span).unwrap_err();
        assert_eq!(err.to_string(), *want);
    }
}

#[test]
fn spanevent_scope_has_its_own_paths() {
    let c = Condition::parse(
        r#"name == "exception" and span.attributes["x"] == nil"#,
        Scope::SpanEvent,
    )
    .unwrap();
    assert_eq!(c.attribute_keys(), vec!["x"]);
    assert!(Condition::parse("status.code == 2", Scope::SpanEvent).is_err());
}
