//! Fuzz targets: every decoder that reads bytes a stranger controls, each a function that
//! takes arbitrary input and panics only when an invariant breaks (an `Err` is a correct
//! answer to bad input; a panic, a hang or an unbounded allocation is the bug).
//!
//! `cargo fuzz` needs a nightly compiler, which this project's machines cannot fetch, so the
//! targets run as `proptest` harnesses on stable (`tests/fuzz.rs`): the seed corpus of
//! `corpus/<target>/`, then arbitrary bytes and mutations of the seeds (bit flips,
//! truncations, splices, inserted bytes). `TAILGATE_FUZZ_CASES` sets the cases per target
//! (`.ci/run` runs a bounded number); every failure proptest finds is saved under
//! `tests/fuzz.proptest-regressions` and replayed first from then on, and is added to the
//! corpus as a regression seed.

use std::path::PathBuf;
use std::sync::LazyLock;

use bytes::Bytes;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tailgate_cluster::proto::{ForwardRequest, HandoffRequest, ReplicateRequest};
use tailgate_cluster::transfer;
use tailgate_config::components::AttributeAction;
use tailgate_otlp::compression::{self, Encoding};
use tailgate_otlp::{encode_export_request, scan_export_request};
use tailgate_ottl::{Condition, Scope};
use tailgate_processors::actions::AttributeActions;

/// A fuzz target: arbitrary input in, a panic only when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets, by corpus directory name.
pub const TARGETS: &[(&str, Target)] = &[
    ("otlp_scan", otlp_scan),
    ("otlp_json", otlp_json),
    ("compressed_body", compressed_body),
    ("config", config),
    ("ottl", ottl),
    ("cluster_messages", cluster_messages),
    ("attribute_edits", attribute_edits),
];

/// The seed inputs of `target`, in file-name order.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("readable seed"))
        .collect()
}

/// The OTLP protobuf scanner (every receiver, every cluster message): a request it accepts
/// re-encodes to one it accepts again, with the same spans.
pub fn otlp_scan(data: &[u8]) {
    let Ok(scanned) = scan_export_request(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = encode_export_request(&scanned.spans);
    let rescanned = scan_export_request(&again).expect("a re-encoded request scans");
    assert_eq!(rescanned.spans.len(), scanned.spans.len());
    for (a, b) in scanned.spans.iter().zip(&rescanned.spans) {
        assert_eq!(a.meta.trace_id, b.meta.trace_id);
        assert_eq!(a.meta.span_id, b.meta.span_id);
    }
}

/// OTLP/JSON bodies: what converts to protobuf converts back.
pub fn otlp_json(data: &[u8]) {
    if let Ok(proto) = tailgate_otlp::json::request_from_json(data) {
        tailgate_otlp::json::request_to_json(&proto).expect("converted JSON converts back");
    }
}

/// Largest body the compressed-body target inflates to.
pub const INFLATE_LIMIT_BYTES: usize = 64 * 1024;

/// The encodings the compressed-body target picks from, by its input's first byte.
pub const COMPRESSED_ENCODINGS: [Encoding; 5] = [
    Encoding::Gzip,
    Encoding::Zstd,
    Encoding::Snappy,
    Encoding::SnappyFramed,
    Encoding::Zlib,
];

/// Compressed OTLP/HTTP bodies and gRPC messages: the first byte picks the encoding, the rest
/// is the body. Never more than the limit comes out, whatever the input claims, and a gRPC
/// body that decodes is plain messages that decode to themselves.
pub fn compressed_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let encoding = COMPRESSED_ENCODINGS[usize::from(pick) % COMPRESSED_ENCODINGS.len()];
    if let Ok(out) = compression::decompress(encoding, body, INFLATE_LIMIT_BYTES) {
        assert!(out.len() <= INFLATE_LIMIT_BYTES);
    }
    if let Ok(plain) = compression::decode_grpc_messages(encoding, body, INFLATE_LIMIT_BYTES) {
        let again = compression::decode_grpc_messages(encoding, &plain, INFLATE_LIMIT_BYTES)
            .expect("plain gRPC messages decode");
        assert_eq!(again, plain);
    }
}

/// The config loader (YAML, `${env:...}`, every component's validation).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = tailgate_config::load_str(&text, "fuzz.yaml", &|name| {
        (name == "FUZZ").then(|| "value".to_string())
    });
}

/// The OTTL condition parser, in both scopes.
pub fn ottl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Condition::parse(&text, Scope::Span);
    let _ = Condition::parse(&text, Scope::SpanEvent);
}

/// Cluster messages (forward, handoff, replication with decisions), as a peer would send
/// them: a handoff that decodes re-encodes to one that decodes to the same traces.
pub fn cluster_messages(data: &[u8]) {
    if let Ok(req) = ForwardRequest::decode(data) {
        let _ = transfer::forwarded_spans(req);
    }
    if let Ok(req) = HandoffRequest::decode(data)
        && let Ok((traces, decisions)) = transfer::handoff_contents(req)
    {
        let again = transfer::handoff_request("fuzz", 1, &traces, &decisions);
        let (traces2, decisions2) =
            transfer::handoff_contents(again).expect("a re-encoded handoff decodes");
        assert_eq!(traces.len(), traces2.len());
        assert_eq!(decisions.len(), decisions2.len());
    }
    if let Ok(req) = ReplicateRequest::decode(data) {
        let _ = transfer::replica_copy(req);
    }
}

/// Actions covering every kind of wire-level attribute edit (built once: regexes).
static EDIT_ACTIONS: LazyLock<AttributeActions> = LazyLock::new(edit_actions);

fn edit_actions() -> AttributeActions {
    let actions: Vec<AttributeAction> = serde_json::from_str(
        r#"[
            {"key": "db.statement", "action": "update", "value": "[redacted]"},
            {"key": "http.request.header.authorization", "action": "delete"},
            {"pattern": "^secret\\.", "action": "delete"},
            {"key": "user.email", "action": "hash"},
            {"key": "region", "action": "insert", "value": "eu-1"},
            {"key": "copy", "action": "upsert", "from_attribute": "http.route"},
            {"key": "count", "action": "upsert", "value": 7},
            {"key": "http.url", "pattern": "^(?P<scheme>[a-z]+)://(?P<host>[^/]+)", "action": "extract"}
        ]"#,
    )
    .expect("valid actions");
    AttributeActions::new(&actions)
}

/// The wire-level attribute edits of `attributes` and `resource` processors, on a span's
/// and a resource's encoding: a message that decodes still decodes after the edits.
pub fn attribute_edits(data: &[u8]) {
    let actions = &*EDIT_ACTIONS;
    // Span.attributes is field 9, Resource.attributes field 1.
    if let Some(out) = actions.apply_encoded(data, 9)
        && Span::decode(data).is_ok()
    {
        Span::decode(out.as_slice()).expect("an edited span decodes");
    }
    if let Some(out) = actions.apply_encoded(data, 1)
        && Resource::decode(data).is_ok()
    {
        Resource::decode(out.as_slice()).expect("an edited resource decodes");
    }
}
