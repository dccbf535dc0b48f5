//! Building and running everything a [`Config`] describes, and shutting it down in order.
//!
//! Start: exporters → connectors and their metrics exporters → processor stages (built back
//! to front) → receivers → extensions.
//! Shutdown: receivers stop taking requests (in-flight ones finish) → each pipeline flushes
//! stage by stage into its exporters → exporters drain their queues until the deadline, and
//! count what they could not send as failed (`reason="shutdown"`) → connectors flush once
//! more into their metrics exporters.

mod http_serve;
mod listeners;
mod topology;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tailgate_config::{ComponentId, Config, ExporterConfig, ProcessorConfig};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::cluster::ClusterLink;
use crate::connector::Connectors;
use crate::consumer::{BoxFuture, Consumer};
use crate::extension::health::Health;
use crate::memory::{MemorySource, ProcessRss};
use crate::net::Network;
use crate::sampling::TailSamplingStage;
use crate::telemetry::recorder;
use listeners::Listeners;
use topology::{Exporters, build_pipelines};

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

/// A listening task and the signal that stops it gracefully.
pub(crate) struct Server {
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) task: JoinHandle<()>,
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

/// A started service. Dropping it without [`RunningService::shutdown`] aborts nothing
/// gracefully; always shut down.
pub struct RunningService {
    addresses: BoundAddresses,
    receivers: Vec<Server>,
    auxiliary: Vec<Server>,
    pipelines: Vec<Arc<dyn Consumer>>,
    samplers: Vec<Arc<TailSamplingStage>>,
    connectors: Connectors,
    health: Arc<Health>,
    /// Measures memory every second (gauges; gives freed memory back after a burst).
    memory_monitor: JoinHandle<()>,
}

/// Starts the pipelines, receivers and extensions of a validated config, in that order, so
/// nothing listens before what it feeds exists.
pub async fn start(cfg: &Config, opts: ServiceOptions) -> anyhow::Result<RunningService> {
    let started = Instant::now();
    // Installed before any stage records a metric.
    recorder();
    // Tailgate never evicts a trace undecided; the collector's metric exists and stays 0.
    metrics::counter!(crate::telemetry::TAIL_SAMPLING_TRACE_DROPPED_TOO_EARLY).absolute(0);
    let memory_source: Arc<dyn MemorySource> = opts
        .memory_source
        .clone()
        .unwrap_or_else(|| Arc::new(ProcessRss));

    let exporters = Exporters::start(cfg, &opts).await?;
    let connectors = Connectors::start(cfg, opts.seed, opts.network.as_ref()).await?;
    let pipelines = build_pipelines(cfg, &opts, &exporters, &connectors, &memory_source).await?;
    let health = Health::new(exporters.managed.values().cloned().collect());
    let mut listeners = Listeners::default();
    listeners
        .start_receivers(cfg, &opts, &pipelines.heads)
        .await?;
    health.receivers_listening.store(true, Ordering::Release);
    listeners.start_extensions(cfg, &health).await?;
    listeners
        .start_metrics(cfg, &memory_source, started)
        .await?;

    Ok(RunningService {
        addresses: listeners.addresses,
        receivers: listeners.receivers,
        auxiliary: listeners.auxiliary,
        pipelines: pipelines.heads,
        samplers: pipelines.samplers,
        connectors,
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
        // Last: every span the pipelines delivered is counted before the final flush.
        self.connectors.shutdown(deadline).await;
        for s in self.auxiliary {
            let _ = s.stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(1), s.task).await;
        }
    }
}
