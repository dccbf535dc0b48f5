//! The traffic driver: traces of known fate (kept or dropped by their root span), sent at a
//! steady rate, with what was accepted recorded for the checker.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use crate::net::channel;
use crate::scenario::Duplicates;

use super::{OTLP_PORT, SentSpan, Shared, TraceKind};

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "sim")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends one request like an agent: to the preferred gateway, on failure to the next one the
/// resolver knows, with a pause; returns (accepted, ambiguous).
/// Returns (accepted, ambiguous, the gateway or agent that accepted).
async fn send(shared: &Shared, first: usize, spans: Vec<Span>) -> (bool, bool, String) {
    let req = request(spans);
    let mut ambiguous = false;
    for attempt in 0..40usize {
        let endpoints: Vec<String> = shared.endpoints.lock().unwrap().iter().cloned().collect();
        if endpoints.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let target = &endpoints[(first + attempt) % endpoints.len()];
        let mut client = TraceServiceClient::new(channel(&format!("{target}:{OTLP_PORT}")));
        match tokio::time::timeout(Duration::from_secs(3), client.export(req.clone())).await {
            Ok(Ok(_)) => return (true, ambiguous, target.clone()),
            Ok(Err(s)) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                // Refused or not connected: nothing was taken.
            }
            // The request may have been processed before the failure.
            Ok(Err(_)) | Err(_) => ambiguous = true,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (false, ambiguous, String::new())
}

/// Delivers an accepted request again, `after` later, through `send` (a gateway other than
/// the first delivery's). The copy is not recorded as sent: its spans were already accepted
/// once, so any second export of them is a duplicate (I2).
fn deliver_again(
    shared: &Arc<Shared>,
    first: usize,
    spans: Vec<Span>,
    after: Duration,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if send(&shared, first, spans).await.0 {
            *shared.duplicates_delivered.lock().unwrap() += 1;
        }
    })
}

/// The traffic: `traces_per_tick` new traces every 100 ms for `duration`. Each trace's root
/// span (which carries what decides it) goes first; its children follow 50–400 ms later to
/// a different gateway, so forwarding is always exercised.
pub async fn driver(
    shared: Arc<Shared>,
    seed: u64,
    duration: Duration,
    traces_per_tick: u32,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd21e_7e25);
    // Its own generator: scenarios without copies draw exactly the traffic they always did.
    let mut dup_rng = StdRng::seed_from_u64(seed ^ 0xd0b1_e5e7);
    let duplicates = *shared.duplicates.lock().unwrap();
    let ticks = (duration.as_millis() / 100) as u64;
    let mut tasks = Vec::new();
    for _ in 0..ticks {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let burst = *shared.burst.lock().unwrap();
        for _ in 0..traces_per_tick + burst {
            let trace: [u8; 16] = rng.random();
            let kind = TraceKind {
                error: rng.random_range(0..100) < 10,
                flagged: rng.random_range(0..100) < 20,
            };
            let root_id: [u8; 8] = rng.random();
            let children: Vec<[u8; 8]> = (0..3).map(|_| rng.random()).collect();
            let gap = Duration::from_millis(rng.random_range(50..400));
            let first = rng.random_range(0..16usize);
            // (root, children): a second delivery after this delay, if any.
            let mut copy = || {
                duplicates.and_then(|d: Duplicates| {
                    (dup_rng.random_range(0..100) < d.percent).then(|| {
                        Duration::from_millis(
                            dup_rng.random_range(0..d.delay_max.as_millis() as u64),
                        )
                    })
                })
            };
            let copies = (copy(), copy());
            shared.kinds.lock().unwrap().insert(trace, kind);
            let planned = PlannedTrace {
                trace,
                kind,
                root_id,
                children,
                gap,
                first,
                copies,
            };
            tasks.push(tokio::spawn(send_trace(Arc::clone(&shared), planned)));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    *shared.driver_done.lock().unwrap() = true;
    if duplicates.is_some() {
        let n = *shared.duplicates_delivered.lock().unwrap();
        shared.log(format!("driver done ({n} requests delivered twice)"));
    } else {
        shared.log("driver done".into());
    }
    Ok(())
}

/// One trace as the driver drew it, before it is sent.
struct PlannedTrace {
    trace: [u8; 16],
    kind: TraceKind,
    root_id: [u8; 8],
    children: Vec<[u8; 8]>,
    /// Between the root and the children.
    gap: Duration,
    /// The gateway or agent the first request goes to (then round-robin).
    first: usize,
    /// (root, children): a second delivery after this delay, if any.
    copies: (Option<Duration>, Option<Duration>),
}

/// Sends the root, then after `gap` the children, recording what was accepted.
async fn send_trace(shared: Arc<Shared>, planned: PlannedTrace) {
    let PlannedTrace {
        trace,
        kind,
        root_id,
        children,
        gap,
        first,
        copies,
    } = planned;
    let mut root = Span {
        trace_id: trace.to_vec(),
        span_id: root_id.to_vec(),
        name: "root".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        ..Default::default()
    };
    if kind.error {
        root.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
    }
    if kind.flagged {
        root.attributes.push(kv("sim.keep", "yes"));
    }
    let sent_at = turmoil::sim_elapsed().unwrap_or_default();
    let (ok, amb, to) = send(&shared, first, vec![root.clone()]).await;
    let mut second = Vec::new();
    if ok && let Some(after) = copies.0 {
        second.push(deliver_again(&shared, first + 2, vec![root], after));
    }
    shared.sent.lock().unwrap().push(SentSpan {
        trace,
        span: root_id,
        accepted: ok,
        ambiguous: amb,
        at: sent_at,
        to,
    });
    if !ok {
        return;
    }
    tokio::time::sleep(gap).await;
    let spans: Vec<Span> = children
        .iter()
        .map(|c| Span {
            trace_id: trace.to_vec(),
            span_id: c.to_vec(),
            parent_span_id: root_id.to_vec(),
            name: "child".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        })
        .collect();
    let sent_at = turmoil::sim_elapsed().unwrap_or_default();
    let (ok, amb, to) = send(&shared, first + 1, spans.clone()).await;
    if ok && let Some(after) = copies.1 {
        second.push(deliver_again(&shared, first + 3, spans, after));
    }
    shared
        .sent
        .lock()
        .unwrap()
        .extend(children.iter().map(|c| SentSpan {
            trace,
            span: *c,
            accepted: ok,
            ambiguous: amb,
            at: sent_at,
            to: to.clone(),
        }));
    for copy in second {
        let _ = copy.await;
    }
}
