//! `tailgate gateway --config F`

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tailgate_pipeline::ServiceOptions;

#[derive(Args)]
pub struct GatewayArgs {
    /// Collector-style YAML config.
    #[arg(long)]
    pub config: String,
    /// How long shutdown may take to drain the pipeline before counting the rest as failed.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Seed for every random choice (retry jitter); fixed for reproducible runs.
    #[arg(long, default_value_t = 0x7a11_9a7e)]
    pub seed: u64,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let cfg = tailgate_config::load_file(&args.config)
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let logs = &cfg.service.telemetry.logs;
    crate::init_logging(
        &format!("{:?}", logs.level).to_lowercase(),
        logs.encoding == tailgate_config::components::LogEncoding::Json,
    );
    tailgate_pipeline::install_crypto_provider();
    let service = tailgate_pipeline::start(
        &cfg,
        ServiceOptions {
            seed: args.seed,
            ..Default::default()
        },
    )
    .await
    .context("cannot start gateway")?;
    let a = service.addresses();
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
    tracing::info!("gateway ready");
    wait_for_signal().await;
    tracing::info!(timeout = ?args.shutdown_timeout, "shutting down: draining pipeline");
    service.shutdown(args.shutdown_timeout).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
