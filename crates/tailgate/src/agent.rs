//! `tailgate agent --config F`: the node-local agent (the reference article's agent config runs
//! unchanged), and [`Components`], which builds `k8sattributes` and `loadbalancing` for every
//! service this binary starts.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tailgate_config::{ComponentId, ExporterConfig, ProcessorConfig};
use tailgate_k8s::{K8sAttributesStage, KubeMetadata, MetadataStore};
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::consumer::{BoxFuture, Consumer};
use tailgate_pipeline::service::ComponentFactory;
use tailgate_routing::LoadBalancer;

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub source: crate::cli::ConfigSource,
    /// How long shutdown may take (flush batches, deliver what is queued).
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Seed for every random choice (retry jitter, the first ring endpoint).
    #[arg(long, default_value_t = 0x7a11_9a7e)]
    pub seed: u64,
}

/// Builds the agent's components from their configs.
pub struct Components;

pub fn components() -> Arc<dyn ComponentFactory> {
    Arc::new(Components)
}

impl ComponentFactory for Components {
    fn processor<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ProcessorConfig,
        next: Arc<dyn Consumer>,
        _opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>> {
        Box::pin(async move {
            let ProcessorConfig::K8sAttributes(k) = cfg else {
                anyhow::bail!("processors.{id}: not an agent processor");
            };
            let metadata = if k.passthrough {
                let (_tx, synced) = tokio::sync::watch::channel(true);
                KubeMetadata::detached(Arc::new(RwLock::new(MetadataStore::new())), synced)
            } else {
                let client = tailgate_k8s::client::client_for(k.auth_type, k.context.as_deref())
                    .await
                    .with_context(|| format!("processors.{id}"))?;
                KubeMetadata::start(client, k, &|var| std::env::var(var).ok())
                    .map_err(|e| anyhow::anyhow!("processors.{id}.{e}"))?
            };
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
                anyhow::bail!("exporters.{id}: not an agent exporter");
            };
            let balancer =
                LoadBalancer::start(id.to_string(), lb, Arc::clone(&opts.network), opts.seed)
                    .await?;
            Ok(Arc::new(balancer) as Arc<dyn Consumer>)
        })
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut stop = crate::lifecycle::StopSignal::install()?;
    let cfg = args
        .source
        .load()
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let logs = &cfg.service.telemetry.logs;
    crate::cli::init_logging(
        &format!("{:?}", logs.level).to_lowercase(),
        logs.encoding == tailgate_config::components::LogEncoding::Json,
    );
    tailgate_pipeline::install_crypto_provider();
    let startup = async {
        tailgate_pipeline::start(
            &cfg,
            ServiceOptions {
                seed: args.seed,
                components: Some(components()),
                memory_source: Some(crate::allocator::memory_source()),
                ..Default::default()
            },
        )
        .await
        .context("cannot start agent")
    };
    let Some(service) = stop.unless_stopped("the agent", startup).await? else {
        return Ok(());
    };
    for (id, addr) in &service.addresses().otlp_grpc {
        tracing::info!(receiver = %id, %addr, "OTLP/gRPC listening");
    }
    for (id, addr) in &service.addresses().otlp_http {
        tracing::info!(receiver = %id, %addr, "OTLP/HTTP listening");
    }
    if let Some(addr) = service.addresses().health {
        tracing::info!(%addr, "health check listening");
    }
    if let Some(addr) = service.addresses().metrics {
        tracing::info!(%addr, "metrics listening");
    }
    tracing::info!("agent ready");
    let signal = stop.recv().await;
    tracing::info!(signal, timeout = ?args.shutdown_timeout, "shutting down");
    let report = crate::lifecycle::ShutdownReport::begin();
    service.shutdown(args.shutdown_timeout).await;
    eprintln!("tailgate: {}", report.line(args.shutdown_timeout));
    Ok(())
}
