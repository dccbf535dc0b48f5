//! Building and running everything a [`Config`] describes, and shutting it down in order.
//!
//! Start: exporters → processor stages (built back to front) → receivers → extensions.
//! Shutdown: receivers stop taking requests (in-flight ones finish) → each pipeline flushes
//! stage by stage into its exporters → exporters drain their queues until the deadline, and
//! count what they could not send as failed (`reason="shutdown"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use metrics::gauge;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tailgate_config::components::MetricsLevel;
use tailgate_config::sampling::TailSamplingConfig;
use tailgate_config::{
    ComponentId, Config, ExporterConfig, ExtensionConfig, PipelineConfig, ProcessorConfig,
    ReceiverConfig,
};
use tailgate_processors::attributes::AttributesProcessor;
use tailgate_processors::batch::Batcher;
use tailgate_processors::filter::FilterProcessor;
use tailgate_processors::memory::MemoryLimits;
use tailgate_processors::resource::ResourceProcessor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::cluster::ClusterLink;
use crate::consumer::{BoxFuture, Consumer};
use crate::exporter::{ExportFork, FanOut, ManagedExporter, build_exporter, queue_and_retry};
use crate::extension::health::Health;
use crate::memory::{MemorySource, MemoryStage, ProcessRss, total_memory_bytes};
use crate::net::Network;
use crate::receiver::Ingest;
use crate::receiver::grpc::OtlpGrpcService;
use crate::sampling::{BUFFER_LIMIT_MIB_DEFAULT, SamplingSetup, TailSamplingStage};
use crate::stages::{BatchStage, SyncStage, Tee};
use crate::telemetry::PROCESS_UPTIME;

/// HTTP/2 flow-control windows and frame size of the OTLP/gRPC receiver.
const GRPC_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
const GRPC_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
const GRPC_FRAME_BYTES_MAX: u32 = 1024 * 1024;

/// Knobs that are not in the config file.
#[derive(Clone)]
pub struct ServiceOptions {
    /// Seeds every random choice (retry jitter), so a run can be replayed.
    pub seed: u64,
    /// Where the memory limiter reads memory use (the binary's global allocator); `None` =
    /// this process's RSS for every number.
    pub memory_source: Option<Arc<dyn MemorySource>>,
    /// The gateway cluster `tail_sampling` routes by; `None` = a single gateway.
    pub cluster: Option<Arc<dyn ClusterLink>>,
    /// Adds gRPC services to every OTLP/gRPC receiver's port (the cluster's `WatchRing`).
    pub grpc_services: Option<GrpcServices>,
    /// Where OTLP/gRPC receivers listen and gRPC exporters connect (the simulator's network
    /// under simulation). HTTP listeners always use TCP.
    pub network: Arc<dyn Network>,
    /// Builds `k8sattributes` and `loadbalancing`; `None` = a config naming them fails to start.
    pub components: Option<Arc<dyn ComponentFactory>>,
}

/// Builds the components that live in other crates (the agent's `k8sattributes` and
/// `loadbalancing`, which need Kubernetes and the cluster's ring): this crate stays free of
/// both, and the binary plugs them in.
pub trait ComponentFactory: Send + Sync {
    /// A processor stage in front of `next`, for a processor type this crate does not build.
    fn processor<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ProcessorConfig,
        next: Arc<dyn Consumer>,
        opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>>;

    /// An exporter that takes spans (not encoded batches), for an exporter type this crate
    /// does not build. Shared by every pipeline naming it; `shutdown` may be called once per
    /// pipeline.
    fn exporter<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ExporterConfig,
        opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>>;
}

/// A function adding services to a receiver's gRPC routes.
pub type GrpcServices = Arc<dyn Fn(Routes) -> Routes + Send + Sync>;

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            seed: 0x7a11_9a7e,
            memory_source: None,
            cluster: None,
            grpc_services: None,
            network: crate::net::tcp(),
            components: None,
        }
    }
}

/// Where each listener actually bound (ports may be 0 in the config).
#[derive(Debug, Clone, Default)]
pub struct BoundAddresses {
    /// Receiver ID → OTLP/gRPC address.
    pub otlp_grpc: BTreeMap<String, SocketAddr>,
    /// Receiver ID → OTLP/HTTP address.
    pub otlp_http: BTreeMap<String, SocketAddr>,
    pub health: Option<SocketAddr>,
    pub pprof: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A started service. Dropping it without [`RunningService::shutdown`] aborts nothing
/// gracefully; always shut down.
pub struct RunningService {
    addresses: BoundAddresses,
    receivers: Vec<Server>,
    auxiliary: Vec<Server>,
    pipelines: Vec<Arc<dyn Consumer>>,
    samplers: Vec<Arc<TailSamplingStage>>,
    health: Arc<Health>,
    /// Measures memory every second (gauges; gives freed memory back after a burst).
    memory_monitor: JoinHandle<()>,
}

/// The process-wide metrics recorder (installed on first use).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        use crate::telemetry::{TAIL_SAMPLING_DECISION_TIMER_LATENCY, TAIL_SAMPLING_LATE_SPAN_AGE};
        use metrics_exporter_prometheus::Matcher;
        // Batch sizes in spans by default; seconds and milliseconds where the unit says so.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                1.0, 8.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
            ])
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(TAIL_SAMPLING_LATE_SPAN_AGE.into()),
                    &[
                        0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    ],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(TAIL_SAMPLING_DECISION_TIMER_LATENCY.into()),
                    &[
                        1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
                    ],
                )
            })
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); then we only render ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `buffer_limit_mib`, else half the soft limit of the pipeline's `memory_limiter`, else the
/// default: buffered spans must leave room for everything else in the process.
fn sampling_budget_bytes(cfg: &Config, pipeline: &PipelineConfig, t: &TailSamplingConfig) -> u64 {
    const MIB: u64 = 1024 * 1024;
    if let Some(mib) = t.buffer_limit_mib {
        return mib * MIB;
    }
    let limiter = pipeline
        .processors
        .iter()
        .find_map(|id| match &cfg.processors[id] {
            ProcessorConfig::MemoryLimiter(m) => Some(m),
            _ => None,
        });
    match limiter {
        Some(m) => (MemoryLimits::resolve(m, total_memory_bytes()).soft_limit_bytes / 2).max(MIB),
        None => BUFFER_LIMIT_MIB_DEFAULT * MIB,
    }
}

async fn bind(endpoint: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(endpoint)
        .await
        .with_context(|| format!("{what}: cannot listen on {endpoint}"))
}

fn spawn_axum(listener: TcpListener, router: Router) -> Server {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Server { stop, task }
}

/// Starts the pipelines, receivers and extensions of a validated config.
pub async fn start(cfg: &Config, opts: ServiceOptions) -> anyhow::Result<RunningService> {
    let started = Instant::now();
    let metrics = recorder().clone();
    // Tailgate never evicts a trace undecided; the collector's metric exists and stays 0.
    metrics::counter!(crate::telemetry::TAIL_SAMPLING_TRACE_DROPPED_TOO_EARLY).absolute(0);

    // Exporters, shared by every pipeline that names them.
    let mut exporters: BTreeMap<ComponentId, Arc<ManagedExporter>> = BTreeMap::new();
    let mut routing_exporters: BTreeMap<ComponentId, Arc<dyn Consumer>> = BTreeMap::new();
    for (i, (id, ecfg)) in cfg.exporters.iter().enumerate() {
        let used = cfg
            .service
            .pipelines
            .iter()
            .any(|p| p.exporters.contains(id));
        if !used {
            continue;
        }
        if let ExporterConfig::LoadBalancing(_) = ecfg {
            let factory = opts.components.as_ref().with_context(|| {
                format!("exporters.{id}: `loadbalancing` is not available in this embedding")
            })?;
            routing_exporters.insert(id.clone(), factory.exporter(id, ecfg, &opts).await?);
            continue;
        }
        let exporter = build_exporter(id, ecfg, opts.network.as_ref())?;
        let (queue, retry) = queue_and_retry(ecfg);
        let seed = opts
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(i as u64);
        exporters.insert(
            id.clone(),
            ManagedExporter::start(id.to_string(), exporter, &queue, retry, seed),
        );
    }

    // Pipelines, built back to front.
    let memory_source: Arc<dyn MemorySource> = opts
        .memory_source
        .clone()
        .unwrap_or_else(|| Arc::new(ProcessRss));
    let mut heads: Vec<(ComponentId, Arc<dyn Consumer>)> = Vec::new();
    let mut samplers: Vec<Arc<TailSamplingStage>> = Vec::new();
    for p in &cfg.service.pipelines {
        let managed: Vec<Arc<ManagedExporter>> = p
            .exporters
            .iter()
            .filter_map(|id| exporters.get(id).cloned())
            .collect();
        let mut parts: Vec<Arc<dyn Consumer>> = Vec::new();
        if !managed.is_empty() {
            parts.push(Arc::new(FanOut::new(managed, opts.seed)));
        }
        parts.extend(
            p.exporters
                .iter()
                .filter_map(|id| routing_exporters.get(id).cloned()),
        );
        let mut next: Arc<dyn Consumer> = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Arc::new(ExportFork { parts })
        };
        for id in p.processors.iter().rev() {
            let name = id.to_string();
            next = match &cfg.processors[id] {
                ProcessorConfig::MemoryLimiter(m) => {
                    let limits = MemoryLimits::resolve(m, total_memory_bytes());
                    Arc::new(MemoryStage::start(
                        name,
                        limits,
                        m.check_interval.0,
                        Arc::clone(&memory_source),
                        next,
                    ))
                }
                ProcessorConfig::Batch(b) => {
                    Arc::new(BatchStage::start(name, Batcher::new(b), b.timeout.0, next))
                }
                ProcessorConfig::Attributes(a) => Arc::new(SyncStage::new(
                    name,
                    Box::new(AttributesProcessor::new(a)),
                    next,
                )),
                ProcessorConfig::Resource(r) => Arc::new(SyncStage::new(
                    name,
                    Box::new(ResourceProcessor::new(r)),
                    next,
                )),
                ProcessorConfig::Filter(f) => Arc::new(SyncStage::new(
                    name,
                    Box::new(FilterProcessor::new(f)),
                    next,
                )),
                ProcessorConfig::TailSampling(t) => {
                    let setup = SamplingSetup {
                        name,
                        cfg: t.clone(),
                        buffer_limit_bytes: sampling_budget_bytes(cfg, p, t),
                        shards: t.shards.unwrap_or_else(|| {
                            std::thread::available_parallelism()
                                .map(|n| n.get())
                                .unwrap_or(2)
                        }),
                    };
                    let stage = Arc::new(
                        TailSamplingStage::start(setup, next, opts.cluster.clone()).await?,
                    );
                    samplers.push(Arc::clone(&stage));
                    stage
                }
                other @ ProcessorConfig::K8sAttributes(_) => {
                    let factory = opts.components.as_ref().with_context(|| {
                        format!(
                            "processors.{id}: `k8sattributes` is not available in this embedding"
                        )
                    })?;
                    factory.processor(id, other, next, &opts).await?
                }
            };
        }
        heads.push((p.id.clone(), next));
    }

    let health = Health::new(exporters.values().cloned().collect());
    let mut addresses = BoundAddresses::default();
    let mut receivers = Vec::new();
    for (id, rcfg) in &cfg.receivers {
        let pipelines: Vec<Arc<dyn Consumer>> = cfg
            .service
            .pipelines
            .iter()
            .zip(&heads)
            .filter(|(p, _)| p.receivers.contains(id))
            .map(|(_, (_, head))| Arc::clone(head))
            .collect();
        if pipelines.is_empty() {
            continue;
        }
        let consumer: Arc<dyn Consumer> = if pipelines.len() == 1 {
            Arc::clone(&pipelines[0])
        } else {
            Arc::new(Tee { pipelines })
        };
        let ingest = Arc::new(Ingest {
            receiver: id.to_string(),
            consumer,
        });
        let ReceiverConfig::Otlp(otlp) = rcfg;
        if let Some(grpc) = &otlp.protocols.grpc {
            let (incoming, local) = opts.network.bind(&grpc.endpoint).await.with_context(|| {
                format!(
                    "receivers.{id}.protocols.grpc: cannot listen on {}",
                    grpc.endpoint
                )
            })?;
            addresses.otlp_grpc.insert(id.to_string(), local);
            let svc = OtlpGrpcService::new(Arc::clone(&ingest), grpc.max_recv_msg_size_mib);
            let mut routes = Routes::new(svc);
            if let Some(add) = &opts.grpc_services {
                routes = add(routes);
            }
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                // Large requests (hundreds of spans) arrive in fewer frames and without waiting
                // on window updates; h2's 64 KiB defaults cost a third of the CPU at load.
                let result = tonic::transport::Server::builder()
                    .initial_stream_window_size(GRPC_STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(GRPC_CONNECTION_WINDOW_BYTES)
                    .max_frame_size(GRPC_FRAME_BYTES_MAX)
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "OTLP/gRPC server stopped");
                }
            });
            receivers.push(Server { stop, task });
        }
        if let Some(http) = &otlp.protocols.http {
            let listener = bind(&http.endpoint, &format!("receivers.{id}.protocols.http")).await?;
            addresses
                .otlp_http
                .insert(id.to_string(), listener.local_addr()?);
            receivers.push(spawn_axum(
                listener,
                crate::receiver::http::router(Arc::clone(&ingest), http),
            ));
        }
    }
    health.receivers_listening.store(true, Ordering::Release);

    let mut auxiliary = Vec::new();
    for id in &cfg.service.extensions {
        match &cfg.extensions[id] {
            ExtensionConfig::HealthCheck(h) => {
                let listener = bind(&h.endpoint, &format!("extensions.{id}")).await?;
                addresses.health = Some(listener.local_addr()?);
                let state = Arc::clone(&health);
                let router =
                    Router::new().route(&h.path, get(move || async move { state.respond() }));
                auxiliary.push(spawn_axum(listener, router));
            }
            ExtensionConfig::Pprof(p) => {
                let listener = bind(&p.endpoint, &format!("extensions.{id}")).await?;
                addresses.pprof = Some(listener.local_addr()?);
                let router = Router::new().route(
                    "/debug/pprof/profile",
                    get(crate::extension::pprof::profile_handler),
                );
                auxiliary.push(spawn_axum(listener, router));
            }
        }
    }
    let telemetry = &cfg.service.telemetry.metrics;
    if telemetry.level != MetricsLevel::None {
        let listener = bind(&telemetry.address, "service.telemetry.metrics.address").await?;
        addresses.metrics = Some(listener.local_addr()?);
        let scrape_source = Arc::clone(&memory_source);
        let router = Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let source = Arc::clone(&scrape_source);
                async move {
                    crate::memory::measure(source.as_ref());
                    gauge!(PROCESS_UPTIME).set(started.elapsed().as_secs_f64());
                    metrics.render()
                }
            }),
        );
        auxiliary.push(spawn_axum(listener, router));
    }

    Ok(RunningService {
        addresses,
        receivers,
        auxiliary,
        pipelines: heads.into_iter().map(|(_, h)| h).collect(),
        samplers,
        health,
        memory_monitor: crate::memory::spawn_monitor(memory_source),
    })
}

impl RunningService {
    pub fn addresses(&self) -> &BoundAddresses {
        &self.addresses
    }

    /// The `tail_sampling` stages, in pipeline order (the cluster attaches to them).
    pub fn samplers(&self) -> &[Arc<TailSamplingStage>] {
        &self.samplers
    }

    /// Graceful shutdown within `timeout`: see the module docs for the order.
    pub async fn shutdown(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.memory_monitor.abort();
        self.health
            .receivers_listening
            .store(false, Ordering::Release);
        for r in &self.receivers {
            let _ = &r.task;
        }
        let mut tasks = Vec::new();
        for r in self.receivers {
            let _ = r.stop.send(());
            tasks.push(r.task);
        }
        for t in tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("a receiver did not stop before the shutdown deadline");
            }
        }
        for p in &self.pipelines {
            p.shutdown(deadline).await;
        }
        for s in self.auxiliary {
            let _ = s.stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(1), s.task).await;
        }
    }
}
