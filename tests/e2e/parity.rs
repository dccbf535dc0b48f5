//! Goal: the same `tail_sampling` YAML keeps the same traces in Tailgate as in the
//! OpenTelemetry Collector — the collector itself is the oracle, not our reading of its docs.
//! Method: one config file with a pipeline per policy case (each a `tail_sampling/<case>` with
//! its own `otlp/<case>` exporter whose `x-parity-case` header names the case) runs unchanged
//! in the reference collector (`tests/peers/`, built from the Go module proxy) and in
//! `tailgate gateway`; a seeded corpus of traces that exercises every deterministic policy
//! type and option goes to both as the same OTLP requests; the kept trace IDs per case must
//! be identical, and so must the `tailsampling.policy` / `tailsampling.composite_policy`
//! scope attributes both write under the collector's `recordpolicy` gate. Time-dependent
//! policies (rate and bytes limits, a composite whose budget binds) get a paced load, sent to
//! both at once, and must keep as many spans as the collector within a stated tolerance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{BIN, ByTag, TaggedSink, free_port};

/// Each policy case: its name (pipeline, processor and exporter suffix) and its policies.
const CASES: &[(&str, &str)] = &[
    ("always", "[{name: all, type: always_sample}]"),
    (
        "latency",
        "[{name: slow, type: latency, latency: {threshold_ms: 1000}}]",
    ),
    (
        "latency_upper",
        "[{name: band, type: latency, latency: {threshold_ms: 500, upper_threshold_ms: 2000}}]",
    ),
    (
        "numeric",
        "[{name: 5xx, type: numeric_attribute, numeric_attribute: {key: http.status_code, min_value: 500, max_value: 599}}]",
    ),
    (
        "numeric_invert",
        "[{name: not-5xx, type: numeric_attribute, numeric_attribute: {key: http.status_code, min_value: 500, max_value: 599, invert_match: true}}]",
    ),
    (
        "probabilistic",
        "[{name: p20, type: probabilistic, probabilistic: {sampling_percentage: 20}}]",
    ),
    (
        "probabilistic_salt",
        "[{name: p33, type: probabilistic, probabilistic: {hash_salt: tailgate, sampling_percentage: 33.3}}]",
    ),
    (
        "status_error",
        "[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]",
    ),
    (
        "status_ok_unset",
        "[{name: fine, type: status_code, status_code: {status_codes: [OK, UNSET]}}]",
    ),
    (
        "string",
        "[{name: shop, type: string_attribute, string_attribute: {key: http.route, values: [/checkout, /cart]}}]",
    ),
    (
        "string_regex",
        "[{name: api, type: string_attribute, string_attribute: {key: http.route, values: ['^/api/v[0-9]+/.*'], enabled_regex_matching: true}}]",
    ),
    (
        "string_invert",
        "[{name: not-health, type: string_attribute, string_attribute: {key: http.route, values: [/health], invert_match: true}}]",
    ),
    (
        "string_resource",
        "[{name: payments, type: string_attribute, string_attribute: {key: service.name, values: [payments]}}]",
    ),
    (
        "boolean",
        "[{name: retried, type: boolean_attribute, boolean_attribute: {key: retry, value: true}}]",
    ),
    (
        "span_count",
        "[{name: mid, type: span_count, span_count: {min_spans: 3, max_spans: 5}}]",
    ),
    (
        "trace_state",
        "[{name: rojo, type: trace_state, trace_state: {key: rojo, values: [00f067aa0ba902b7]}}]",
    ),
    (
        "and",
        "[{name: checkout-errors, type: and, and: {and_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: c, type: string_attribute, string_attribute: {key: http.route, values: [/checkout]}}]}}]",
    ),
    (
        "not",
        "[{name: no-errors, type: not, not: {not_sub_policy: {name: e, type: status_code, status_code: {status_codes: [ERROR]}}}}]",
    ),
    (
        "drop",
        "[{name: all, type: always_sample}, {name: no-health, type: drop, drop: {drop_sub_policy: [{name: h, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}}]",
    ),
    (
        "invert_beside_others",
        "[{name: all, type: always_sample}, {name: not-health, type: string_attribute, string_attribute: {key: http.route, values: [/health], invert_match: true}}]",
    ),
    ("trace_flags", "[{name: sampled-flag, type: trace_flags}]"),
    (
        "composite",
        "[{name: tiers, type: composite, composite: {max_total_spans_per_second: 1000000, policy_order: [rest, errors, slow], composite_sub_policy: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: slow, type: latency, latency: {threshold_ms: 2000}}, {name: rest, type: probabilistic, probabilistic: {sampling_percentage: 10}}], rate_allocation: [{policy: errors, percent: 50}, {policy: slow, percent: 25}]}}]",
    ),
    (
        "ottl",
        "[{name: cart, type: ottl_condition, ottl_condition: {error_mode: ignore, span: ['attributes[\"http.route\"] == \"/cart\"']}}]",
    ),
    (
        "first_match",
        "[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: p10, type: probabilistic, probabilistic: {sampling_percentage: 10}}]",
    ),
    (
        "article",
        "[{name: keep-errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: keep-slow, type: latency, latency: {threshold_ms: 2000}}, {name: keep-debug-flagged, type: string_attribute, string_attribute: {key: sampling.priority, values: [always_on]}}, {name: sample-normal, type: probabilistic, probabilistic: {sampling_percentage: 5}}]",
    ),
];

/// Every kept trace leaves as its own export request (no batch processor), all within the
/// same second: the default queue of 1,000 requests would overflow on the collector.
const EXPORT_QUEUE_REQUESTS: usize = 10_000;

/// The one config both systems run, a pipeline per case; ports come from the environment.
fn parity_config(cases: &[(&str, &str)]) -> String {
    let mut processors = String::new();
    let mut exporters = String::new();
    let mut pipelines = String::new();
    for (case, policies) in cases {
        let first_match = if *case == "first_match" {
            "\n    sample_on_first_match: true"
        } else {
            ""
        };
        processors.push_str(&format!(
            "  tail_sampling/{case}:\n    decision_wait: 2s{first_match}\n    policies: {policies}\n"
        ));
        exporters.push_str(&format!(
            "  otlp/{case}:\n    endpoint: 127.0.0.1:${{env:PARITY_SINK_PORT}}\n    tls:\n      insecure: true\n    headers:\n      x-parity-case: {case}\n    sending_queue:\n      queue_size: {EXPORT_QUEUE_REQUESTS}\n"
        ));
        pipelines.push_str(&format!(
            "    traces/{case}:\n      receivers: [otlp]\n      processors: [tail_sampling/{case}]\n      exporters: [otlp/{case}]\n"
        ));
    }
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:${{env:PARITY_OTLP_PORT}}\nprocessors:\n{processors}exporters:\n{exporters}service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n{pipelines}"
    )
}

/// The reference collector's binary (`tests/peers/build-collector.sh`).
pub fn reference_collector() -> PathBuf {
    crate::support::peer_binary("build-collector.sh")
}

/// A system under test, killed on drop.
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `program` with `PARITY_OTLP_PORT`, `PARITY_SINK_PORT` and `env` set, and waits
/// until its OTLP port answers.
pub async fn start(
    program: &std::path::Path,
    args: &[&str],
    otlp_port: u16,
    sink_port: u16,
    env: &[(&str, &str)],
    dir: &std::path::Path,
    name: &str,
) -> Running {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(program)
        .args(args)
        .env("PARITY_OTLP_PORT", otlp_port.to_string())
        .env("PARITY_SINK_PORT", sink_port.to_string())
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let running = Running { child, log };
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", otlp_port))
            .await
            .is_ok()
        {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} did not open its OTLP port; log:\n{}", running.log());
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// `traces` seeded traces of 1–7 spans, every trace in one request with its service: routes,
/// status codes, HTTP codes, booleans, trace states and durations spread so that each case
/// keeps some traces and drops others.
pub fn corpus(seed: u64, traces: usize) -> Vec<ExportTraceServiceRequest> {
    const ROUTES: &[&str] = &[
        "/checkout",
        "/cart",
        "/health",
        "/api/v1/users",
        "/api/v2/orders",
        "/apix/v1",
        "/search",
    ];
    const SERVICES: &[&str] = &["payments", "frontend", "inventory"];
    const TRACE_STATES: &[&str] = &[
        "",
        "rojo=00f067aa0ba902b7",
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "rojo=1111",
        "congo=t61rcWkgMzE",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let start_ns: u64 = 1_764_000_000_000_000_000;
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for _ in 0..traces {
        let trace_id: Vec<u8> = (0..16).map(|_| rng.random::<u8>()).collect();
        let spans = rng.random_range(1..=7usize);
        let root_ms = [10u64, 400, 700, 1500, 2200, 3000][rng.random_range(0..6)];
        let t0 = start_ns + rng.random_range(0..1_000_000_000u64);
        let trace_state = TRACE_STATES[rng.random_range(0..TRACE_STATES.len())];
        let service = SERVICES[rng.random_range(0..SERVICES.len())];
        let root_id: Vec<u8> = (0..8).map(|_| rng.random::<u8>()).collect();
        for i in 0..spans {
            let span_id = if i == 0 {
                root_id.clone()
            } else {
                (0..8).map(|_| rng.random::<u8>()).collect()
            };
            let (start, end) = if i == 0 {
                (t0, t0 + root_ms * 1_000_000)
            } else {
                let s = t0 + rng.random_range(0..root_ms.max(1)) * 1_000_000 / 2;
                (s, s + rng.random_range(1..50u64) * 1_000_000)
            };
            let status_code = match rng.random_range(0..10) {
                0 => status::StatusCode::Error,
                1..=3 => status::StatusCode::Ok,
                _ => status::StatusCode::Unset,
            };
            let mut attributes = vec![
                kv(
                    "http.route",
                    Value::StringValue(ROUTES[rng.random_range(0..ROUTES.len())].into()),
                ),
                kv(
                    "http.status_code",
                    Value::IntValue(
                        [200i64, 201, 404, 499, 500, 503, 599, 600][rng.random_range(0..8)],
                    ),
                ),
            ];
            if rng.random_bool(0.3) {
                attributes.push(kv("retry", Value::BoolValue(rng.random_bool(0.5))));
            }
            if rng.random_bool(0.05) {
                attributes.push(kv(
                    "sampling.priority",
                    Value::StringValue("always_on".into()),
                ));
            }
            by_service.entry(service).or_default().push(Span {
                trace_id: trace_id.clone(),
                span_id,
                parent_span_id: if i == 0 { Vec::new() } else { root_id.clone() },
                trace_state: if i == 0 {
                    trace_state.into()
                } else {
                    String::new()
                },
                name: format!("op-{i}"),
                // W3C sampled flag on some spans (the low byte), "has is_remote" on all.
                flags: 0x100 | u32::from(rng.random_bool(0.15)),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: Some(Status {
                    code: status_code as i32,
                    message: String::new(),
                }),
                ..Default::default()
            });
        }
    }
    let mut requests = Vec::new();
    for (service, spans) in by_service {
        for chunk in spans.chunks(500) {
            requests.push(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", Value::StringValue(service.into()))],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: chunk.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            });
        }
    }
    requests
}

/// Distinct traces in the corpus.
fn requests_traces(requests: &[ExportTraceServiceRequest]) -> usize {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.trace_id.clone())
        .collect::<BTreeSet<_>>()
        .len()
}

/// The collector's gate for `tailsampling.policy` and friends; both systems take it.
const RECORD_POLICY_GATE: &str = "--feature-gates=processor.tailsamplingprocessor.recordpolicy";

/// What one system kept per case: trace IDs, and the scope attributes each kept trace's spans
/// came under (`tailsampling.policy`, `tailsampling.composite_policy`).
#[derive(Default)]
struct Kept {
    traces: BTreeMap<String, BTreeSet<Vec<u8>>>,
    scope_attributes: ByTag<BTreeSet<String>>,
}

/// How one system is started on a config: its binary and the arguments around the path.
struct System<'a> {
    name: &'static str,
    program: &'a std::path::Path,
    args_before_config: &'static [&'static str],
}

impl System<'_> {
    fn args<'c>(&self, config: &'c str) -> Vec<&'c str> {
        let mut args = self.args_before_config.to_vec();
        args.extend([config, RECORD_POLICY_GATE]);
        args
    }
}

/// The two systems under test.
fn systems(collector: &std::path::Path) -> [System<'_>; 2] {
    [
        System {
            name: "collector",
            program: collector,
            args_before_config: &["--config"],
        },
        System {
            name: "tailgate",
            program: std::path::Path::new(BIN),
            args_before_config: &["gateway", "--config"],
        },
    ]
}

/// Runs `system` on `config`, sends `requests` (each batch, then the pause after it), and
/// returns what it kept per case once every decision is out.
async fn kept_by(
    system: &System<'_>,
    config: &std::path::Path,
    requests: &[(Vec<ExportTraceServiceRequest>, Duration)],
    dir: &std::path::Path,
) -> Kept {
    let (sink, sink_port) = TaggedSink::start("x-parity-case").await;
    let otlp_port = free_port();
    let args = system.args(config.to_str().unwrap());
    let running = start(
        system.program,
        &args,
        otlp_port,
        sink_port,
        &[],
        dir,
        system.name,
    )
    .await;
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
        format!("http://127.0.0.1:{otlp_port}"),
    )
    .await
    .unwrap()
    .max_decoding_message_size(64 * 1024 * 1024);
    for (batch, pause) in requests {
        for r in batch {
            client.export(r.clone()).await.unwrap_or_else(|e| {
                panic!("{} refused the corpus: {e}\n{}", system.name, running.log())
            });
        }
        tokio::time::sleep(*pause).await;
    }
    // Every decision is due 2 s after a trace's first span; the sink then goes quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sink.settle(Duration::from_secs(2)).await;
    let kept = Kept {
        traces: sink.traces.lock().unwrap().clone(),
        scope_attributes: sink.scope_attributes.lock().unwrap().clone(),
    };
    drop(running);
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn every_deterministic_policy_keeps_the_same_traces_as_the_collector() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("parity.yaml");
    std::fs::write(&config, parity_config(CASES)).unwrap();
    let requests = corpus(2026, 1_500);
    let traces_sent = requests_traces(&requests);
    let sent = [(requests, Duration::ZERO)];
    let [c, t] = systems(&collector);
    let (theirs, ours) = tokio::join!(
        kept_by(&c, &config, &sent, dir.path()),
        kept_by(&t, &config, &sent, dir.path()),
    );
    let mut differences = Vec::new();
    for (case, _) in CASES {
        let th = theirs.traces.get(*case).cloned().unwrap_or_default();
        let o = ours.traces.get(*case).cloned().unwrap_or_default();
        eprintln!(
            "{case:<22} collector kept {:>5}, tailgate kept {:>5}",
            th.len(),
            o.len()
        );
        if th != o {
            differences.push(format!(
                "{case}: collector kept {} traces, tailgate {}; only the collector: {}, only tailgate: {}",
                th.len(),
                o.len(),
                th.difference(&o).count(),
                o.difference(&th).count()
            ));
        }
        // `tailsampling.policy` (and `tailsampling.composite_policy`) name the same policy on
        // every trace both kept.
        let none = BTreeMap::new();
        let their_attributes = theirs.scope_attributes.get(*case).unwrap_or(&none);
        let our_attributes = ours.scope_attributes.get(*case).unwrap_or(&none);
        let disagree: Vec<String> = th
            .intersection(&o)
            .filter(|id| their_attributes.get(*id) != our_attributes.get(*id))
            .take(3)
            .map(|id| {
                format!(
                    "collector {:?} vs tailgate {:?}",
                    their_attributes.get(id),
                    our_attributes.get(id)
                )
            })
            .collect();
        if !disagree.is_empty() {
            differences.push(format!(
                "{case}: recorded policies differ, e.g. {}",
                disagree.join("; ")
            ));
        }
        assert!(
            th.iter().all(|id| their_attributes
                .get(id)
                .is_some_and(|a| a.iter().any(|kv| kv.starts_with("tailsampling.policy=")))),
            "{case}: the collector recorded no policy on some kept trace; is the gate on?"
        );
        // Every case must keep some traces and drop others, except those whose point is to
        // keep everything (an inverted match beside always_sample does not veto).
        let keeps_all = matches!(*case, "always" | "invert_beside_others");
        assert!(
            !th.is_empty() && (keeps_all || th.len() < traces_sent),
            "{case}: the corpus does not exercise it (the collector kept {} traces)",
            th.len()
        );
    }
    assert!(
        differences.is_empty(),
        "kept sets differ:\n{}",
        differences.join("\n")
    );
}

/// Time-dependent cases: each limit is a third of what arrives, so it binds all along.
const LIMIT_CASES: &[(&str, &str)] = &[
    (
        "rate",
        "[{name: spans, type: rate_limiting, rate_limiting: {spans_per_second: 300}}]",
    ),
    (
        "rate_burst",
        "[{name: spans, type: rate_limiting, rate_limiting: {spans_per_second: 300, burst_capacity: 1200}}]",
    ),
    (
        "bytes",
        "[{name: bytes, type: bytes_limiting, bytes_limiting: {bytes_per_second: 60000}}]",
    ),
    (
        "composite_bound",
        "[{name: tiers, type: composite, composite: {max_total_spans_per_second: 400, composite_sub_policy: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: rest, type: always_sample}], rate_allocation: [{policy: errors, percent: 25}, {policy: rest, percent: 75}]}}]",
    ),
];

/// How far the kept span counts may differ, as a fraction of the collector's. Both systems
/// see the same paced load; the difference left is when each evaluates: the collector decides
/// every trace that came due in one tick a second, Tailgate each trace at its own deadline,
/// so the first and last second of the window fall differently (about 1 s of an ~8 s window
/// at worst, some 12%).
const LIMIT_TOLERANCE: f64 = 0.15;

/// Seconds of paced sending.
const LIMIT_SEND_SECONDS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn rate_and_bytes_limits_keep_as_much_as_the_collector_within_tolerance() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.yaml");
    std::fs::write(&config, parity_config(LIMIT_CASES)).unwrap();
    // About 1,200 spans (~200 kB) a second in thirty requests, for six seconds: three to four
    // times each limit; the same requests, paced alike, to both systems at once.
    let per_tick = 30;
    let batches: Vec<(Vec<ExportTraceServiceRequest>, Duration)> = (0..LIMIT_SEND_SECONDS * 10)
        .map(|tick| (corpus(7_000 + tick, per_tick), Duration::from_millis(100)))
        .collect();
    let spans_sent: usize = batches
        .iter()
        .flat_map(|(b, _)| b)
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    let [c, t] = systems(&collector);
    let (theirs, ours) = tokio::join!(
        kept_by(&c, &config, &batches, dir.path()),
        kept_by(&t, &config, &batches, dir.path()),
    );
    let spans_of = |kept: &Kept, case: &str| -> usize {
        let ids = kept.traces.get(case).cloned().unwrap_or_default();
        batches
            .iter()
            .flat_map(|(b, _)| b)
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .filter(|s| ids.contains(&s.trace_id))
            .count()
    };
    let mut outside = Vec::new();
    for (case, _) in LIMIT_CASES {
        let (th, o) = (spans_of(&theirs, case), spans_of(&ours, case));
        let ratio = o as f64 / th.max(1) as f64;
        eprintln!(
            "{case:<16} of {spans_sent} spans the collector kept {th:>5}, tailgate {o:>5} ({ratio:.3}x)"
        );
        assert!(
            th > 0 && th < spans_sent * 2 / 3,
            "{case}: the limit does not bind (the collector kept {th} of {spans_sent} spans)"
        );
        if (ratio - 1.0).abs() > LIMIT_TOLERANCE {
            outside.push(format!(
                "{case}: collector {th}, tailgate {o} ({ratio:.3}x)"
            ));
        }
    }
    assert!(
        outside.is_empty(),
        "kept spans differ by more than {:.0}%:\n{}",
        LIMIT_TOLERANCE * 100.0,
        outside.join("\n")
    );
}
