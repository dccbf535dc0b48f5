//! `tailgate dev [--demo]`: a ready gateway with an embedded config, for a first run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::telemetry::{self, sum_metric};
use tokio::time::Instant;

use crate::loadgen::{LoadStats, LoadgenArgs, run_load};

const DEV_CONFIG: &str = include_str!("dev-config.yaml");

#[derive(Args)]
pub struct DevArgs {
    /// Where the `file` exporter writes `traces.jsonl`.
    #[arg(long, default_value = "./tailgate-data")]
    pub data_dir: String,
    /// Drive the gateway with synthetic traffic, print what happens, then stop.
    #[arg(long)]
    pub demo: bool,
    /// How long `--demo` sends traffic.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub demo_duration: Duration,
    #[arg(long, default_value = "0.0.0.0:4317")]
    pub grpc_endpoint: String,
    #[arg(long, default_value = "0.0.0.0:4318")]
    pub http_endpoint: String,
    #[arg(long, default_value = "127.0.0.1:8888")]
    pub metrics_endpoint: String,
    #[arg(long, default_value = "127.0.0.1:13133")]
    pub health_endpoint: String,
    /// Print the embedded config and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.print_config {
        print!("{DEV_CONFIG}");
        return Ok(());
    }
    crate::init_logging(if args.demo { "warn" } else { "info" }, false);
    tailgate_pipeline::install_crypto_provider();
    let vars = [
        ("TAILGATE_DEV_GRPC", args.grpc_endpoint.clone()),
        ("TAILGATE_DEV_HTTP", args.http_endpoint.clone()),
        ("TAILGATE_DEV_METRICS", args.metrics_endpoint.clone()),
        ("TAILGATE_DEV_HEALTH", args.health_endpoint.clone()),
        (
            "TAILGATE_DEV_DATA",
            args.data_dir.trim_end_matches('/').to_string(),
        ),
    ];
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let cfg = tailgate_config::load_str(DEV_CONFIG, "(embedded dev config)", &env)
        .map_err(|e| anyhow::anyhow!("embedded dev config is invalid (a bug):\n{e}"))?;
    let file = format!("{}/traces.jsonl", args.data_dir.trim_end_matches('/'));
    let service = tailgate_pipeline::start(&cfg, ServiceOptions::default())
        .await
        .context("cannot start dev gateway")?;
    let grpc = service.addresses().otlp_grpc["otlp"];
    let http = service.addresses().otlp_http["otlp"];
    println!("tailgate dev: gateway ready");
    println!(
        "  OTLP/gRPC  {grpc}   (apps: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:{})",
        grpc.port()
    );
    println!("  OTLP/HTTP  {http}");
    if let Some(m) = service.addresses().metrics {
        println!("  metrics    http://{m}/metrics");
    }
    if let Some(h) = service.addresses().health {
        println!("  health     http://{h}/");
    }
    println!(
        "  sampling   the article's policies: errors, slow > 2s, sampling.priority=always_on, 5% of the rest"
    );
    println!("  exporting  {file} (OTLP/JSON lines), db.statement and auth headers redacted");

    if !args.demo {
        println!("Ctrl-C to stop.");
        crate::gateway::wait_for_signal().await;
        service.shutdown(Duration::from_secs(10)).await;
        return Ok(());
    }

    let target = format!("http://127.0.0.1:{}", grpc.port());
    let load = LoadgenArgs {
        endpoint: vec![target],
        traces: 0,
        duration: args.demo_duration,
        rate: 200,
        concurrency: 2,
        spans_per_trace: 10,
        attributes: 5,
        spans_per_request: 512,
        error_percent: 2.0,
        slow_percent: 2.0,
        slow_ms: 2500,
        flagged_percent: 1.0,
        gzip: true,
        seed: 42,
        service_name: "checkout".into(),
    };
    println!(
        "demo: sending 200 traces/s (10 spans each; 2% with an error, 2% slow, 1% flagged) for {:?}",
        args.demo_duration
    );
    println!(
        "      decided 2s after each root span: errors, slow and flagged traces kept, 5% of the rest"
    );
    let stats = Arc::new(LoadStats::default());
    let started = Instant::now();
    let sender = tokio::spawn(run_load(load, Arc::clone(&stats)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    println!("  time   sent spans   buffered traces   kept spans   dropped spans   exported");
    let line = |m: &str, elapsed: f64, sent: u64| {
        format!(
            "  {:>4.0}s {:>12} {:>17} {:>12} {:>15} {:>10}",
            elapsed,
            sent,
            sum_metric(m, telemetry::TAIL_SAMPLING_TRACES_ON_MEMORY, &[]) as u64,
            sum_metric(m, telemetry::SAMPLING_SPANS_KEPT, &[]) as u64,
            sum_metric(m, telemetry::SAMPLING_SPANS_DROPPED, &[]) as u64,
            sum_metric(m, telemetry::EXPORTER_SENT_SPANS, &["exporter=\"file\""]) as u64,
        )
    };
    let print_line = || {
        let sent = stats.spans.load(Ordering::Relaxed);
        println!(
            "{}",
            line(&telemetry::render(), started.elapsed().as_secs_f64(), sent)
        );
    };
    while !sender.is_finished() {
        tick.tick().await;
        print_line();
    }
    sender.await.context("load generator")??;
    // Let the last traces reach their decision (root + 2s) and the 1s batch flush.
    for _ in 0..4 {
        tick.tick().await;
        print_line();
    }
    service.shutdown(Duration::from_secs(10)).await;
    let m = telemetry::render();
    let (lines, spans, leaked) = inspect_output(&file)?;
    println!("demo finished:");
    println!("  {}", stats.line(started.elapsed()));
    println!("  traces kept by policy (a trace can match several; the first named decides):");
    for policy in [
        "keep-errors",
        "keep-slow",
        "keep-debug-flagged",
        "sample-normal",
    ] {
        let filter = format!("policy=\"{policy}\"");
        println!(
            "    {policy:<20} voted keep for {:>5} traces",
            sum_metric(
                &m,
                telemetry::TAIL_SAMPLING_COUNT_TRACES_SAMPLED,
                &[&filter, "decision=\"sampled\""]
            ) as u64
        );
    }
    let kept = sum_metric(
        &m,
        telemetry::TAIL_SAMPLING_GLOBAL_COUNT_TRACES_SAMPLED,
        &["decision=\"sampled\""],
    ) as u64;
    let decided = sum_metric(
        &m,
        telemetry::TAIL_SAMPLING_GLOBAL_COUNT_TRACES_SAMPLED,
        &[],
    ) as u64;
    println!(
        "  decisions: {kept} of {decided} traces kept; sent {} error, {} slow, {} flagged",
        stats.error_traces.load(Ordering::Relaxed),
        stats.slow_traces.load(Ordering::Relaxed),
        stats.flagged_traces.load(Ordering::Relaxed),
    );
    println!(
        "  gateway: accepted {} spans, kept {}, dropped by policy {}, exported {} to the file, failed {}",
        sum_metric(&m, telemetry::RECEIVER_ACCEPTED_SPANS, &[]) as u64,
        sum_metric(&m, telemetry::SAMPLING_SPANS_KEPT, &[]) as u64,
        sum_metric(
            &m,
            telemetry::SAMPLING_SPANS_DROPPED,
            &["reason=\"policy\""]
        ) as u64,
        sum_metric(&m, telemetry::EXPORTER_SENT_SPANS, &["exporter=\"file\""]) as u64,
        sum_metric(&m, telemetry::EXPORTER_SEND_FAILED_SPANS, &[]) as u64,
    );
    println!("  {file}: {lines} batches, {spans} spans; unredacted secrets found: {leaked}");
    if leaked > 0 {
        anyhow::bail!("redaction failed: {leaked} secret value(s) reached {file}");
    }
    Ok(())
}

/// Counts batches and spans in the file output, and secrets that should have been redacted.
fn inspect_output(path: &str) -> anyhow::Result<(usize, usize, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let mut spans = 0;
    let mut leaked = 0;
    let lines = text.lines().count();
    for line in text.lines() {
        spans += line.matches("\"spanId\"").count();
        leaked += line.matches("secret-token").count() + line.matches("customer = 'alice'").count();
    }
    Ok((lines, spans, leaked))
}
