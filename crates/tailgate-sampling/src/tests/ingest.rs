//! Goal: the ingest fast paths (grouping without regrowing, appending without a per-batch
//! vector, attribute policies skipping chunks that lack their key) keep every outcome the
//! general paths had. Method: batches shaped to take each path, checked by what is kept.

use serde_json::json;
use tailgate_otlp::proto::trace::v1::Span;

use super::*;
use crate::policy::TraceView;

/// Span `n` of trace `t` with the given span attributes, under a resource with `resource`.
fn span_with(
    t: u32,
    n: u32,
    attributes: Vec<(&str, &str)>,
    resource: Vec<(&str, &str)>,
) -> EncodedSpan {
    let mut trace_id = vec![0u8; 16];
    trace_id[12..].copy_from_slice(&(t + 1).to_be_bytes());
    let sp = Span {
        trace_id,
        span_id: (u64::from(n) + 1).to_be_bytes().to_vec(),
        name: format!("s{n}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: attributes
            .into_iter()
            .map(|(k, v)| kv(k, string(v)))
            .collect(),
        ..Default::default()
    };
    let resource = resource
        .into_iter()
        .map(|(k, v)| kv(k, string(v)))
        .collect();
    scan_export_request(&encoded(resource, vec![sp]))
        .unwrap()
        .spans
        .remove(0)
}

fn flagged_only() -> PolicySet {
    let p: PolicyConfig = serde_json::from_value(json!({
        "name": "flagged", "type": "string_attribute",
        "string_attribute": {"key": "sampling.priority", "values": ["always_on"]}
    }))
    .unwrap();
    PolicySet::compile(&[p], false, 1.0)
}

#[test]
fn repeats_within_a_large_batch_and_of_buffered_spans_are_stored_once() {
    let mut r = Rig::new(cfg(), 1 << 20);
    r.ingest((1..=3).map(|n| span(1, n, 0, n == 1)).collect(), S);
    // 40 spans (past the linear de-duplication bound): 1..=3 buffered already, 10..=14 twice.
    let mut batch: Vec<EncodedSpan> = (1..=35).map(|n| span(1, n, 1, false)).collect();
    batch.extend((10..=14).map(|n| span(1, n, 1, false)));
    r.ingest(batch, S);
    let kept = r.shard.poll(20 * S).kept;
    assert_eq!(kept.len(), 35, "each span ID once");
    let mut ids: Vec<_> = kept.iter().map(|s| s.meta.span_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 35);
    assert_eq!(r.shard.take_counters().spans_duplicate, 3 + 5);
    assert_eq!(r.budget.bytes_used(), 0, "duplicate bytes released at once");
}

#[test]
fn interleaved_traces_in_one_batch_are_grouped_in_order_of_first_appearance() {
    let mut r = Rig::new(cfg(), 1 << 20);
    // a b a c b a: three traces, spans of each apart from one another.
    let batch = vec![
        span(1, 1, 0, true),
        span(2, 1, 0, true),
        span(1, 2, 1, false),
        span(3, 1, 0, false),
        span(2, 2, 1, false),
        span(1, 3, 1, false),
    ];
    r.ingest(batch, S);
    assert_eq!(r.shard.traces_buffered(), 3);
    let kept = r.shard.poll(20 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1", "2:s2", "2:s3", "3:s1", "3:s2"]);
}

#[test]
fn an_attribute_policy_finds_its_key_in_any_span_or_resource_and_only_there() {
    let budget = Arc::new(BufferBudget::new(1 << 20));
    let mut shard = TraceShard::new(cfg(), flagged_only(), Arc::clone(&budget), 1);
    let flag = ("sampling.priority", "always_on");
    let other = ("http.route", "/checkout");
    let traces = vec![
        // Trace 1: the flag on its third span.
        vec![
            span_with(1, 1, vec![other], vec![]),
            span_with(1, 2, vec![], vec![]),
            span_with(1, 3, vec![other, flag], vec![]),
        ],
        // Trace 2: the key with another value, and the value under another key.
        vec![
            span_with(2, 1, vec![("sampling.priority", "normal")], vec![]),
            span_with(2, 2, vec![("note", "always_on")], vec![]),
        ],
        // Trace 3: the flag on the resource only.
        vec![span_with(3, 1, vec![other], vec![flag])],
        // Trace 4: no such key anywhere.
        vec![span_with(4, 1, vec![other], vec![("service.name", "svc")])],
    ];
    for spans in traces {
        let bytes: u64 = spans.iter().map(|s| s.bytes().len() as u64).sum();
        assert!(budget.try_reserve(bytes));
        shard.ingest(spans, S);
    }
    let kept = shard.poll(20 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1", "2:s2", "2:s3", "4:s1"]);
}

#[test]
fn keys_nested_in_and_and_composite_policies_are_filtered_and_still_found() {
    let policy = |v: serde_json::Value| -> PolicyConfig { serde_json::from_value(v).unwrap() };
    let flagged = json!({"name": "flag", "type": "string_attribute",
        "string_attribute": {"key": "sampling.priority", "values": ["always_on"]}});
    let routed = json!({"name": "route", "type": "string_attribute",
        "string_attribute": {"key": "http.route", "values": ["/checkout"]}});
    let set = PolicySet::compile(
        &[
            policy(
                json!({"name": "both", "type": "and", "and": {"and_sub_policy": [flagged, routed]}}),
            ),
            policy(json!({"name": "mix", "type": "composite", "composite": {
                "max_total_spans_per_second": 1000,
                "policy_order": ["vip"],
                "composite_sub_policy": [{"name": "vip", "type": "string_attribute",
                    "string_attribute": {"key": "customer.tier", "values": ["gold"]}}],
                "rate_allocation": [{"policy": "vip", "percent": 100}]}})),
        ],
        false,
        1.0,
    );
    let filter = set.key_filter();
    for key in ["sampling.priority", "http.route", "customer.tier"] {
        assert!(
            !TraceView::new(tid(9), &[])
                .with_keys_seen(&filter, 0)
                .may_contain_key(key)
        );
    }
    assert!(
        TraceView::new(tid(9), &[])
            .with_keys_seen(&filter, 0)
            .may_contain_key("not.filtered"),
        "a key the filter does not look for is never ruled out"
    );
    let budget = Arc::new(BufferBudget::new(1 << 20));
    let mut shard = TraceShard::new(cfg(), set, Arc::clone(&budget), 1);
    let traces = vec![
        vec![span_with(
            1,
            1,
            vec![
                ("http.route", "/checkout"),
                ("sampling.priority", "always_on"),
            ],
            vec![],
        )],
        vec![span_with(2, 1, vec![("http.route", "/checkout")], vec![])],
        vec![
            span_with(3, 1, vec![], vec![]),
            span_with(3, 2, vec![("customer.tier", "gold")], vec![]),
        ],
    ];
    for spans in traces {
        let bytes: u64 = spans.iter().map(|s| s.bytes().len() as u64).sum();
        assert!(budget.try_reserve(bytes));
        shard.ingest(spans, S);
    }
    let kept = shard.poll(20 * S).kept;
    assert_eq!(names(&kept), vec!["2:s1", "4:s1", "4:s2"]);
}
