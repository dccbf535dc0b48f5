//! The simulated world: gateway hosts running the real `start_gateway`, an OTLP sink host,
//! and the traffic driver — plus what they share with the harness (handles, records, the
//! event log). Everything random comes from the run's seed; time only from tokio (turmoil's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailgate_cluster::gateway::{ClusterStart, start_gateway};
use tailgate_cluster::{ClusterNode, ClusterSettings};
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::net::Network;
use tailgate_pipeline::sampling::TailSamplingStage;
use tailgate_routing::Routes;
use tokio::sync::{Notify, watch};

mod agent;
mod driver;

pub use agent::{AGENTS, DRIVER_POD, agent_host};
pub use driver::driver;

use crate::net::SimNetwork;
use crate::scenario::Duplicates;

pub const OTLP_PORT: u16 = 4317;
pub const CLUSTER_PORT: u16 = 4320;
/// The seed gateways every `--join` list names.
pub const SEEDS: [&str; 3] = ["g0", "g1", "g2"];
/// `--shutdown-timeout` of the simulated gateways (a failing sink can hold exports that long).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Budget of each gateway's sampling buffer (I7 checks it is never exceeded).
pub const BUFFER_LIMIT_MIB: u64 = 64;

/// A running gateway, as the harness sees it.
#[derive(Clone)]
pub struct NodeHandle {
    pub node: ClusterNode,
    pub stage: Arc<TailSamplingStage>,
}

/// One span as the driver sent it.
#[derive(Debug, Clone)]
pub struct SentSpan {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    pub accepted: bool,
    /// A retry followed an ambiguous failure: a second copy may legitimately exist.
    pub ambiguous: bool,
    pub at: Duration,
    /// The gateway (or agent) that accepted it; empty if none did.
    pub to: String,
}

/// A trace's content that decides its fate (on the root span, sent first).
#[derive(Debug, Clone, Copy)]
pub struct TraceKind {
    pub error: bool,
    pub flagged: bool,
}

impl TraceKind {
    /// The policies keep errors and flagged traces; nothing else.
    pub fn keep(self) -> bool {
        self.error || self.flagged
    }
}

/// One span the sink received.
#[derive(Debug, Clone)]
pub struct Exported {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    pub by: String,
    pub at: Duration,
    /// `k8s.pod.name` of its resource (set by an agent's enrichment).
    pub pod: Option<String>,
}

/// How the sink behaves (the slow/failing exporter fault).
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkMode {
    pub fail_percent: u32,
    pub delay: Duration,
}

#[derive(Default)]
pub struct Shared {
    pub events: Mutex<Vec<String>>,
    pub nodes: Mutex<BTreeMap<String, NodeHandle>>,
    pub stops: Mutex<BTreeMap<String, Arc<Notify>>>,
    pub incarnations: Mutex<BTreeMap<String, u64>>,
    pub sent: Mutex<Vec<SentSpan>>,
    pub kinds: Mutex<BTreeMap<[u8; 16], TraceKind>>,
    pub exported: Mutex<Vec<Exported>>,
    pub sink_mode: Mutex<SinkMode>,
    pub skew_ms: Mutex<BTreeMap<String, i64>>,
    /// Gateways the driver may send to (what an agent's resolver would return).
    pub endpoints: Mutex<BTreeSet<String>>,
    pub driver_done: Mutex<bool>,
    /// The driver sends to agents (which route by the ring), not to gateways.
    pub via_agents: Mutex<bool>,
    /// Each agent's current routes (I6 checks agents converge on the gateways' epoch).
    pub agent_routes: Mutex<BTreeMap<String, watch::Receiver<Routes>>>,
    /// The driver delivers some accepted requests a second time (`duplicate-delivery`).
    pub duplicates: Mutex<Option<Duplicates>>,
    /// Second deliveries the gateways accepted.
    pub duplicates_delivered: Mutex<u64>,
    /// `cluster.replication_factor` of every gateway (0 is read as 1).
    pub replication_factor: Mutex<u8>,
    /// Extra traces per driver tick while a burst lasts.
    pub burst: Mutex<u32>,
}

impl Shared {
    /// Logs from inside a host (its simulated time).
    pub fn log(&self, line: String) {
        self.log_at(turmoil::sim_elapsed().unwrap_or_default(), line);
    }

    /// Logs from the harness, which knows the time.
    pub fn log_at(&self, t: Duration, line: String) {
        self.events
            .lock()
            .unwrap()
            .push(format!("{:>8.3} {line}", t.as_secs_f64()));
    }

    pub fn stop_signal(&self, name: &str) -> Arc<Notify> {
        Arc::clone(
            self.stops
                .lock()
                .unwrap()
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Notify::new())),
        )
    }
}

fn gateway_config(name: &str) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:{OTLP_PORT}
processors:
  tail_sampling:
    decision_wait: 4s
    decision_wait_after_root_received: 1s
    buffer_limit_mib: {BUFFER_LIMIT_MIB}
    shards: 2
    policies:
      - name: errors
        type: status_code
        status_code:
          status_codes: [ERROR]
      - name: flagged
        type: string_attribute
        string_attribute:
          key: sim.keep
          values: ["yes"]
  attributes/node:
    actions:
      - key: tailgate.exported_by
        value: {name}
        action: insert
  batch:
    send_batch_size: 200
    timeout: 200ms
exporters:
  otlp/sink:
    endpoint: sink:{OTLP_PORT}
    tls:
      insecure: true
    timeout: 2s
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling, attributes/node, batch]
      exporters: [otlp/sink]
"#
    )
}

pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The software of a gateway host: runs until its stop signal, then shuts down gracefully.
pub async fn gateway_host(shared: Arc<Shared>, name: String, seed: u64) -> turmoil::Result {
    let incarnation = {
        let mut inc = shared.incarnations.lock().unwrap();
        let n = inc.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let net: Arc<dyn Network> = Arc::new(SimNetwork);
    let (incoming, local_addr) = net.bind(&format!("0.0.0.0:{CLUSTER_PORT}")).await?;
    let cfg = tailgate_config::load_str(&gateway_config(&name), "(simulation)", &|_| None)
        .map_err(|e| format!("simulation config: {e}"))?;
    let join: Vec<String> = SEEDS
        .iter()
        .map(|s| format!("{s}:{CLUSTER_PORT}"))
        .collect();
    let mut settings = ClusterSettings::new(
        &name,
        &format!("{name}:{CLUSTER_PORT}"),
        &format!("{name}:{OTLP_PORT}"),
        join,
    );
    settings.seed = seed ^ name_hash(&name) ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    settings.member_timeout = Duration::from_secs(2);
    settings.ring_debounce = Duration::from_millis(300);
    settings.replication_factor = (*shared.replication_factor.lock().unwrap()).max(1);
    let skew = shared
        .skew_ms
        .lock()
        .unwrap()
        .get(&name)
        .copied()
        .unwrap_or(0);
    let wall_clock = Arc::new(move || {
        let now = turmoil::since_epoch().unwrap_or_default().as_millis() as i64;
        (now + skew).max(0) as u64
    });
    let opts = ServiceOptions {
        seed: settings.seed,
        network: Arc::clone(&net),
        ..Default::default()
    };
    let cluster = ClusterStart {
        settings,
        incoming,
        local_addr,
        network: Arc::clone(&net),
        wall_clock,
    };
    let gateway = start_gateway(&cfg, opts, Some(cluster))
        .await
        .map_err(|e| format!("{name}: {e:#}"))?;
    let handle = NodeHandle {
        node: gateway.node.clone().expect("cluster gateway"),
        stage: Arc::clone(&gateway.service.samplers()[0]),
    };
    shared.nodes.lock().unwrap().insert(name.clone(), handle);
    if !*shared.via_agents.lock().unwrap() {
        shared.endpoints.lock().unwrap().insert(name.clone());
    }
    shared.log(format!("{name} started (incarnation {incarnation})"));
    shared.stop_signal(&name).notified().await;
    shared.endpoints.lock().unwrap().remove(&name);
    shared.log(format!("{name} shutting down"));
    gateway.shutdown(SHUTDOWN_TIMEOUT).await;
    shared.nodes.lock().unwrap().remove(&name);
    shared.log(format!("{name} stopped"));
    Ok(())
}

/// The backend: records every span with the gateway that exported it.
#[derive(Clone)]
struct SinkService {
    shared: Arc<Shared>,
    rng: Arc<Mutex<StdRng>>,
}

#[tonic::async_trait]
impl TraceService for SinkService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mode = *self.shared.sink_mode.lock().unwrap();
        if !mode.delay.is_zero() {
            tokio::time::sleep(mode.delay).await;
        }
        if mode.fail_percent > 0
            && self.rng.lock().unwrap().random_range(0..100) < mode.fail_percent
        {
            return Err(tonic::Status::unavailable("sink failing (simulated)"));
        }
        let at = turmoil::sim_elapsed().unwrap_or_default();
        let mut out = self.shared.exported.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let pod = rs.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "k8s.pod.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(v) => Some(v.clone()),
                        _ => None,
                    })
            });
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let by = s
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "tailgate.exported_by")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(v) => Some(v.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    out.push(Exported {
                        trace: s.trace_id.as_slice().try_into().unwrap_or([0; 16]),
                        span: s.span_id.as_slice().try_into().unwrap_or([0; 8]),
                        by,
                        at,
                        pod: pod.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn sink_host(shared: Arc<Shared>, seed: u64) -> turmoil::Result {
    let (incoming, _) = SimNetwork.bind(&format!("0.0.0.0:{OTLP_PORT}")).await?;
    let svc = SinkService {
        shared,
        rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed ^ 0x51_4c))),
    };
    tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(svc)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(64 << 20),
        )
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
