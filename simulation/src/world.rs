//! The simulated world: gateway hosts running the real `start_gateway`, an OTLP sink host,
//! and the traffic driver — plus what they share with the harness (handles, records, the
//! event log). Everything random comes from the run's seed; time only from tokio (turmoil's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailgate_cluster::gateway::{ClusterStart, start_gateway};
use tailgate_cluster::{ClusterNode, ClusterSettings};
use tailgate_config::{ComponentId, ExporterConfig, ProcessorConfig};
use tailgate_k8s::store::{MetadataStore, PodRecord};
use tailgate_k8s::{K8sAttributesStage, KubeMetadata};
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::consumer::{BoxFuture, Consumer};
use tailgate_pipeline::net::Network;
use tailgate_pipeline::sampling::TailSamplingStage;
use tailgate_pipeline::service::ComponentFactory;
use tailgate_routing::{LoadBalancer, Routes};
use tokio::sync::{Notify, watch};
use tonic::Code;

use crate::net::{SimNetwork, channel};
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

fn name_hash(name: &str) -> u64 {
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
async fn send(shared: &Shared, first: usize, spans: Vec<Span>) -> (bool, bool) {
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
            Ok(Ok(_)) => return (true, ambiguous),
            Ok(Err(s)) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                // Refused or not connected: nothing was taken.
            }
            // The request may have been processed before the failure.
            Ok(Err(_)) | Err(_) => ambiguous = true,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (false, ambiguous)
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
    for tick in 0..ticks {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for k in 0..traces_per_tick {
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
            let shared = Arc::clone(&shared);
            let _ = (tick, k);
            tasks.push(tokio::spawn(async move {
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
                let (ok, amb) = send(&shared, first, vec![root.clone()]).await;
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
                let (ok, amb) = send(&shared, first + 1, spans.clone()).await;
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
                    }));
                for copy in second {
                    let _ = copy.await;
                }
            }));
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

/// The agents of scenarios that send through them; each names one gateway in its resolver
/// (where it subscribes to the ring) and learns the others from the ring.
pub const AGENTS: [(&str, &str); 2] = [("a0", "g0"), ("a1", "g1")];
/// The pod the simulated Kubernetes API says the driver runs in.
pub const DRIVER_POD: &str = "shop-driver-7d9f-x2x9k";

fn agent_config(ring_source: &str) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:{OTLP_PORT}
processors:
  k8sattributes:
    extract:
      metadata: [k8s.pod.name, k8s.namespace.name]
    pod_association:
      - sources:
          - from: connection
  batch:
    send_batch_size: 200
    timeout: 100ms
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls:
          insecure: true
        timeout: 30s
        retry_on_failure:
          initial_interval: 100ms
          max_interval: 1s
          max_elapsed_time: 0s
    resolver:
      static:
        hostnames: [{ring_source}:{OTLP_PORT}]
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [k8sattributes, batch]
      exporters: [loadbalancing]
"#
    )
}

/// Builds an agent's components for the simulation: enrichment from a simulated pod source
/// (the store filled as the Kubernetes watchers would), routing over the simulated network.
struct SimAgentComponents {
    shared: Arc<Shared>,
    name: String,
}

impl ComponentFactory for SimAgentComponents {
    fn processor<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ProcessorConfig,
        next: Arc<dyn Consumer>,
        _opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>> {
        Box::pin(async move {
            let ProcessorConfig::K8sAttributes(k) = cfg else {
                anyhow::bail!("{id}: not simulated");
            };
            let mut store = MetadataStore::new();
            store.upsert_pod(PodRecord {
                name: DRIVER_POD.into(),
                namespace: "shop".into(),
                uid: "driver-uid".into(),
                ip: Some(turmoil::lookup("driver")),
                ..Default::default()
            });
            let (_tx, synced) = watch::channel(true);
            let metadata = KubeMetadata::detached(Arc::new(std::sync::RwLock::new(store)), synced);
            Ok(
                Arc::new(K8sAttributesStage::new(id.to_string(), k, metadata, next))
                    as Arc<dyn Consumer>,
            )
        })
    }

    fn exporter<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ExporterConfig,
        opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>> {
        Box::pin(async move {
            let ExporterConfig::LoadBalancing(lb) = cfg else {
                anyhow::bail!("{id}: not simulated");
            };
            let balancer =
                LoadBalancer::start(id.to_string(), lb, Arc::clone(&opts.network), opts.seed)
                    .await?;
            self.shared
                .agent_routes
                .lock()
                .unwrap()
                .insert(self.name.clone(), balancer.watch_routes());
            Ok(Arc::new(balancer) as Arc<dyn Consumer>)
        })
    }
}

/// The software of an agent host: the real agent pipeline, forever (agents do not restart in
/// these scenarios).
pub async fn agent_host(
    shared: Arc<Shared>,
    name: String,
    ring_source: String,
    seed: u64,
) -> turmoil::Result {
    let cfg =
        tailgate_config::load_str(&agent_config(&ring_source), "(simulation agent)", &|_| None)
            .map_err(|e| format!("simulation agent config: {e}"))?;
    let opts = ServiceOptions {
        seed: seed ^ name_hash(&name),
        network: Arc::new(SimNetwork),
        components: Some(Arc::new(SimAgentComponents {
            shared: Arc::clone(&shared),
            name: name.clone(),
        })),
        ..Default::default()
    };
    let _service = tailgate_pipeline::start(&cfg, opts)
        .await
        .map_err(|e| format!("{name}: {e:#}"))?;
    shared.endpoints.lock().unwrap().insert(name.clone());
    shared.log(format!("{name} started (ring from {ring_source})"));
    std::future::pending::<()>().await;
    Ok(())
}
