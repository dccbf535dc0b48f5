use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use crate::proto::collector::trace::v1::ExportTraceServiceRequest;
use crate::proto::common::v1::{InstrumentationScope, any_value};
use crate::proto::resource::v1::Resource;
use crate::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use crate::*;
use tailgate_test_support::kv;

fn span(trace: u8, span: u8, parent: Option<u8>, status: i32) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("op-{span}"),
        kind: 2,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 5_000,
        attributes: vec![
            kv(
                "http.route",
                any_value::Value::StringValue("/checkout".into()),
            ),
            kv("retries", any_value::Value::IntValue(-3)),
            kv("ratio", any_value::Value::DoubleValue(0.5)),
            kv("cached", any_value::Value::BoolValue(true)),
        ],
        status: Some(Status {
            message: String::new(),
            code: status,
        }),
        flags: 0x301,
        ..Default::default()
    }
}

fn request(spans_per_scope: Vec<Vec<Span>>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("checkout".into()),
                )],
                ..Default::default()
            }),
            scope_spans: spans_per_scope
                .into_iter()
                .enumerate()
                .map(|(i, spans)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: format!("scope-{i}"),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        }],
    }
}

#[test]
fn scan_extracts_meta_and_attributes() {
    let body = Bytes::from(
        request(vec![vec![span(1, 1, None, 2), span(1, 2, Some(1), 0)]]).encode_to_vec(),
    );
    let scanned = scan_export_request(&body).unwrap();
    assert_eq!(scanned.rejected_spans, 0);
    assert_eq!(scanned.spans.len(), 2);
    let root = &scanned.spans[0];
    assert_eq!(root.meta.trace_id, TraceId([1; 16]));
    assert_eq!(root.meta.span_id, SpanId([1; 8]));
    assert!(root.meta.is_root());
    assert_eq!(root.meta.status_code, StatusCode::ERROR);
    assert_eq!(root.meta.duration_nanos(), 4_000);
    assert_eq!(root.meta.kind, 2);
    assert_eq!(root.meta.flags, 0x301);
    assert_eq!(root.name(), "op-1");
    assert_eq!(
        root.attribute("http.route"),
        Some(AnyValueRef::String("/checkout"))
    );
    assert_eq!(root.attribute("retries"), Some(AnyValueRef::Int(-3)));
    assert_eq!(root.attribute("ratio"), Some(AnyValueRef::Double(0.5)));
    assert_eq!(root.attribute("cached"), Some(AnyValueRef::Bool(true)));
    assert_eq!(root.attribute("missing"), None);
    assert_eq!(root.service_name(), Some("checkout"));
    assert_eq!(
        root.attribute_or_resource("service.name"),
        Some(AnyValueRef::String("checkout"))
    );
    let child = &scanned.spans[1];
    assert_eq!(child.meta.parent_span_id, Some(SpanId([1; 8])));
    assert!(std::sync::Arc::ptr_eq(&root.context, &child.context));
}

#[test]
fn encode_round_trips_through_prost() {
    let original = request(vec![
        vec![span(1, 1, None, 0), span(2, 2, None, 0)],
        vec![span(3, 3, Some(9), 1)],
    ]);
    let body = Bytes::from(original.encode_to_vec());
    let scanned = scan_export_request(&body).unwrap();
    let rebuilt = encode_export_request(&scanned.spans);
    let decoded = ExportTraceServiceRequest::decode(rebuilt).unwrap();
    assert_eq!(decoded, original);
}

#[test]
fn encode_merges_equal_contexts_from_separate_requests() {
    let a = Bytes::from(request(vec![vec![span(1, 1, None, 0)]]).encode_to_vec());
    let b = Bytes::from(request(vec![vec![span(2, 2, None, 0)]]).encode_to_vec());
    let mut spans = scan_export_request(&a).unwrap().spans;
    spans.extend(scan_export_request(&b).unwrap().spans);
    let decoded = ExportTraceServiceRequest::decode(encode_export_request(&spans)).unwrap();
    assert_eq!(decoded.resource_spans.len(), 1);
    assert_eq!(decoded.resource_spans[0].scope_spans.len(), 1);
    assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 2);
}

#[test]
fn bad_ids_are_rejected_one_by_one() {
    let mut zero_trace = span(1, 1, None, 0);
    zero_trace.trace_id = vec![0; 16];
    let mut missing_span = span(2, 2, None, 0);
    missing_span.span_id.clear();
    let mut short_trace = span(3, 3, None, 0);
    short_trace.trace_id = vec![3; 8];
    let good = span(4, 4, None, 0);
    let body = Bytes::from(
        request(vec![vec![zero_trace, missing_span, short_trace, good]]).encode_to_vec(),
    );
    let scanned = scan_export_request(&body).unwrap();
    assert_eq!(scanned.spans.len(), 1);
    assert_eq!(scanned.spans[0].meta.trace_id, TraceId([4; 16]));
    assert_eq!(scanned.rejected_spans, 3);
    assert_eq!(
        scanned.rejection_message.as_deref(),
        Some(
            "3 span(s) rejected: resource_spans[0].scope_spans[0].spans[0]: trace_id is all zeros; \
             resource_spans[0].scope_spans[0].spans[1]: span_id is missing; \
             resource_spans[0].scope_spans[0].spans[2]: trace_id has 8 bytes, expected 16"
        )
    );
}

#[test]
fn garbage_is_a_scan_error_with_a_path() {
    let body = Bytes::from_static(b"\x0a\x05\x12\x10garbage-garbage");
    let err = scan_export_request(&body).unwrap_err();
    assert!(err.path.starts_with("resource_spans[0]"), "{err}");
}

#[test]
fn json_round_trip() {
    let original = request(vec![vec![span(7, 7, None, 2)]]);
    let json = json::request_to_json(&original.encode_to_vec()).unwrap();
    assert!(
        json.contains("\"traceId\":\"07070707070707070707070707070707\""),
        "{json}"
    );
    let back = json::request_from_json(json.as_bytes()).unwrap();
    assert_eq!(ExportTraceServiceRequest::decode(back).unwrap(), original);
}

#[test]
fn json_errors_name_the_problem() {
    let err = json::request_from_json(b"{\"resourceSpans\": 5}").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid OTLP/JSON trace request"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn the_scanned_layout_reads_what_a_walk_reads_and_a_rewrite_forgets_it(
        name in "[a-z /{}]{0,40}",
        trace_state in proptest::option::of("[a-z0-9=:,]{1,30}"),
        padding in 0usize..70_000,
    ) {
        // Names anywhere in 16-bit offsets, and past them (a long trace state first).
        let mut s = span(1, 2, None, 0);
        s.name = name.clone();
        s.trace_state = match &trace_state {
            Some(ts) if padding > 0 => format!("{ts}{}", "x".repeat(padding)),
            Some(ts) => ts.clone(),
            None => String::new(),
        };
        let body = Bytes::from(request(vec![vec![s.clone()]]).encode_to_vec());
        let scanned = scan_export_request(&body).unwrap().spans.remove(0);
        prop_assert_eq!(scanned.name(), name.as_str());
        prop_assert_eq!(scanned.trace_state(), s.trace_state.as_str());
        // Rewritten: the old layout must not be read against the new bytes.
        let mut rewritten = scanned.clone();
        let mut other = s.clone();
        other.trace_state = String::new();
        other.name = format!("renamed-{name}");
        rewritten.set_bytes(Bytes::from(other.encode_to_vec()));
        prop_assert_eq!(rewritten.name(), other.name.as_str());
        prop_assert_eq!(rewritten.trace_state(), "");
        let with_state = scanned.with_trace_state("ot=th:8");
        prop_assert_eq!(with_state.trace_state(), "ot=th:8");
        prop_assert_eq!(with_state.name(), name.as_str());
    }

    #[test]
    fn scanning_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = scan_export_request(&Bytes::from(data));
    }

    #[test]
    fn scan_then_encode_preserves_every_valid_span(
        ids in proptest::collection::vec((1u8..=255, 1u8..=255, proptest::option::of(1u8..=255), 0i32..3), 1..40),
        split in 0usize..40,
    ) {
        let spans: Vec<Span> = ids.iter().map(|&(t, s, p, st)| span(t, s, p, st)).collect();
        let split = split.min(spans.len());
        let (a, b) = spans.split_at(split);
        let original = request(vec![a.to_vec(), b.to_vec()]);
        let body = Bytes::from(original.encode_to_vec());
        let scanned = scan_export_request(&body).unwrap();
        prop_assert_eq!(scanned.spans.len(), spans.len());
        let decoded = ExportTraceServiceRequest::decode(encode_export_request(&scanned.spans)).unwrap();
        let flat: Vec<Span> = decoded.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans).collect();
        prop_assert_eq!(flat, spans);
    }
}

#[test]
fn a_rewritten_trace_state_replaces_the_old_one_and_nothing_else() {
    let mut with_state = span(1, 1, None, 0);
    with_state.trace_state = "vendor=x".into();
    let body = request(vec![vec![with_state.clone(), span(1, 2, Some(1), 0)]]).encode_to_vec();
    let scanned = scan_export_request(&Bytes::from(body)).unwrap();
    for (s, original) in scanned
        .spans
        .iter()
        .zip([with_state, span(1, 2, Some(1), 0)])
    {
        let rewritten = s.with_trace_state("ot=th:8,vendor=x");
        assert_eq!(rewritten.trace_state(), "ot=th:8,vendor=x");
        assert_eq!(rewritten.meta, s.meta);
        let decoded = Span::decode(rewritten.bytes().clone()).unwrap();
        assert_eq!(
            decoded,
            Span {
                trace_state: "ot=th:8,vendor=x".into(),
                ..original
            }
        );
        assert_eq!(rewritten.with_trace_state("").trace_state(), "");
    }
}

/// A `ScopeSpans` written fields-last-first: spans, then scope, then schema URL (valid
/// protobuf; encoders usually write the scope first).
fn scope_spans_scope_after_spans(spans: &[Span], scope: &InstrumentationScope) -> Vec<u8> {
    let mut ss = Vec::new();
    for s in spans {
        prost::encoding::message::encode(2, s, &mut ss);
    }
    prost::encoding::message::encode(1, scope, &mut ss);
    prost::encoding::string::encode(
        3,
        &"https://opentelemetry.io/schemas/1.26.0".to_string(),
        &mut ss,
    );
    let mut rs = Vec::new();
    prost::encoding::bytes::encode(2, &ss, &mut rs);
    let mut body = Vec::new();
    prost::encoding::bytes::encode(1, &rs, &mut body);
    body
}

#[test]
fn a_scope_written_after_its_spans_still_reaches_every_span() {
    let scope = InstrumentationScope {
        name: "late-scope".into(),
        version: "1.0".into(),
        ..Default::default()
    };
    let body = Bytes::from(scope_spans_scope_after_spans(
        &[
            span(1, 1, None, 0),
            span(1, 2, Some(1), 0),
            span(2, 3, None, 2),
        ],
        &scope,
    ));
    let scanned = scan_export_request(&body).unwrap();
    assert_eq!(scanned.spans.len(), 3);
    for s in &scanned.spans {
        assert_eq!(
            InstrumentationScope::decode(s.context.scope.clone()).unwrap(),
            scope
        );
        assert_eq!(
            &s.context.scope_schema_url[..],
            b"https://opentelemetry.io/schemas/1.26.0"
        );
    }
    // Re-encoded, they come back under that scope.
    let back = ExportTraceServiceRequest::decode(encode_export_request(&scanned.spans)).unwrap();
    let scopes = &back.resource_spans[0].scope_spans;
    assert_eq!(scopes.len(), 1);
    assert_eq!(scopes[0].scope.as_ref(), Some(&scope));
    assert_eq!(scopes[0].spans.len(), 3);
}

#[test]
fn a_truncated_attribute_inside_a_run_is_a_scan_error_naming_the_span() {
    // The span's third attribute (`ratio`, skipped as part of the attributes' run) is cut
    // short, and every enclosing length says so: the run must stop and the read report it.
    let mut bad_span = span(1, 1, None, 0).encode_to_vec();
    let key_at = bad_span
        .windows(5)
        .position(|w| w == b"ratio")
        .expect("the third attribute's key");
    bad_span.truncate(key_at + 2);
    let mut ss = Vec::new();
    prost::encoding::bytes::encode(2, &bad_span, &mut ss);
    let mut rs = Vec::new();
    prost::encoding::bytes::encode(2, &ss, &mut rs);
    let mut body = Vec::new();
    prost::encoding::bytes::encode(1, &rs, &mut body);
    let err = scan_export_request(&Bytes::from(body)).unwrap_err();
    assert_eq!(err.path, "resource_spans[0].scope_spans[0].spans[0]");
    assert!(
        matches!(err.source, wire::WireError::Truncated { .. }),
        "{err}"
    );
}
