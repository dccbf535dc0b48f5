//! `tailgate dev [--demo]`: a local cluster in one process — an agent and three gateways on
//! loopback from embedded configs — for a first run. `--demo` drives it with synthetic
//! traffic, prints a live summary, and rolls one gateway to show a handoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tailgate_cluster::gateway::{ClusterStart, RunningGateway, start_gateway};
use tailgate_cluster::{ClusterSettings, system_wall_clock};
use tailgate_config::Config;
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::service::RunningService;
use tailgate_pipeline::telemetry::{self, sum_metric};
use tokio::time::Instant;

use crate::lifecycle::{ShutdownReport, StopSignal};
use crate::loadgen::{LoadStats, LoadgenArgs, run_load};

const DEV_CONFIG: &str = include_str!("dev-config.yaml");
const DEV_AGENT_CONFIG: &str = include_str!("dev-agent-config.yaml");
/// Gateways in the local cluster.
const GATEWAYS: usize = 3;

#[derive(Args)]
pub struct DevArgs {
    /// Where the gateways' `file` exporters write `traces-<gateway>.jsonl` (emptied at each
    /// start, so the files hold this run only).
    #[arg(long, default_value = "./tailgate-data")]
    pub data_dir: String,
    /// Drive the cluster with synthetic traffic, print what happens, then stop.
    #[arg(long)]
    pub demo: bool,
    /// How long `--demo` sends traffic.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub demo_duration: Duration,
    /// Halfway through `--demo`, restart one gateway (leave, hand off, rejoin).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_roll: bool,
    /// The agent's OTLP/gRPC address (what apps send to).
    #[arg(long, default_value = "0.0.0.0:4317")]
    pub grpc_endpoint: String,
    /// The agent's OTLP/HTTP address.
    #[arg(long, default_value = "0.0.0.0:4318")]
    pub http_endpoint: String,
    /// Prometheus metrics of the whole process.
    #[arg(long, default_value = "127.0.0.1:8888")]
    pub metrics_endpoint: String,
    #[arg(long, default_value = "127.0.0.1:13133")]
    pub health_endpoint: String,
    /// Print the embedded configs and exit.
    #[arg(long)]
    pub print_config: bool,
}

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

fn load_embedded(text: &str, what: &str, vars: &[(&str, String)]) -> anyhow::Result<Config> {
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    tailgate_config::load_str(text, what, &env)
        .map_err(|e| anyhow::anyhow!("{what} is invalid (a bug):\n{e}"))
}

/// One gateway of the local cluster and what it needs to start again.
struct DevGateway {
    name: String,
    cfg: Config,
    cluster_addr: String,
    otlp_addr: String,
    running: Option<RunningGateway>,
}

impl DevGateway {
    async fn start(&mut self, join: &[String], seed: u64) -> anyhow::Result<()> {
        let network = tailgate_pipeline::net::tcp();
        let (incoming, local_addr) = network
            .bind(&self.cluster_addr)
            .await
            .with_context(|| format!("{}: cannot listen on {}", self.name, self.cluster_addr))?;
        let mut settings = ClusterSettings::new(
            &self.name,
            &self.cluster_addr,
            &self.otlp_addr,
            join.to_vec(),
        );
        settings.seed = seed;
        let cluster = ClusterStart {
            settings,
            incoming,
            local_addr,
            network,
            wall_clock: system_wall_clock(),
        };
        let options = ServiceOptions {
            seed,
            memory_source: Some(crate::allocator::memory_source()),
            ..Default::default()
        };
        self.running = Some(
            start_gateway(&self.cfg, options, Some(cluster))
                .await
                .with_context(|| format!("cannot start {}", self.name))?,
        );
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(g) = self.running.take() {
            g.shutdown(DEV_SHUTDOWN_TIMEOUT).await;
        }
    }

    /// (epoch, buffered traces) or `None` while stopped.
    async fn status(&self) -> Option<(u64, u64)> {
        let g = self.running.as_ref()?;
        let epoch = g.node.as_ref()?.ring_now().epoch();
        let s = g.service.samplers().first()?.status().await;
        Some((epoch, s.traces + s.in_flight))
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut stop = StopSignal::install()?;
    if args.print_config {
        print!("# agent\n{DEV_AGENT_CONFIG}\n# gateways\n{DEV_CONFIG}");
        return Ok(());
    }
    crate::cli::init_logging(if args.demo { "error" } else { "warn" }, false);
    tailgate_pipeline::install_crypto_provider();
    let data = args.data_dir.trim_end_matches('/').to_string();
    let data_dir = DataDir::prepare(&data)?;
    let started = stop
        .unless_stopped("the local cluster", start_cluster(&args, &data))
        .await;
    let (agent, mut gateways) = match started {
        Ok(Some(cluster)) => cluster,
        Ok(None) => {
            data_dir.remove_if_created();
            return Ok(());
        }
        Err(e) => {
            data_dir.remove_if_created();
            return Err(with_port_hint(e, &args));
        }
    };
    print_banner(&agent, &gateways, &data);
    if !args.demo {
        println!("Ctrl-C to stop.");
        stop.recv().await;
        let report = ShutdownReport::begin();
        shutdown(agent, &mut gateways).await;
        println!("{}", report.line(DEV_SHUTDOWN_TIMEOUT));
        return Ok(());
    }
    let grpc_port = agent.addresses().otlp_grpc["otlp"].port();
    demo(&args, agent, &mut gateways, &data, grpc_port, &mut stop).await
}

/// How long each part of the local cluster may take to drain at shutdown.
const DEV_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The data folder: emptied of earlier runs' trace files at start; removed again after a
/// failed start if this run created it.
struct DataDir {
    path: String,
    created: bool,
}

impl DataDir {
    fn prepare(path: &str) -> anyhow::Result<DataDir> {
        let created = !std::path::Path::new(path).exists();
        std::fs::create_dir_all(path).with_context(|| format!("cannot create {path}"))?;
        for i in 0..GATEWAYS {
            let file = format!("{path}/traces-gateway-{i}.jsonl");
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot empty {file}")),
            }
        }
        Ok(DataDir {
            path: path.to_string(),
            created,
        })
    }

    fn remove_if_created(&self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A start that failed because a port was taken says which flag moves it.
fn with_port_hint(e: anyhow::Error, args: &DevArgs) -> anyhow::Error {
    let text = format!("{e:#}");
    if !text.contains("in use") {
        return e;
    }
    let flags = [
        (&args.grpc_endpoint, "--grpc-endpoint"),
        (&args.http_endpoint, "--http-endpoint"),
        (&args.metrics_endpoint, "--metrics-endpoint"),
        (&args.health_endpoint, "--health-endpoint"),
    ];
    match flags.iter().find(|(addr, _)| text.contains(addr.as_str())) {
        Some((addr, flag)) => e.context(format!(
            "{addr} is taken (a collector or another `tailgate dev`?); move it with {flag} ADDR"
        )),
        None => e,
    }
}

/// Three gateways (gateway-0 the seed) and the agent in front of them, once the ring formed.
async fn start_cluster(
    args: &DevArgs,
    data: &str,
) -> anyhow::Result<(RunningService, Vec<DevGateway>)> {
    let mut gateways = Vec::new();
    for i in 0..GATEWAYS {
        let name = format!("gateway-{i}");
        let otlp_addr = free_addr()?;
        let vars = [
            ("TAILGATE_DEV_GRPC", otlp_addr.clone()),
            ("TAILGATE_DEV_HTTP", free_addr()?),
            ("TAILGATE_DEV_METRICS", free_addr()?),
            ("TAILGATE_DEV_HEALTH", free_addr()?),
            ("TAILGATE_DEV_DATA", data.to_string()),
            ("TAILGATE_DEV_NODE", name.clone()),
        ];
        let cfg = load_embedded(DEV_CONFIG, "(embedded dev gateway config)", &vars)?;
        gateways.push(DevGateway {
            name,
            cfg,
            cluster_addr: free_addr()?,
            otlp_addr,
            running: None,
        });
    }
    let join = vec![gateways[0].cluster_addr.clone()];
    for (i, g) in gateways.iter_mut().enumerate() {
        g.start(&join, 42 + i as u64).await?;
    }
    let agent_vars = [
        ("TAILGATE_DEV_GRPC", args.grpc_endpoint.clone()),
        ("TAILGATE_DEV_HTTP", args.http_endpoint.clone()),
        ("TAILGATE_DEV_METRICS", args.metrics_endpoint.clone()),
        ("TAILGATE_DEV_HEALTH", args.health_endpoint.clone()),
        ("TAILGATE_DEV_GATEWAY_0", gateways[0].otlp_addr.clone()),
        ("TAILGATE_DEV_GATEWAY_1", gateways[1].otlp_addr.clone()),
        ("TAILGATE_DEV_GATEWAY_2", gateways[2].otlp_addr.clone()),
    ];
    let agent_cfg = load_embedded(DEV_AGENT_CONFIG, "(embedded dev agent config)", &agent_vars)?;
    let agent = tailgate_pipeline::start(
        &agent_cfg,
        ServiceOptions {
            components: Some(crate::agent::components()),
            memory_source: Some(crate::allocator::memory_source()),
            ..Default::default()
        },
    )
    .await
    .context("cannot start the dev agent")?;
    wait_for_ring(&gateways).await;
    Ok((agent, gateways))
}

fn print_banner(agent: &RunningService, gateways: &[DevGateway], data: &str) {
    let grpc = agent.addresses().otlp_grpc["otlp"];
    let http = agent.addresses().otlp_http["otlp"];
    println!("tailgate dev: local cluster ready (1 agent, {GATEWAYS} gateways)");
    println!(
        "  agent      OTLP/gRPC {grpc}  OTLP/HTTP {http}   (apps: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:{})",
        grpc.port()
    );
    for g in gateways {
        println!(
            "  {}  OTLP/gRPC {}  cluster {}  -> {data}/traces-{}.jsonl",
            g.name, g.otlp_addr, g.cluster_addr, g.name
        );
    }
    if let Some(m) = agent.addresses().metrics {
        println!("  metrics    http://{m}/metrics");
    }
    if let Some(h) = agent.addresses().health {
        println!("  health     http://{h}/");
    }
    println!(
        "  status     tailgate status --admin {}",
        gateways[0].cluster_addr
    );
    println!(
        "  sampling   the article's policies: errors, slow > 2s, sampling.priority=always_on, 5% of the rest"
    );
    println!("  exporting  OTLP/JSON lines, db.statement and auth headers redacted");
}

async fn wait_for_ring(gateways: &[DevGateway]) {
    for _ in 0..200 {
        let mut owners = Vec::new();
        for g in gateways {
            if let Some(n) = g.running.as_ref().and_then(|r| r.node.as_ref()) {
                owners.push(n.ring_now().owners().len());
            }
        }
        if owners.iter().all(|n| *n == gateways.len()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!("the local cluster did not form within 10s");
}

async fn shutdown(agent: RunningService, gateways: &mut [DevGateway]) {
    agent.shutdown(DEV_SHUTDOWN_TIMEOUT).await;
    for g in gateways.iter_mut() {
        g.stop().await;
    }
}

/// The demo's synthetic traffic: a few interesting traces among many ordinary ones.
fn demo_load(args: &DevArgs, agent_port: u16) -> LoadgenArgs {
    LoadgenArgs {
        endpoint: vec![format!("http://127.0.0.1:{agent_port}")],
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
        compression: crate::loadgen::LoadCompression::Gzip,
        seed: 42,
        service_name: "checkout".into(),
    }
}

async fn demo(
    args: &DevArgs,
    agent: RunningService,
    gateways: &mut [DevGateway],
    data: &str,
    agent_port: u16,
    stop: &mut StopSignal,
) -> anyhow::Result<()> {
    println!(
        "demo: sending 200 traces/s (10 spans each; 2% with an error, 2% slow, 1% flagged) for {:?}",
        args.demo_duration
    );
    println!(
        "      decided 2s after each root span: errors, slow and flagged traces kept, 5% of the rest"
    );
    let stats = Arc::new(LoadStats::default());
    let started = Instant::now();
    let sender = tokio::spawn(run_load(demo_load(args, agent_port), Arc::clone(&stats)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let names: Vec<String> = gateways.iter().map(|g| g.name.clone()).collect();
    println!(
        "  (epoch: the version of the ring that says which gateway owns which trace; it steps when a gateway leaves or joins)"
    );
    println!(
        "  time   sent spans  epoch  buffered traces ({})   kept spans  dropped spans  exported  handed off",
        names.join(" / ")
    );
    let roll_at = started + args.demo_duration / 2;
    let mut rolled = !args.demo_roll;
    let mut finishing = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            signal = stop.recv() => {
                println!("  -- {signal}: stopping the demo early --");
                sender.abort();
                shutdown(agent, gateways).await;
                return Ok(());
            }
        }
        print_progress_row(gateways, &stats, started).await;
        if !rolled && Instant::now() >= roll_at {
            rolled = true;
            roll_last_gateway(gateways, started).await?;
        }
        if sender.is_finished() {
            // Let the last traces reach their decision (root + 2s) and the batch flush.
            finishing += 1;
            if finishing > 4 {
                break;
            }
        }
    }
    sender.await.context("load generator")??;
    shutdown(agent, gateways).await;
    print_summary(args, &stats, gateways, data)
}

/// One line a second: what was sent, the ring's epoch, what each gateway buffers, what was
/// kept, dropped, exported and handed off so far.
async fn print_progress_row(gateways: &[DevGateway], stats: &LoadStats, started: Instant) {
    let m = telemetry::render();
    let mut epochs = Vec::new();
    let mut buffered = Vec::new();
    for g in gateways {
        match g.status().await {
            Some((e, b)) => {
                epochs.push(e);
                buffered.push(b.to_string());
            }
            None => buffered.push("-".into()),
        }
    }
    println!(
        "  {:>4.0}s {:>11} {:>6}  {:>28} {:>12} {:>14} {:>9} {:>11}",
        started.elapsed().as_secs_f64(),
        stats.spans.load(Ordering::Relaxed),
        epochs.iter().max().copied().unwrap_or(0),
        buffered.join(" / "),
        sum_metric(&m, telemetry::SAMPLING_SPANS_KEPT, &[]) as u64,
        sum_metric(&m, telemetry::SAMPLING_SPANS_DROPPED, &[]) as u64,
        sum_metric(&m, telemetry::EXPORTER_SENT_SPANS, &["exporter=\"file\""]) as u64,
        sum_metric(&m, tailgate_cluster::CLUSTER_HANDOFF_SENT_TRACES, &[]) as u64,
    );
}

/// A rolling restart of the last gateway: it leaves (handing off what it buffers), starts
/// again and rejoins the ring.
async fn roll_last_gateway(gateways: &mut [DevGateway], started: Instant) -> anyhow::Result<()> {
    let last = gateways.len() - 1;
    let join = vec![gateways[0].cluster_addr.clone()];
    let g = &mut gateways[last];
    let at = started.elapsed().as_secs_f64();
    let buffered = g.status().await.map_or(0, |(_, b)| b);
    println!(
        "  -- {at:.0}s: rolling {}: it leaves the ring and hands its {buffered} buffered traces to the others --",
        g.name
    );
    g.stop().await;
    println!(
        "  -- {:.1}s: {} has left; starting it again --",
        started.elapsed().as_secs_f64(),
        g.name
    );
    g.start(&join, 4242).await?;
    wait_for_ring(gateways).await;
    let epoch = gateways[last].status().await.map_or(0, |(e, _)| e);
    println!(
        "  -- {:.1}s: {} is back and owns traces again (epoch {epoch}) --",
        started.elapsed().as_secs_f64(),
        gateways[last].name
    );
    Ok(())
}

/// What the demo did, from the metrics and the output files; fails if a secret the gateways
/// should have redacted reached a file.
fn print_summary(
    args: &DevArgs,
    stats: &LoadStats,
    gateways: &[DevGateway],
    data: &str,
) -> anyhow::Result<()> {
    let m = telemetry::render();
    let mut lines = 0;
    let mut spans = 0;
    let mut leaked = 0;
    for g in gateways {
        let file = format!("{data}/traces-{}.jsonl", g.name);
        let (l, s, k) = inspect_output(&file)?;
        lines += l;
        spans += s;
        leaked += k;
    }
    println!("demo finished:");
    println!("  {}", stats.sentence(args.demo_duration));
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
        "  gateways: kept {} spans, dropped by policy {}, exported {} to the files, failed {}",
        sum_metric(&m, telemetry::SAMPLING_SPANS_KEPT, &[]) as u64,
        sum_metric(
            &m,
            telemetry::SAMPLING_SPANS_DROPPED,
            &["reason=\"policy\""]
        ) as u64,
        sum_metric(&m, telemetry::EXPORTER_SENT_SPANS, &["exporter=\"file\""]) as u64,
        sum_metric(&m, telemetry::EXPORTER_SEND_FAILED_SPANS, &[]) as u64,
    );
    println!(
        "  cluster: {} traces handed off between gateways, {} spans forwarded to their owner",
        sum_metric(&m, tailgate_cluster::CLUSTER_HANDOFF_SENT_TRACES, &[]) as u64,
        sum_metric(&m, telemetry::CLUSTER_FORWARDED_OUT_SPANS, &[]) as u64,
    );
    println!(
        "  {data}/traces-*.jsonl: {lines} batches, {spans} spans; unredacted secrets found: {leaked}"
    );
    if leaked > 0 {
        anyhow::bail!("redaction failed: {leaked} secret value(s) reached {data}");
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
