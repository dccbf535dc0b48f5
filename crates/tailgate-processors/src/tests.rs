//! Goal: each processor does exactly what its config says on encoded spans, and leaves
//! untouched spans byte-identical. Method: build requests with the generated types, scan them,
//! process, decode the result.

use prost::Message;
use serde_json::json;
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tailgate_otlp::proto::common::v1::{KeyValue, any_value::Value};
use tailgate_otlp::proto::trace::v1::{Span, span::Event};
use tailgate_otlp::{EncodedSpan, encode_export_request, scan_export_request};

use crate::SpanProcessor;
use tailgate_test_support::{encoded, kv, string};

use crate::attributes::AttributesProcessor;
use crate::batch::Batcher;
use crate::filter::FilterProcessor;
use crate::resource::ResourceProcessor;

fn s(v: &str) -> Value {
    string(v)
}

fn span(n: u8, attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: format!("span-{n}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: attrs,
        ..Default::default()
    }
}

fn scan(spans: Vec<Span>) -> Vec<EncodedSpan> {
    scan_export_request(&encoded(vec![kv("service.name", s("api"))], spans))
        .unwrap()
        .spans
}

fn decode(spans: &[EncodedSpan]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(encode_export_request(spans)).unwrap()
}

fn attrs_of(span: &EncodedSpan) -> Vec<(String, Value)> {
    Span::decode(span.bytes().clone())
        .unwrap()
        .attributes
        .into_iter()
        .map(|kv| (kv.key, kv.value.unwrap().value.unwrap()))
        .collect()
}

#[test]
fn attributes_redaction_as_in_the_reference_gateway() {
    let cfg = serde_json::from_value(json!({"actions": [
        {"key": "db.statement", "action": "update", "value": "[redacted]"},
        {"key": "http.request.header.authorization", "action": "delete"},
        {"key": "http.request.header.cookie", "action": "delete"},
    ]}))
    .unwrap();
    let p = AttributesProcessor::new(&cfg);
    let mut spans = scan(vec![
        span(
            1,
            vec![
                kv("db.statement", s("SELECT * FROM users WHERE pw='x'")),
                kv("http.request.header.authorization", s("Bearer abc")),
                kv("http.request.header.cookie", s("sid=1")),
                kv("keep", s("me")),
            ],
        ),
        span(2, vec![kv("keep", s("me"))]),
    ]);
    let untouched = spans[1].bytes().clone();
    p.process(&mut spans);
    assert_eq!(
        attrs_of(&spans[0]),
        vec![
            ("db.statement".into(), s("[redacted]")),
            ("keep".into(), s("me"))
        ]
    );
    assert_eq!(
        *spans[1].bytes(),
        untouched,
        "a span no action applies to keeps its bytes"
    );
    assert_eq!(
        spans[1].bytes().as_ptr(),
        untouched.as_ptr(),
        "and is not even copied"
    );
}

#[test]
fn attributes_insert_upsert_hash_extract_and_pattern_delete() {
    let cfg = serde_json::from_value(json!({"actions": [
        {"key": "env", "action": "insert", "value": "prod"},
        {"key": "present", "action": "insert", "value": "ignored"},
        {"key": "copy", "action": "upsert", "from_attribute": "present"},
        {"key": "user.email", "action": "hash"},
        {"key": "http.url", "action": "extract", "pattern": "^https://(?P<host>[^/]+)/(?P<path>.*)$"},
        {"pattern": "^tmp\\.", "action": "delete"},
        {"key": "count", "action": "update", "value": 7},
    ]}))
    .unwrap();
    let p = AttributesProcessor::new(&cfg);
    let mut spans = scan(vec![span(
        1,
        vec![
            kv("present", s("orig")),
            kv("user.email", s("a@b.c")),
            kv("http.url", s("https://shop.example/cart/1")),
            kv("tmp.a", s("x")),
            kv("tmp.b", s("y")),
            kv("count", Value::IntValue(1)),
        ],
    )]);
    p.process(&mut spans);
    let got = attrs_of(&spans[0]);
    let get = |k: &str| got.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("env"), Some(s("prod")));
    assert_eq!(get("present"), Some(s("orig")));
    assert_eq!(get("copy"), Some(s("orig")));
    assert_eq!(
        get("user.email"),
        Some(s(
            "d648b243a3e817eaa3309e00e183483f2867baadf522099f0c2121770536b25a"
        )),
        "SHA-256 of the UTF-8 value"
    );
    assert_eq!(get("host"), Some(s("shop.example")));
    assert_eq!(get("path"), Some(s("cart/1")));
    assert_eq!(get("tmp.a"), None);
    assert_eq!(get("tmp.b"), None);
    assert_eq!(get("count"), Some(Value::IntValue(7)));
}

#[test]
fn resource_actions_rewrite_each_resource_once() {
    let cfg = serde_json::from_value(json!({"attributes": [
        {"key": "deployment.environment", "action": "upsert", "value": "staging"},
        {"key": "service.name", "action": "delete"},
    ]}))
    .unwrap();
    let p = ResourceProcessor::new(&cfg);
    let mut spans = scan(vec![span(1, vec![]), span(2, vec![])]);
    p.process(&mut spans);
    assert!(std::sync::Arc::ptr_eq(&spans[0].context, &spans[1].context));
    let out = decode(&spans);
    assert_eq!(out.resource_spans.len(), 1);
    let res = out.resource_spans[0].resource.clone().unwrap();
    assert_eq!(
        res.attributes,
        vec![kv("deployment.environment", s("staging"))]
    );
}

#[test]
fn filter_drops_health_checks_like_the_reference_agent() {
    let cfg = serde_json::from_value(json!({"error_mode": "ignore", "traces": {"span": [
        "attributes[\"http.route\"] == \"/healthz\"",
        "attributes[\"http.route\"] == \"/readyz\"",
        "attributes[\"http.route\"] == \"/metrics\"",
    ]}}))
    .unwrap();
    let p = FilterProcessor::new(&cfg);
    let mut spans = scan(vec![
        span(1, vec![kv("http.route", s("/healthz"))]),
        span(2, vec![kv("http.route", s("/checkout"))]),
        span(3, vec![kv("http.route", s("/readyz"))]),
        span(4, vec![]),
        span(5, vec![kv("http.route", s("/metrics"))]),
    ]);
    let out = p.process(&mut spans);
    assert_eq!(out.spans_dropped, 3);
    let names: Vec<&str> = spans.iter().map(EncodedSpan::name).collect();
    assert_eq!(names, vec!["span-2", "span-4"]);
}

#[test]
fn filter_spanevent_conditions_drop_only_events() {
    let cfg =
        serde_json::from_value(json!({"traces": {"spanevent": ["name == \"debug\""]}})).unwrap();
    let p = FilterProcessor::new(&cfg);
    let mut sp = span(1, vec![]);
    sp.events = vec![
        Event {
            name: "debug".into(),
            ..Default::default()
        },
        Event {
            name: "exception".into(),
            ..Default::default()
        },
    ];
    let mut spans = scan(vec![sp]);
    let out = p.process(&mut spans);
    assert_eq!(
        out,
        crate::Processed {
            spans_dropped: 0,
            events_dropped: 1
        }
    );
    let events = Span::decode(spans[0].bytes().clone()).unwrap().events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, "exception");
}

#[test]
fn batcher_cuts_at_size_and_splits_at_max() {
    let cfg =
        serde_json::from_value(json!({"send_batch_size": 3, "send_batch_max_size": 4})).unwrap();
    let mut b = Batcher::new(&cfg);
    let spans = scan((1..=10).map(|n| span(n, vec![])).collect());
    assert!(b.push(spans[..2].to_vec()).is_empty());
    let cut = b.push(spans[2..10].to_vec());
    assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4]);
    assert_eq!(b.pending_spans(), 2);
    assert_eq!(b.flush().iter().map(Vec::len).collect::<Vec<_>>(), vec![2]);
    assert_eq!(b.pending_spans(), 0);
}

mod wire_edits {
    //! Goal: wire-level attribute edits mean exactly what the actions say, for any attribute
    //! list. Method: random spans and a fixed mix of actions, compared with a plain model on
    //! decoded (key, value) lists; the output must decode with prost and keep other fields.

    use proptest::prelude::*;

    use super::*;

    fn model(mut attrs: Vec<(String, String)>) -> Vec<(String, String)> {
        // update a -> "A"; delete b; insert c -> "C" if absent; upsert d -> "D"
        if let Some(e) = attrs.iter_mut().find(|(k, _)| k == "a") {
            e.1 = "A".into();
        }
        attrs.retain(|(k, _)| k != "b");
        if !attrs.iter().any(|(k, _)| k == "c") {
            attrs.push(("c".into(), "C".into()));
        }
        match attrs.iter_mut().find(|(k, _)| k == "d") {
            Some(e) => e.1 = "D".into(),
            None => attrs.push(("d".into(), "D".into())),
        }
        attrs
    }

    proptest! {
        #[test]
        fn edits_match_the_model(raw in proptest::collection::vec((0usize..6, "[a-z]{0,8}"), 0..12)) {
            let keys = ["a", "b", "c", "d", "e", "f"];
            // Unique keys, as attribute maps have.
            let mut attrs: Vec<(String, String)> = Vec::new();
            for (k, v) in raw {
                if !attrs.iter().any(|(x, _)| x == keys[k]) {
                    attrs.push((keys[k].to_string(), v));
                }
            }
            let cfg = serde_json::from_value(json!({"actions": [
                {"key": "a", "action": "update", "value": "A"},
                {"key": "b", "action": "delete"},
                {"key": "c", "action": "insert", "value": "C"},
                {"key": "d", "action": "upsert", "value": "D"},
            ]})).unwrap();
            let p = AttributesProcessor::new(&cfg);
            let mut spans = scan(vec![span(7, attrs.iter().map(|(k, v)| kv(k, s(v))).collect())]);
            p.process(&mut spans);
            let out = Span::decode(spans[0].bytes().clone()).expect("edited span decodes");
            let got: Vec<(String, String)> = out
                .attributes
                .into_iter()
                .map(|kv| match kv.value.and_then(|v| v.value) {
                    Some(Value::StringValue(v)) => (kv.key, v),
                    other => panic!("unexpected value {other:?}"),
                })
                .collect();
            prop_assert_eq!(got, model(attrs));
            prop_assert_eq!(out.name, "span-7");
            prop_assert_eq!(out.trace_id, vec![7u8; 16]);
            prop_assert_eq!(spans[0].meta.span_id.0, [7u8; 8]);
        }
    }
}
