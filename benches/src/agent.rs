//! `agent`: the agent's CPU-seconds per million spans, three pipelines side by side in turn:
//!
//! - `agent`: the reference article's agent pipeline — `memory_limiter`, `k8sattributes`
//!   (pods from an in-process fake API server, found by the connection's address, 5 metadata
//!   attributes + 2 labels added to every resource), `filter/drop_health_checks` (3 OTTL
//!   conditions on every span), `batch`, `loadbalancing` by trace ID over 3 sinks;
//! - `collector`: the reference OpenTelemetry Collector (`tests/peers/`) on the same YAML — its
//!   `k8sattributes` watching the same fake API server, its `loadbalancing` over the same sinks;
//! - `forward`: the cheapest agent — `memory_limiter`, `batch`, one `otlp` exporter;
//! - `rotel`: rotel-agent forwarding to one sink (when installed).
//!
//! The sinks count the spans whose resource carries `k8s.pod.name`, printed as "enriched": an
//! agent that skipped the enrichment would look cheap for the wrong reason.
//!
//! The agent routes by hashing over the three endpoints (the sinks serve no `WatchRing`):
//! the per-span work is the same ring lookup as routing by the gateways' ring.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tailgate_k8s::fake_api::FakeApiServer;

use crate::harness::{
    Proc, cpu_seconds, find_rotel, free_port, loadgen, median, sink_counts, start_rotel,
    start_sink, status_kib, wait_drained, wait_port,
};
use crate::sibling_binary;

#[derive(Args, Clone)]
pub struct AgentArgs {
    #[arg(long, default_value = "15")]
    pub seconds: u64,
    #[arg(long, default_value = "3")]
    pub warmup_seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long)]
    pub rotel: Option<PathBuf>,
    #[arg(long)]
    pub no_rotel: bool,
    /// The reference OpenTelemetry Collector (`tests/peers/build-collector.sh` prints its
    /// path), run on the same agent YAML.
    #[arg(long)]
    pub collector: Option<PathBuf>,
}

const AGENT_CONFIG: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
        max_recv_msg_size_mib: 16
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 2048
    spike_limit_mib: 512
  k8sattributes:
    auth_type: kubeConfig
    extract:
      metadata: [k8s.pod.name, k8s.pod.uid, k8s.deployment.name, k8s.namespace.name, k8s.node.name]
      labels:
        - tag_name: app.version
          key: app.kubernetes.io/version
          from: pod
        - tag_name: team
          key: team
          from: pod
    pod_association:
      - sources:
          - from: resource_attribute
            name: k8s.pod.ip
      - sources:
          - from: connection
  filter/drop_health_checks:
    error_mode: ignore
    traces:
      span:
        - 'attributes["http.route"] == "/healthz"'
        - 'attributes["http.route"] == "/readyz"'
        - 'attributes["http.route"] == "/metrics"'
  batch:
    send_batch_size: 512
    timeout: 1s
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls:
          insecure: true
        compression: none
    resolver:
      static:
        hostnames: [127.0.0.1:{sink0}, 127.0.0.1:{sink1}, 127.0.0.1:{sink2}]
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, k8sattributes, filter/drop_health_checks, batch]
      exporters: [loadbalancing]
"#;

const FORWARD_CONFIG: &str = r"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
        max_recv_msg_size_mib: 16
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 2048
    spike_limit_mib: 512
  batch:
    send_batch_size: 512
    timeout: 1s
exporters:
  otlp:
    endpoint: 127.0.0.1:{sink0}
    tls:
      insecure: true
    compression: none
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
";

/// The pods the fake API server lists: the load generator's connections come from
/// 127.0.0.1, which is one of them; the rest make the store realistic.
fn seed_pods(api: &FakeApiServer) {
    api.apply(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "uid": "ns"}}),
    );
    api.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "loadgen-5d8f", "namespace": "shop", "uid": "rs",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "loadgen", "uid": "d", "controller": true}]}}));
    for i in 0..110u32 {
        let ip = if i == 0 {
            "127.0.0.1".to_string()
        } else {
            format!("10.42.{}.{}", i / 250, i % 250 + 1)
        };
        api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("loadgen-5d8f-{i:05}"), "namespace": "shop", "uid": format!("pod-{i}"),
                "labels": {"app.kubernetes.io/version": "1.0.0", "team": "perf"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "loadgen-5d8f", "uid": "rs", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "acme/loadgen:1.0.0"}]},
            "status": {"podIP": ip}}));
    }
}

struct Run {
    system: &'static str,
    spans_in: u64,
    cpu_s: f64,
    peak_rss_mib: f64,
    delivered: u64,
    enriched: u64,
}

/// Starts `program ARGS` on core 0 with the fake API server's kubeconfig.
fn pinned_with_kubeconfig(
    program: &std::path::Path,
    args: &[&str],
    kubeconfig: &std::path::Path,
    name: &str,
    log: &std::path::Path,
) -> anyhow::Result<Proc> {
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", program.display()))?;
    Ok(Proc {
        child,
        name: name.into(),
    })
}

fn run_once(
    system: &'static str,
    args: &AgentArgs,
    kubeconfig: &std::path::Path,
    rotel: Option<&PathBuf>,
    seed: u64,
) -> anyhow::Result<Run> {
    let sinks: Vec<(Proc, u16)> = (0..3).map(|_| start_sink()).collect::<Result<_, _>>()?;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "tailgate-bench-agent-{}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let config = |template: &str| -> anyhow::Result<String> {
        let text = template
            .replace("{grpc}", &port.to_string())
            .replace("{sink0}", &sinks[0].1.to_string())
            .replace("{sink1}", &sinks[1].1.to_string())
            .replace("{sink2}", &sinks[2].1.to_string());
        let path = dir.join("agent.yaml");
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let log = dir.join(format!("{system}.log"));
    let target = match system {
        "rotel" => start_rotel(rotel.expect("rotel path"), port, sinks[0].1, &dir, "none")?,
        "collector" => pinned_with_kubeconfig(
            args.collector.as_ref().expect("collector path"),
            &["--config", &config(AGENT_CONFIG)?],
            kubeconfig,
            "collector",
            &log,
        )?,
        "agent" | "forward" => pinned_with_kubeconfig(
            &sibling_binary("tailgate"),
            &[
                "agent",
                "--config",
                &config(if system == "agent" {
                    AGENT_CONFIG
                } else {
                    FORWARD_CONFIG
                })?,
            ],
            kubeconfig,
            "tailgate agent",
            &log,
        )?,
        other => unreachable!("no system {other}"),
    };
    wait_port(port, &target.name)?;
    let pid = target.child.id();
    let delivered = || {
        sinks
            .iter()
            .map(|(_, p)| sink_counts(*p))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    loadgen(
        &[port],
        args.warmup_seconds,
        0,
        args.concurrency,
        0,
        seed + 1000,
        "none",
    )?;
    for (_, p) in &sinks {
        wait_drained(*p, Duration::from_secs(2), Duration::from_secs(30));
    }
    let cpu0 = cpu_seconds(pid)?;
    let before = delivered();
    let spans_in = loadgen(&[port], args.seconds, 0, args.concurrency, 0, seed, "none")?;
    for (_, p) in &sinks {
        wait_drained(*p, Duration::from_secs(2), Duration::from_secs(60));
    }
    let cpu1 = cpu_seconds(pid)?;
    let peak = status_kib(pid, "VmHWM:")? as f64 / 1024.0;
    let after = delivered();
    let enriching = matches!(system, "agent" | "collector");
    if enriching && after.1 - before.1 < after.0 - before.0 {
        warn_unenriched(system, &log);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        system,
        spans_in,
        cpu_s: cpu1 - cpu0,
        peak_rss_mib: peak,
        delivered: after.0 - before.0,
        enriched: after.1 - before.1,
    })
}

/// Says that some spans arrived without Kubernetes metadata, with the end of the system's log.
fn warn_unenriched(system: &str, log: &std::path::Path) {
    let tail: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .take(15)
        .map(str::to_string)
        .collect();
    eprintln!(
        "{system}: some spans arrived without Kubernetes metadata; its log ends:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

pub fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let rotel = if args.no_rotel {
        None
    } else {
        find_rotel(args.rotel.as_ref()).ok()
    };
    // The fake API server lives on a runtime of its own for the whole benchmark.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let api = rt.block_on(FakeApiServer::start())?;
    seed_pods(&api);
    let kubeconfig =
        std::env::temp_dir().join(format!("tailgate-bench-kubeconfig-{}", std::process::id()));
    std::fs::write(&kubeconfig, api.kubeconfig())?;

    println!(
        "agent: the agent on core 0, loadgen and 3 sinks on core 1; 20 spans/trace, 10 attributes, ~512 spans/request, {}s per run",
        args.seconds
    );
    println!(
        "{:<4} {:<9} {:>12} {:>9} {:>12} {:>13} {:>12} {:>12}",
        "run", "system", "spans in", "cpu s", "cpu s / 1M", "peak RSS MiB", "delivered", "enriched"
    );
    let mut results: Vec<Run> = Vec::new();
    for round in 0..args.rounds {
        let mut systems = vec!["agent"];
        if args.collector.is_some() {
            systems.push("collector");
        }
        systems.push("forward");
        if rotel.is_some() {
            systems.push("rotel");
        }
        for (i, system) in systems.into_iter().enumerate() {
            let r = run_once(
                system,
                &args,
                &kubeconfig,
                rotel.as_ref(),
                42 + round as u64,
            )?;
            println!(
                "{:<4} {:<9} {:>12} {:>9.2} {:>12.3} {:>13.0} {:>12} {:>12}",
                format!("{}{}", (b'A' + i as u8) as char, round + 1),
                r.system,
                r.spans_in,
                r.cpu_s,
                r.cpu_s / r.spans_in.max(1) as f64 * 1e6,
                r.peak_rss_mib,
                r.delivered,
                r.enriched
            );
            results.push(r);
        }
    }
    let _ = std::fs::remove_file(&kubeconfig);
    let med = |sys: &str| {
        median(
            results
                .iter()
                .filter(|r| r.system == sys)
                .map(|r| r.cpu_s / r.spans_in.max(1) as f64 * 1e6)
                .collect(),
        )
    };
    let (a, f) = (med("agent"), med("forward"));
    println!("median agent (enrich + filter + route): {a:.3} CPU-s per 1M spans");
    println!(
        "median forward-only agent: {f:.3} CPU-s per 1M spans; enrichment, filter and routing cost {:.2}x",
        a / f
    );
    if args.collector.is_some() {
        let c = med("collector");
        println!(
            "median collector (the same agent YAML): {c:.3} CPU-s per 1M spans; ratio collector / agent {:.2}x",
            c / a
        );
    }
    if rotel.is_some() {
        let r = med("rotel");
        println!(
            "median rotel (forwarding only): {r:.3} CPU-s per 1M spans; ratio rotel / agent {:.2}x",
            r / a
        );
    }
    drop(api);
    Ok(())
}
