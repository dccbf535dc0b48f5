//! `tailgate gateway --config F [--node-id ID --cluster-listen ADDR --advertise ADDR --join PEERS]`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tailgate_cluster::gateway::{ClusterStart, RunningGateway, start_gateway};
use tailgate_cluster::{ClusterSettings, system_wall_clock};
use tailgate_config::cluster::ClusterConfig;
use tailgate_config::tls::ClusterTlsConfig;
use tailgate_config::{Config, ReceiverConfig};
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::net::Network;
use tailgate_pipeline::tls::{TlsNetwork, cluster_tls};

use crate::lifecycle::{ShutdownReport, StopSignal};

#[derive(Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub source: crate::cli::ConfigSource,
    /// How long shutdown may take (leave the ring, hand traces off, drain, export).
    #[arg(long, default_value = "30s", value_parser = crate::cli::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Seeds the pipeline's random choices (retry jitter). With a `cluster` section the Raft
    /// seed also mixes in the start time and the process ID, so every incarnation draws a
    /// fresh Raft id (a restarted pod must never vote twice under its old id): a gateway run is
    /// not replayable from this seed; the deterministic simulation is (`docs/simulation.md`).
    #[arg(long, default_value_t = 0x7a11_9a7e)]
    pub seed: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Cluster membership; each flag overrides the config's `cluster` section. Giving any of
/// them (or the section) makes the gateway a cluster member.
#[derive(Args, Default, Clone)]
pub struct ClusterArgs {
    /// Stable member name (the pod name).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Where the cluster gRPC service listens.
    #[arg(long)]
    pub cluster_listen: Option<String>,
    /// The cluster address peers reach this node at.
    #[arg(long)]
    pub advertise: Option<String>,
    /// The OTLP gRPC address agents reach this node at.
    #[arg(long)]
    pub otlp_advertise: Option<String>,
    /// Peers' cluster addresses, comma-separated (may include this node's own).
    #[arg(long, value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// A member silent for this long is removed by the leader.
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub member_timeout: Option<Duration>,
    /// Copies of every buffered span: 1, or 2 to survive the crash of any one gateway.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(tailgate_config::cluster::REPLICATION_FACTOR_MAX)))]
    pub replication_factor: Option<u8>,
}

impl ClusterArgs {
    fn any(&self) -> bool {
        self.node_id.is_some()
            || self.cluster_listen.is_some()
            || self.advertise.is_some()
            || self.join.is_some()
    }
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

fn otlp_grpc_port(cfg: &Config) -> Option<String> {
    cfg.receivers.values().find_map(|r| {
        let ReceiverConfig::Otlp(o) = r;
        o.protocols
            .grpc
            .as_ref()
            .and_then(|g| g.endpoint.rsplit_once(':').map(|(_, p)| p.to_string()))
    })
}

/// Resolves the cluster settings from the config section and the flags (flags win).
pub async fn cluster_start(
    cfg: &Config,
    args: &ClusterArgs,
    seed: u64,
) -> anyhow::Result<Option<ClusterStart>> {
    if cfg.cluster.is_none() && !args.any() {
        return Ok(None);
    }
    let section = cfg.cluster.clone().unwrap_or_default();
    let ClusterConfig {
        node_id,
        listen,
        advertise,
        otlp_advertise,
        join,
        member_timeout,
        ring_debounce,
        replication_factor,
        tls,
    } = section;
    let listen = args.cluster_listen.clone().unwrap_or(listen);
    let network = cluster_network(tls.as_ref())?;
    let (incoming, bound) = network
        .bind(&listen)
        .await
        .with_context(|| format!("cluster: cannot listen on {listen}"))?;
    let advertise = match args.advertise.clone().or(advertise) {
        Some(a) => a,
        None if !bound.ip().is_unspecified() => bound.to_string(),
        None => anyhow::bail!(
            "cluster: --advertise is required when listening on a wildcard address ({listen})"
        ),
    };
    let name = match args.node_id.clone().or(node_id) {
        Some(n) => n,
        None => std::env::var("HOSTNAME").unwrap_or_else(|_| advertise.clone()),
    };
    let otlp_advertise = match args.otlp_advertise.clone().or(otlp_advertise) {
        Some(a) => a,
        None => {
            let port = otlp_grpc_port(cfg)
                .context("cluster: no OTLP gRPC receiver to advertise; set --otlp-advertise")?;
            format!("{}:{port}", host_of(&advertise))
        }
    };
    let join = args.join.clone().unwrap_or(join);
    let mut settings = ClusterSettings::new(&name, &advertise, &otlp_advertise, join);
    settings.member_timeout = args.member_timeout.unwrap_or(member_timeout.0);
    settings.ring_debounce = ring_debounce.0;
    settings.replication_factor = args.replication_factor.unwrap_or(replication_factor);
    // Each incarnation draws a fresh Raft id: mix in the start time unless the seed is
    // meant to replay a run (then the operator passes distinct seeds per node).
    settings.seed = seed
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    Ok(Some(ClusterStart {
        settings,
        incoming,
        local_addr: bound,
        network,
        wall_clock: system_wall_clock(),
    }))
}

/// The cluster plane's network: mutual TLS with `cluster.tls`, else plaintext TCP — and a
/// warning, since then anyone who reaches the port can join the ring, receive handed-off
/// traces or change the sampling.
fn cluster_network(tls: Option<&ClusterTlsConfig>) -> anyhow::Result<Arc<dyn Network>> {
    match tls {
        Some(tls) => {
            let tls = cluster_tls(tls).context("cluster.tls")?;
            Ok(Arc::new(TlsNetwork::new(tls)))
        }
        None => {
            tracing::warn!(
                "cluster: no cluster.tls; the cluster port is unauthenticated (anyone who reaches it can join, receive traces and change sampling) — see docs/operations.md, \"Security\""
            );
            Ok(tailgate_pipeline::net::tcp())
        }
    }
}

pub fn log_addresses(g: &RunningGateway) {
    let a = g.service.addresses();
    for (id, addr) in &a.otlp_grpc {
        tracing::info!(receiver = %id, %addr, "OTLP/gRPC listening");
    }
    for (id, addr) in &a.otlp_http {
        tracing::info!(receiver = %id, %addr, "OTLP/HTTP listening");
    }
    if let Some(addr) = a.metrics {
        tracing::info!(%addr, "metrics at /metrics");
    }
    if let Some(addr) = a.health {
        tracing::info!(%addr, "health check listening");
    }
    if let (Some(addr), Some(node)) = (g.cluster_addr, &g.node) {
        tracing::info!(%addr, name = node.name(), raft_id = node.raft_id(), "cluster listening");
    }
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let mut stop = StopSignal::install()?;
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
        let cluster = cluster_start(&cfg, &args.cluster, args.seed).await?;
        start_gateway(
            &cfg,
            ServiceOptions {
                seed: args.seed,
                components: Some(crate::agent::components()),
                memory_source: Some(crate::allocator::memory_source()),
                ..Default::default()
            },
            cluster,
        )
        .await
        .context("cannot start gateway")
    };
    let Some(gateway) = stop.unless_stopped("the gateway", startup).await? else {
        return Ok(());
    };
    log_addresses(&gateway);
    tracing::info!("gateway ready");
    let signal = stop.recv().await;
    tracing::info!(signal, timeout = ?args.shutdown_timeout, "shutting down");
    let report = ShutdownReport::begin();
    gateway.shutdown(args.shutdown_timeout).await;
    eprintln!("tailgate: {}", report.line(args.shutdown_timeout));
    Ok(())
}
