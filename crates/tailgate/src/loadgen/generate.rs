//! The traces `loadgen` sends: generated from the seed, encoded once into request templates
//! whose IDs are rewritten for every send.

use super::LoadgenArgs;
use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tailgate_otlp::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use tailgate_otlp::proto::resource::v1::Resource;
use tailgate_otlp::proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, status::StatusCode,
};

pub(super) fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// Builds traces: a root span and children, timestamps from a fixed epoch plus an offset.
pub(super) struct TraceGenerator {
    rng: StdRng,
    args: LoadgenArgs,
    clock_ns: u64,
}

pub(super) struct GeneratedTrace {
    spans: Vec<Span>,
    error: bool,
    slow: bool,
    flagged: bool,
}

impl TraceGenerator {
    pub(super) fn new(args: &LoadgenArgs, seed: u64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        TraceGenerator {
            rng: StdRng::seed_from_u64(seed),
            args: args.clone(),
            clock_ns: now,
        }
    }

    pub(super) fn trace(&mut self) -> GeneratedTrace {
        let mut trace_id = [0u8; 16];
        self.rng.fill(&mut trace_id);
        trace_id[0] |= 1; // never all zeros
        let error = self
            .rng
            .random_bool((self.args.error_percent / 100.0).clamp(0.0, 1.0));
        let slow = self
            .rng
            .random_bool((self.args.slow_percent / 100.0).clamp(0.0, 1.0));
        let flagged = self
            .rng
            .random_bool((self.args.flagged_percent / 100.0).clamp(0.0, 1.0));
        let n = self.args.spans_per_trace.max(1);
        let root_ns = if slow {
            self.args.slow_ms * 1_000_000
        } else {
            self.rng.random_range(5_000_000..200_000_000)
        };
        let start = self.clock_ns;
        self.clock_ns += 1_000;
        let error_at = if error {
            self.rng.random_range(0..n)
        } else {
            usize::MAX
        };
        let mut ids: Vec<[u8; 8]> = Vec::with_capacity(n);
        let mut spans = Vec::with_capacity(n);
        for i in 0..n {
            let mut span_id = [0u8; 8];
            self.rng.fill(&mut span_id);
            span_id[0] |= 1;
            let parent = if i == 0 {
                Vec::new()
            } else {
                ids[self.rng.random_range(0..i)].to_vec()
            };
            ids.push(span_id);
            let (s, e) = if i == 0 {
                (start, start + root_ns)
            } else {
                let off = self.rng.random_range(0..root_ns / 2);
                (
                    start + off,
                    start + off + self.rng.random_range(1..root_ns / 2),
                )
            };
            let attributes = self.span_attributes(i, flagged);
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent,
                name: if i == 0 {
                    "GET /checkout".into()
                } else {
                    format!("op-{}", i % 7)
                },
                kind: if i == 0 { 2 } else { 1 },
                start_time_unix_nano: s,
                end_time_unix_nano: e,
                attributes,
                status: Some(Status {
                    message: String::new(),
                    code: if i == error_at {
                        StatusCode::Error as i32
                    } else {
                        StatusCode::Unset as i32
                    },
                }),
                ..Default::default()
            });
        }
        GeneratedTrace {
            spans,
            error,
            slow,
            flagged,
        }
    }

    /// Random attributes, plus on the root the route, a secret the gateways must redact and
    /// (when `flagged`) the debug flag, and on some children a SQL statement.
    fn span_attributes(&mut self, i: usize, flagged: bool) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(self.args.attributes + 4);
        for a in 0..self.args.attributes {
            let v: u64 = self.rng.random();
            attributes.push(kv(
                &format!("attr.{a}"),
                Value::StringValue(format!("value-{v:016x}")),
            ));
        }
        if i == 0 {
            attributes.push(kv("http.route", Value::StringValue("/checkout".into())));
            attributes.push(kv(
                "http.request.header.authorization",
                Value::StringValue("Bearer secret-token".into()),
            ));
            if flagged {
                attributes.push(kv(
                    "sampling.priority",
                    Value::StringValue("always_on".into()),
                ));
            }
        } else if i % 4 == 1 {
            attributes.push(kv(
                "db.statement",
                Value::StringValue("SELECT * FROM orders WHERE customer = 'alice'".into()),
            ));
        }
        attributes
    }
}

pub(super) fn request(service_name: &str, spans: Vec<Span>) -> Bytes {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(service_name.into())),
                    kv(
                        "deployment.environment",
                        Value::StringValue("loadgen".into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tailgate-loadgen".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
    .into()
}

/// A pre-encoded request of whole traces whose IDs are rewritten for every send, so the
/// generator costs tens of nanoseconds per span and the target, not the client, is measured.
pub(super) struct RequestTemplate {
    bytes: Vec<u8>,
    pub(super) spans: Vec<SpanSlots>,
    /// Per trace: (error, slow, flagged).
    pub(super) traces: Vec<(bool, bool, bool)>,
}

/// Where one span's IDs sit in the template.
pub(super) struct SpanSlots {
    trace: usize,
    trace_id_at: usize,
    span_id_at: usize,
    /// Offset of the parent ID and the index of the parent span.
    parent: Option<(usize, usize)>,
}

impl RequestTemplate {
    pub(super) fn build(
        generator: &mut TraceGenerator,
        spans_per_request: usize,
        service_name: &str,
    ) -> RequestTemplate {
        let per_trace = generator.args.spans_per_trace.max(1);
        let trace_count = (spans_per_request / per_trace).max(1);
        let mut spans = Vec::new();
        let mut traces = Vec::new();
        for _ in 0..trace_count {
            let t = generator.trace();
            traces.push((t.error, t.slow, t.flagged));
            spans.extend(t.spans);
        }
        let body = request(service_name, spans);
        let scanned = tailgate_otlp::scan_export_request(&body).expect("own request scans");
        let offset = |slice: &[u8]| slice.as_ptr() as usize - body.as_ptr() as usize;
        let mut slots: Vec<SpanSlots> = Vec::with_capacity(scanned.spans.len());
        let mut trace_index: Vec<tailgate_otlp::TraceId> = Vec::new();
        for s in &scanned.spans {
            let trace = match trace_index.iter().position(|t| *t == s.meta.trace_id) {
                Some(i) => i,
                None => {
                    trace_index.push(s.meta.trace_id);
                    trace_index.len() - 1
                }
            };
            let (mut trace_id_at, mut span_id_at, mut parent_at) = (0, 0, None);
            for field in tailgate_otlp::wire::FieldReader::new(s.bytes()).flatten() {
                if let (n, tailgate_otlp::wire::FieldValue::Len(b)) = field {
                    match n {
                        1 => trace_id_at = offset(b),
                        2 => span_id_at = offset(b),
                        4 if !b.is_empty() => parent_at = Some(offset(b)),
                        _ => {}
                    }
                }
            }
            let parent = parent_at.map(|at| {
                let pid = s.meta.parent_span_id.expect("parent bytes present");
                let idx = scanned
                    .spans
                    .iter()
                    .position(|o| o.meta.span_id == pid && o.meta.trace_id == s.meta.trace_id);
                (at, idx.expect("parent in the same request"))
            });
            slots.push(SpanSlots {
                trace,
                trace_id_at,
                span_id_at,
                parent,
            });
        }
        RequestTemplate {
            bytes: body.to_vec(),
            spans: slots,
            traces,
        }
    }

    /// A copy with fresh random IDs, parent links kept consistent.
    pub(super) fn instantiate(&self, rng: &mut StdRng) -> Bytes {
        let mut out = self.bytes.clone();
        let trace_ids: Vec<[u8; 16]> = (0..self.traces.len())
            .map(|_| {
                let mut id: [u8; 16] = rng.random();
                id[0] |= 1;
                id
            })
            .collect();
        let span_ids: Vec<[u8; 8]> = (0..self.spans.len())
            .map(|_| {
                let mut id: [u8; 8] = rng.random();
                id[0] |= 1;
                id
            })
            .collect();
        for (i, s) in self.spans.iter().enumerate() {
            out[s.trace_id_at..s.trace_id_at + 16].copy_from_slice(&trace_ids[s.trace]);
            out[s.span_id_at..s.span_id_at + 8].copy_from_slice(&span_ids[i]);
            if let Some((at, parent)) = s.parent {
                out[at..at + 8].copy_from_slice(&span_ids[parent]);
            }
        }
        Bytes::from(out)
    }
}
