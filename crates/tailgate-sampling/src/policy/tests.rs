//! Goal: every policy votes as the collector's does, and votes combine as the collector
//! documents. Method: small traces built with the generated types, policies from config JSON.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use serde_json::json;
use tailgate_config::sampling::Policy as PolicyConfig;
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tailgate_otlp::proto::common::v1::{KeyValue, any_value::Value};
use tailgate_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
use tailgate_otlp::{EncodedSpan, TraceId, scan_export_request};

use tailgate_test_support::{encoded, kv, status};

use super::compiled::CompiledPolicy;
use super::*;

/// A trace: spans `(duration_ms, status, attributes)`; the first span is the root.
fn trace(
    id: u8,
    spans: Vec<(u64, i32, Vec<KeyValue>)>,
    resource: Vec<KeyValue>,
) -> Vec<EncodedSpan> {
    let spans = spans
        .into_iter()
        .enumerate()
        .map(|(i, (ms, code, attributes))| Span {
            trace_id: vec![id; 16],
            span_id: vec![i as u8 + 1; 8],
            parent_span_id: if i == 0 { vec![] } else { vec![1; 8] },
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            status: status(code),
            attributes,
            ..Default::default()
        })
        .collect();
    scan_export_request(&encoded(resource, spans))
        .unwrap()
        .spans
}

fn policy(v: serde_json::Value) -> NamedPolicy {
    let cfg: PolicyConfig = serde_json::from_value(v).unwrap();
    NamedPolicy::compile(&cfg, 1.0)
}

fn vote(p: &mut NamedPolicy, spans: &[EncodedSpan]) -> Decision {
    vote_at(p, spans, Duration::from_secs(1))
}

fn vote_at(p: &mut NamedPolicy, spans: &[EncodedSpan], now: Duration) -> Decision {
    p.evaluate(&TraceView::new(spans[0].meta.trace_id, spans), now)
}

use Decision::*;

#[test]
fn single_policies_vote_like_the_collector() {
    let s = |v: &str| Value::StringValue(v.into());
    let plain = trace(
        1,
        vec![(10, 0, vec![]), (5, 0, vec![])],
        vec![kv("service.name", s("api"))],
    );
    let error = trace(2, vec![(10, 0, vec![]), (5, 2, vec![])], vec![]);
    let slow = trace(3, vec![(2500, 0, vec![]), (5, 0, vec![])], vec![]);
    let flagged = trace(
        4,
        vec![(10, 0, vec![kv("sampling.priority", s("always_on"))])],
        vec![],
    );
    let numeric = trace(
        5,
        vec![(10, 0, vec![kv("http.status_code", Value::IntValue(503))])],
        vec![],
    );
    let boolean = trace(
        6,
        vec![(10, 0, vec![kv("app.force", Value::BoolValue(true))])],
        vec![],
    );

    let cases: Vec<(serde_json::Value, &[EncodedSpan], Decision)> = vec![
        (
            json!({"name": "a", "type": "always_sample"}),
            &plain,
            Sampled,
        ),
        (
            json!({"name": "e", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}),
            &error,
            Sampled,
        ),
        (
            json!({"name": "e", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "u", "type": "status_code", "status_code": {"status_codes": ["UNSET", "OK"]}}),
            &plain,
            Sampled,
        ),
        (
            json!({"name": "l", "type": "latency", "latency": {"threshold_ms": 2000}}),
            &slow,
            Sampled,
        ),
        (
            json!({"name": "l", "type": "latency", "latency": {"threshold_ms": 2000}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "l", "type": "latency", "latency": {"threshold_ms": 100, "upper_threshold_ms": 1000}}),
            &slow,
            NotSampled,
        ),
        (
            json!({"name": "s", "type": "string_attribute", "string_attribute": {"key": "sampling.priority", "values": ["always_on"]}}),
            &flagged,
            Sampled,
        ),
        (
            json!({"name": "s", "type": "string_attribute", "string_attribute": {"key": "sampling.priority", "values": ["always_on"]}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "r", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["^ap"], "enabled_regex_matching": true}}),
            &plain,
            Sampled,
        ),
        (
            json!({"name": "i", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"], "invert_match": true}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "i", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"], "invert_match": true}}),
            &error,
            Sampled,
        ),
        (
            json!({"name": "n", "type": "numeric_attribute", "numeric_attribute": {"key": "http.status_code", "min_value": 500, "max_value": 599}}),
            &numeric,
            Sampled,
        ),
        (
            json!({"name": "n", "type": "numeric_attribute", "numeric_attribute": {"key": "http.status_code", "min_value": 400, "max_value": 499}}),
            &numeric,
            NotSampled,
        ),
        (
            json!({"name": "n", "type": "numeric_attribute", "numeric_attribute": {"key": "http.status_code", "min_value": 500}}),
            &numeric,
            Sampled,
        ),
        (
            json!({"name": "b", "type": "boolean_attribute", "boolean_attribute": {"key": "app.force", "value": true}}),
            &boolean,
            Sampled,
        ),
        (
            json!({"name": "b", "type": "boolean_attribute", "boolean_attribute": {"key": "app.force", "value": false}}),
            &boolean,
            NotSampled,
        ),
        (
            json!({"name": "c", "type": "span_count", "span_count": {"min_spans": 2}}),
            &plain,
            Sampled,
        ),
        (
            json!({"name": "c", "type": "span_count", "span_count": {"min_spans": 3}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "c", "type": "span_count", "span_count": {"min_spans": 1, "max_spans": 1}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "o", "type": "ottl_condition", "ottl_condition": {"span": ["status.code == STATUS_CODE_ERROR"]}}),
            &error,
            Sampled,
        ),
        (
            json!({"name": "o", "type": "ottl_condition", "ottl_condition": {"span": ["status.code == STATUS_CODE_ERROR"]}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 100}}),
            &plain,
            Sampled,
        ),
        (
            json!({"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 0}}),
            &plain,
            NotSampled,
        ),
        (
            json!({"name": "x", "type": "and", "and": {"and_sub_policy": [
            {"name": "x1", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "x2", "type": "span_count", "span_count": {"min_spans": 2}}]}}),
            &error,
            Sampled,
        ),
        (
            json!({"name": "x", "type": "and", "and": {"and_sub_policy": [
            {"name": "x1", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "x2", "type": "span_count", "span_count": {"min_spans": 3}}]}}),
            &error,
            NotSampled,
        ),
        (
            json!({"name": "n", "type": "not", "not": {"not_sub_policy": {"name": "n1", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}}}),
            &plain,
            Sampled,
        ),
        (
            json!({"name": "n", "type": "not", "not": {"not_sub_policy": {"name": "n1", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}}}),
            &error,
            NotSampled,
        ),
        (
            json!({"name": "d", "type": "drop", "drop": {"drop_sub_policy": [{"name": "d1", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"]}}]}}),
            &plain,
            Dropped,
        ),
        (
            json!({"name": "d", "type": "drop", "drop": {"drop_sub_policy": [{"name": "d1", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"]}}]}}),
            &error,
            NotSampled,
        ),
    ];
    for (cfg, spans, want) in cases {
        let mut p = policy(cfg.clone());
        assert_eq!(vote(&mut p, spans), want, "{cfg}");
    }
}

#[test]
fn trace_state_and_flags_policies() {
    let mut sp = Span {
        trace_id: vec![9; 16],
        span_id: vec![1; 8],
        trace_state: "vendor=x,tenant=gold".into(),
        flags: 0x101,
        ..Default::default()
    };
    let mk = |s: Span| {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![s],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        scan_export_request(&Bytes::from(req.encode_to_vec()))
            .unwrap()
            .spans
    };
    let sampled_flag = mk(sp.clone());
    sp.flags = 0x100;
    sp.trace_state = "vendor=x".into();
    let unsampled = mk(sp);
    let mut ts = policy(
        json!({"name": "t", "type": "trace_state", "trace_state": {"key": "tenant", "values": ["gold", "silver"]}}),
    );
    assert_eq!(vote(&mut ts, &sampled_flag), Sampled);
    assert_eq!(vote(&mut ts, &unsampled), NotSampled);
    let mut tf = policy(json!({"name": "f", "type": "trace_flags"}));
    assert_eq!(vote(&mut tf, &sampled_flag), Sampled);
    assert_eq!(vote(&mut tf, &unsampled), NotSampled);
}

#[test]
fn ottl_spanevent_conditions_see_events() {
    let mut sp = Span {
        trace_id: vec![8; 16],
        span_id: vec![1; 8],
        ..Default::default()
    };
    sp.events = vec![Event {
        name: "exception".into(),
        ..Default::default()
    }];
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![sp],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let spans = scan_export_request(&Bytes::from(req.encode_to_vec()))
        .unwrap()
        .spans;
    let mut p = policy(
        json!({"name": "o", "type": "ottl_condition", "ottl_condition": {"spanevent": ["name == \"exception\""]}}),
    );
    assert_eq!(vote(&mut p, &spans), Sampled);
}

#[test]
fn probabilistic_is_a_pure_function_of_the_trace_id_near_the_configured_rate() {
    let mut p = policy(
        json!({"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 5}}),
    );
    let mut q = policy(
        json!({"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 5}}),
    );
    let mut kept = 0;
    let n = 20_000u32;
    for i in 0..n {
        let mut id = [0u8; 16];
        id[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
        id[0] = (i % 251) as u8 + 1;
        let spans = trace(1, vec![(1, 0, vec![])], vec![]);
        let view = TraceView::new(TraceId(id), &spans);
        let a = p.evaluate(&view, Duration::ZERO);
        assert_eq!(
            a,
            q.evaluate(&view, Duration::from_secs(99)),
            "same ID, same answer, any time"
        );
        kept += u32::from(a == Sampled);
    }
    // 5% of 20,000 = 1,000; binomial sd ≈ 31; allow 5 sd.
    assert!((845..=1155).contains(&kept), "kept {kept} of {n}");
}

#[test]
fn hash_matches_the_collectors_fnv1a_with_default_salt() {
    // FNV-1a 64 of "default-hash-seed" followed by 16 zero bytes, computed independently.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in b"default-hash-seed".iter().chain([0u8; 16].iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    assert_eq!(trace_id_hash(DEFAULT_HASH_SALT, &TraceId([0; 16])), h);
}

#[test]
fn rate_limiting_and_bytes_limiting_use_token_buckets() {
    let spans = trace(1, vec![(1, 0, vec![]); 10], vec![]);
    let mut r = policy(
        json!({"name": "r", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 25}}),
    );
    let t = Duration::from_secs(10);
    for _ in 0..5 {
        assert_eq!(vote_at(&mut r, &spans, t), Sampled);
    }
    assert_eq!(
        vote_at(&mut r, &spans, t),
        NotSampled,
        "the collector's default burst is two seconds of the rate, 50 spans: five 10-span traces, not six"
    );
    assert_eq!(
        vote_at(&mut r, &spans, t + Duration::from_secs(1)),
        Sampled,
        "refilled"
    );
    // The collector charges the trace's protobuf size, resource and scope included.
    let bytes = tailgate_otlp::export_request_len(&spans) as u64;
    assert!(bytes > spans.iter().map(|s| s.bytes().len() as u64).sum::<u64>());
    let mut b = policy(
        json!({"name": "b", "type": "bytes_limiting", "bytes_limiting": {"bytes_per_second": bytes, "burst_capacity": bytes}}),
    );
    assert_eq!(vote_at(&mut b, &spans, t), Sampled);
    assert_eq!(vote_at(&mut b, &spans, t), NotSampled);
}

#[test]
fn composite_tries_sub_policies_in_their_listed_order_within_per_second_shares() {
    let errors = trace(1, vec![(1, 2, vec![]); 10], vec![]);
    let plain = trace(2, vec![(1, 0, vec![]); 10], vec![]);
    // `policy_order` says rest first; the collector ignores it, and so does Tailgate.
    let mut c = policy(json!({"name": "c", "type": "composite", "composite": {
        "max_total_spans_per_second": 40,
        "policy_order": ["rest", "errors"],
        "composite_sub_policy": [
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "rest", "type": "always_sample"}],
        "rate_allocation": [{"policy": "errors", "percent": 25}]}}));
    let t = Duration::from_secs(5);
    // errors: 25% of 40 = 10 sps → one 10-span trace; rest: an equal share (40 / 2 = 20) → two.
    assert_eq!(vote_at(&mut c, &errors, t), Sampled);
    assert_eq!(
        vote_at(&mut c, &errors, t),
        NotSampled,
        "errors' share is spent; the first matching sub-policy decides"
    );
    assert_eq!(vote_at(&mut c, &plain, t), Sampled);
    assert_eq!(vote_at(&mut c, &plain, t), Sampled);
    assert_eq!(vote_at(&mut c, &plain, t), NotSampled);
    let CompiledPolicy::Composite(inner) = &c.policy else {
        unreachable!()
    };
    assert_eq!(
        inner.sampled_by(),
        None,
        "the last evaluation did not sample"
    );
    // A new second starts every budget from zero.
    let next = t + Duration::from_secs(1);
    assert_eq!(vote_at(&mut c, &errors, next), Sampled);
    let CompiledPolicy::Composite(inner) = &c.policy else {
        unreachable!()
    };
    assert_eq!(inner.sampled_by(), Some("errors"));
}

#[test]
fn composite_caps_the_sum_of_its_sub_policies_at_the_total() {
    let plain = trace(2, vec![(1, 0, vec![]); 10], vec![]);
    let mut c = policy(json!({"name": "c", "type": "composite", "composite": {
        "max_total_spans_per_second": 20,
        "composite_sub_policy": [
            {"name": "a", "type": "span_count", "span_count": {"min_spans": 10}},
            {"name": "b", "type": "always_sample"}],
        "rate_allocation": [{"policy": "a", "percent": 50}, {"policy": "b", "percent": 50}]}}));
    let t = Duration::from_secs(5);
    assert_eq!(vote_at(&mut c, &plain, t), Sampled, "a: 10 of 10");
    assert_eq!(vote_at(&mut c, &plain, t), NotSampled, "a is spent");
}

/// Combination table: the votes of several policies and the collector's final decision.
#[test]
fn combination_semantics_table() {
    let s = |v: &str| Value::StringValue(v.into());
    let error_api = trace(1, vec![(10, 2, vec![])], vec![kv("service.name", s("api"))]);
    let plain_api = trace(2, vec![(10, 0, vec![])], vec![kv("service.name", s("api"))]);
    let plain_web = trace(3, vec![(10, 0, vec![])], vec![kv("service.name", s("web"))]);
    let errors = json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}});
    let always = json!({"name": "always", "type": "always_sample"});
    let never = json!({"name": "never", "type": "probabilistic", "probabilistic": {"sampling_percentage": 0}});
    let drop_api = json!({"name": "drop-api", "type": "drop", "drop": {"drop_sub_policy": [
        {"name": "is-api", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"]}}]}});
    let not_api_inverted = json!({"name": "not-api", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"], "invert_match": true}});

    /// (policies in config order, trace, kept, deciding policy)
    type Case<'a> = (
        Vec<&'a serde_json::Value>,
        &'a [EncodedSpan],
        bool,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (vec![&errors, &never], &error_api, true, Some("errors")),
        // Not kept: attributed to the first policy that said not sampled.
        (vec![&errors, &never], &plain_api, false, Some("errors")),
        // Drop vetoes even an always_sample listed before it.
        (
            vec![&always, &drop_api],
            &plain_api,
            false,
            Some("drop-api"),
        ),
        (vec![&always, &drop_api], &plain_web, true, Some("always")),
        (
            vec![&errors, &drop_api],
            &error_api,
            false,
            Some("drop-api"),
        ),
        // An inverted match votes plainly (collector v0.161.0): its "not sampled" does not
        // outvote another policy's "sampled".
        (
            vec![&always, &not_api_inverted],
            &plain_api,
            true,
            Some("always"),
        ),
        (vec![&not_api_inverted], &plain_api, false, Some("not-api")),
        (vec![&not_api_inverted], &plain_web, true, Some("not-api")),
        (
            vec![&not_api_inverted, &never],
            &plain_web,
            true,
            Some("not-api"),
        ),
    ];
    for (cfgs, spans, keep, by) in cases {
        let configs: Vec<PolicyConfig> = cfgs
            .iter()
            .map(|c| serde_json::from_value((*c).clone()).unwrap())
            .collect();
        let mut set = PolicySet::compile(&configs, false, 1.0);
        let v = set.decide(
            &TraceView::new(spans[0].meta.trace_id, spans),
            Duration::ZERO,
        );
        let names: Vec<&str> = cfgs.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(v.keep, keep, "{names:?}");
        assert_eq!(
            v.decided_by.map(|i| set.names()[i].as_str()),
            by,
            "{names:?}"
        );
    }
}

#[test]
fn sample_on_first_match_stops_at_the_first_sampled_vote() {
    let spans = trace(1, vec![(10, 2, vec![])], vec![]);
    let configs: Vec<PolicyConfig> = vec![
        serde_json::from_value(json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}})).unwrap(),
        serde_json::from_value(json!({"name": "rate", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 1}})).unwrap(),
    ];
    let view = TraceView::new(spans[0].meta.trace_id, &spans);
    let mut first = PolicySet::compile(&configs, true, 1.0);
    assert_eq!(first.decide(&view, Duration::ZERO).votes.len(), 1);
    let mut all = PolicySet::compile(&configs, false, 1.0);
    assert_eq!(all.decide(&view, Duration::ZERO).votes.len(), 2);
}
