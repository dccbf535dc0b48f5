//! Goal: with the collector's `processor.tailsamplingprocessor.usetracestate` gate, Tailgate
//! keeps the same traces as the collector and writes the same `tracestate` on every kept span
//! (OTEP 235 thresholds, `ot=th:`), byte for byte. Method: one config in both systems
//! (`probabilistic` 20% and `status_code` ERROR); a seeded corpus whose traces carry no trace
//! state, an explicit `ot=rv`, a threshold from an earlier sampler (less and more strict),
//! other vendors' members, and unparseable `ot` values; the exported `(span, tracestate)` maps
//! must be equal.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::parity::{reference_collector, start};
use crate::support::{BIN, free_port, serve_trace_service};

const GATE: &str = "--feature-gates=processor.tailsamplingprocessor.usetracestate";

const CONFIG: &str = "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:${env:PARITY_OTLP_PORT}\nprocessors:\n  tail_sampling:\n    decision_wait: 1s\n    policies:\n      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n      - {name: fifth, type: probabilistic, probabilistic: {sampling_percentage: 20}}\nexporters:\n  otlp:\n    endpoint: 127.0.0.1:${env:PARITY_SINK_PORT}\n    tls:\n      insecure: true\n    sending_queue:\n      queue_size: 10000\nservice:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [tail_sampling]\n      exporters: [otlp]\n";

/// `(trace ID, span ID)` → the exported span's trace state.
type SpanStates = BTreeMap<(Vec<u8>, Vec<u8>), String>;

#[derive(Clone, Default)]
struct StateSink {
    states: Arc<Mutex<SpanStates>>,
}

#[tonic::async_trait]
impl TraceService for StateSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut states = self.states.lock().unwrap();
        for span in request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            states.insert(
                (span.trace_id.clone(), span.span_id.clone()),
                span.trace_state.clone(),
            );
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// 1,200 three-span traces; every trace's spans share one of the trace-state shapes.
fn corpus(seed: u64) -> Vec<ExportTraceServiceRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut spans = Vec::new();
    for i in 0..1_200u32 {
        let trace_id: Vec<u8> = (0..16).map(|_| rng.random()).collect();
        let rv: u64 = rng.random::<u64>() & ((1 << 56) - 1);
        let trace_state = match i % 8 {
            0 | 1 => String::new(),
            2 => format!("ot=rv:{rv:014x}"),
            3 => format!("vendor=a1,ot=rv:{rv:014x};p:7,other=x"),
            4 => "ot=th:8".to_string(),
            5 => format!("ot=rv:{rv:014x};th:f"),
            6 => "congo=t61rcWkgMzE".to_string(),
            _ => "ot=th:zz,vendor=b".to_string(),
        };
        let error = i % 10 == 9;
        for n in 0..3u8 {
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: vec![n + 1, 0, 0, 0, (i >> 8) as u8, i as u8, 7, 7],
                parent_span_id: if n == 0 {
                    vec![]
                } else {
                    vec![1, 0, 0, 0, (i >> 8) as u8, i as u8, 7, 7]
                },
                trace_state: trace_state.clone(),
                name: format!("op-{n}"),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_010_000_000,
                status: Some(Status {
                    message: String::new(),
                    code: if error && n == 2 { 2 } else { 0 },
                }),
                ..Default::default()
            });
        }
    }
    spans
        .chunks(300)
        .map(|chunk| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(Value::StringValue("checkout".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: chunk.to_vec(),
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        })
        .collect()
}

async fn run(
    program: &std::path::Path,
    args: &[&str],
    requests: &[ExportTraceServiceRequest],
    dir: &std::path::Path,
    name: &str,
) -> SpanStates {
    let sink = StateSink::default();
    let sink_port = serve_trace_service(sink.clone()).await.port();
    let otlp_port = free_port();
    let running = start(program, args, otlp_port, sink_port, &[], dir, name).await;
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
        format!("http://127.0.0.1:{otlp_port}"),
    )
    .await
    .unwrap();
    for r in requests {
        client
            .export(r.clone())
            .await
            .unwrap_or_else(|e| panic!("{name} refused the corpus: {e}\n{}", running.log()));
    }
    // Decisions are due 1 s after each trace's first span; then the sink goes quiet.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = sink.states.lock().unwrap().len();
        if now == last {
            break;
        }
        last = now;
    }
    drop(running);
    sink.states.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn thresholds_in_tracestate_match_the_collector_span_for_span() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tracestate.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let requests = corpus(235);
    let collector_args = ["--config", config, GATE];
    let tailgate_args = ["gateway", "--config", config, GATE];
    let (theirs, ours) = tokio::join!(
        run(
            &collector,
            &collector_args,
            &requests,
            dir.path(),
            "collector"
        ),
        run(
            std::path::Path::new(BIN),
            &tailgate_args,
            &requests,
            dir.path(),
            "tailgate"
        ),
    );
    let with_th = theirs.values().filter(|s| s.contains("th:")).count();
    eprintln!(
        "collector kept {} spans ({with_th} with th), tailgate {}",
        theirs.len(),
        ours.len()
    );
    assert!(
        theirs.len() > 600 && with_th > 300,
        "the corpus exercises thresholds"
    );
    let differing: Vec<String> = theirs
        .iter()
        .filter(|(k, v)| ours.get(*k) != Some(*v))
        .take(10)
        .map(|((t, s), v)| {
            format!(
                "trace {} span {}: collector {v:?}, tailgate {:?}",
                hex(t),
                hex(s),
                ours.get(&(t.clone(), s.clone()))
            )
        })
        .collect();
    let only_ours = ours.keys().filter(|k| !theirs.contains_key(*k)).count();
    assert!(
        differing.is_empty() && only_ours == 0,
        "{} spans differ, {only_ours} kept only by tailgate; first:\n{}",
        theirs
            .iter()
            .filter(|(k, v)| ours.get(*k) != Some(*v))
            .count(),
        differing.join("\n")
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
