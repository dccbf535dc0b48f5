//! The memory, latency and handoff benchmarks (P2–P4 of `docs/performance.md`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::{secs, sibling_binary};

use crate::harness::*;

#[derive(Args, Clone)]
pub struct MemoryArgs {
    /// Traces to buffer (20 spans each).
    #[arg(long, default_value_t = 50_000)]
    pub traces: u64,
}

pub fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let (_sink, sink_port) = start_sink()?;
    let port = free_port();
    let metrics = free_port();
    let cfg = render_config(&GatewayParams {
        grpc_port: port,
        sink_port,
        metrics_port: metrics,
        limit_mib: "16384",
        decision_wait: "600s",
        num_traces: &(args.traces * 2).to_string(),
        extra_sampling: "    buffer_limit_mib: 8192\n    shards: 1\n",
        compression: "none",
    });
    let dir = std::env::temp_dir().join(format!("tailgate-bench-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let gw = start_gateway(&dir, &cfg)?;
    wait_port(port, "tailgate")?;
    let pid = gw.child.id();
    // Warm the allocator and the connection with a small load first.
    loadgen(&[port], 60, 0, 4, 1000, 7, "none")?;
    std::thread::sleep(Duration::from_secs(1));
    let rss0 = status_kib(pid, "VmRSS:")? * 1024;
    let bytes0 = metric(metrics, "tailgate_sampling_buffered_bytes");
    let spans0 = metric(metrics, "tailgate_sampling_buffered_spans");
    let sent = loadgen(&[port], 600, 0, 4, args.traces, 8, "none")?;
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = status_kib(pid, "VmRSS:")? * 1024;
    let bytes = metric(metrics, "tailgate_sampling_buffered_bytes") - bytes0;
    let spans = metric(metrics, "tailgate_sampling_buffered_spans") - spans0;
    let grown = rss1.saturating_sub(rss0) as f64;
    println!(
        "P2: {} spans sent, {spans:.0} buffered ({:.0} encoded bytes, {:.0} bytes/span)",
        sent,
        bytes,
        bytes / spans.max(1.0)
    );
    println!(
        "P2: RSS grew {:.1} MiB for {:.1} MiB of encoded spans: {:.2}x encoded size (target <= 1.3x), {:.0} bytes per buffered span",
        grown / 1048576.0,
        bytes / 1048576.0,
        grown / bytes.max(1.0),
        grown / spans.max(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Args, Clone)]
pub struct LatencyArgs {
    /// Traces per second offered (steady, below saturation).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    #[arg(long, default_value = "20")]
    pub seconds: u64,
}

/// The `q` quantile from a Prometheus histogram's cumulative buckets (upper bound of the
/// first bucket holding it).
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    quantile(&histogram_buckets(text, name), q)
}

/// A histogram's cumulative buckets `(upper bound, count)`, by bound.
pub(crate) fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&bucket))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    buckets
}

/// The `q` quantile of cumulative buckets: the upper bound of the first bucket holding it.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
}

pub fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let (_sink, sink_port) = start_sink()?;
    let port = free_port();
    let metrics = free_port();
    let cfg = render_config(&GatewayParams {
        grpc_port: port,
        sink_port,
        metrics_port: metrics,
        limit_mib: "4096",
        decision_wait: "10s",
        num_traces: "200000",
        extra_sampling: "    decision_wait_after_root_received: 1s\n",
        compression: "none",
    });
    let dir = std::env::temp_dir().join(format!("tailgate-bench-lat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _gw = start_gateway(&dir, &cfg)?;
    wait_port(port, "tailgate")?;
    let sent = loadgen(&[port], args.seconds, args.rate, 4, 0, 9, "none")?;
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(metrics, "/metrics")?;
    let name = "otelcol_processor_tail_sampling_sampling_decision_timer_latency";
    let p50 = histogram_quantile(&text, name, 0.50);
    let p99 = histogram_quantile(&text, name, 0.99);
    let fmt = |v: Option<f64>| {
        v.map(|v| format!("<= {v} ms"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "P4: {sent} spans at {} traces/s; quiet period 1s after the root span",
        args.rate
    );
    println!(
        "P4: decision lateness after root + quiet period: p50 {}, p99 {} (target p99 <= 50 ms)",
        fmt(p50),
        fmt(p99)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Args, Clone)]
pub struct HandoffArgs {
    /// Traces buffered across the two gateways (20 spans each); the leaving one holds about
    /// half of them.
    #[arg(long, default_value_t = 100_000)]
    pub traces: u64,
}

/// The `--join` list of members on these loopback cluster ports.
pub(crate) fn join_list(cluster_ports: &[u16]) -> String {
    cluster_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A cluster gateway process logging to `dir`, on `core` (unpinned with `None`: the
/// handoff uses both cores).
pub(crate) fn start_member(
    dir: &std::path::Path,
    name: &str,
    config: &str,
    cluster_port: u16,
    join: &str,
    core: Option<&str>,
) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = match core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", core]).arg(sibling_binary("tailgate"));
            c
        }
        None => Command::new(sibling_binary("tailgate")),
    };
    let child = cmd
        .args(["gateway", "--config", &path.display().to_string()])
        .args([
            "--node-id",
            name,
            "--cluster-listen",
            &format!("127.0.0.1:{cluster_port}"),
        ])
        .args(["--join", join, "--shutdown-timeout", "60s"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc {
        child,
        name: name.to_string(),
    })
}

/// Seconds since the Unix epoch of a log line's RFC 3339 timestamp (UTC, `...Z`).
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Two members that decide nothing while the benchmark runs (every trace stays buffered),
/// started and waited for until both own ring ranges.
fn start_pair(
    dir: &std::path::Path,
    names: &[&str; 2],
    grpc: &[u16],
    metrics: &[u16],
    cluster: &[u16],
    sink_port: u16,
) -> anyhow::Result<Vec<Proc>> {
    let join = join_list(cluster);
    let mut procs = Vec::new();
    for i in 0..2 {
        // Nothing is decided while the benchmark runs: every trace stays buffered.
        let cfg = render_config(&GatewayParams {
            grpc_port: grpc[i],
            sink_port,
            metrics_port: metrics[i],
            limit_mib: "8192",
            decision_wait: "600s",
            num_traces: "1000000",
            extra_sampling: "",
            compression: "none",
        });
        procs.push(start_member(dir, names[i], &cfg, cluster[i], &join, None)?);
    }
    for i in 0..2 {
        wait_port(grpc[i], names[i])?;
    }
    let owners = "tailgate_cluster_owners";
    for _ in 0..200 {
        if metric(metrics[0], owners) == 2.0 && metric(metrics[1], owners) == 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(procs)
}

/// P3: a gateway leaving a 2-gateway cluster hands every buffered trace to the other.
pub fn handoff(args: HandoffArgs) -> anyhow::Result<()> {
    let (_sink, sink_port) = start_sink()?;
    let dir = std::env::temp_dir().join(format!("tailgate-bench-handoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let names = ["leaver", "stayer"];
    let grpc: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let metrics: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let cluster: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut procs = start_pair(&dir, &names, &grpc, &metrics, &cluster, sink_port)?;
    let sent = loadgen(&grpc, 600, 0, 4, args.traces, 11, "none")?;
    let on_memory = "otelcol_processor_tail_sampling_sampling_traces_on_memory";
    let spans_gauge = "tailgate_sampling_buffered_spans";
    std::thread::sleep(Duration::from_secs(1));
    let leaver_traces = metric(metrics[0], on_memory);
    let leaver_spans = metric(metrics[0], spans_gauge);
    let stayer_before = metric(metrics[1], on_memory);
    let leaver_pid = procs[0].child.id();
    let rss_kib = status_kib(leaver_pid, "VmRSS:").unwrap_or(0);
    let cpu0 = cpu_seconds(leaver_pid).unwrap_or(0.0);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &leaver_pid.to_string()])
        .status()?;
    let mut cpu1 = cpu0;
    let exited = loop {
        if let Ok(c) = cpu_seconds(leaver_pid) {
            cpu1 = c;
        }
        if procs[0].child.try_wait()?.is_some() {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the leaving gateway did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(dir.join("leaver.log"))?;
    let done_at = log
        .lines()
        .find(|l| l.contains("every buffered trace was handed off"))
        .and_then(log_time);
    let stayer_after = metric(metrics[1], on_memory);
    for l in log.lines().filter(|l| {
        l.contains("shutting down")
            || l.contains("left the ring")
            || l.contains("handed off")
            || l.contains("WARN")
    }) {
        println!("  leaver: {l}");
    }
    println!(
        "P3: {sent} spans sent; the leaving gateway held {leaver_traces} traces ({leaver_spans} spans, RSS {} MiB), the other {stayer_before}",
        rss_kib / 1024
    );
    match done_at {
        Some(at) => println!(
            "P3: SIGTERM -> every trace handed off: {:.2} s (target <= 5 s); -> process exit: {:.2} s; leaver CPU during shutdown {:.2} s",
            at - t0,
            secs(exited),
            cpu1 - cpu0
        ),
        None => println!(
            "P3: the leaving gateway never reported a completed handoff; exit after {:.2} s",
            secs(exited)
        ),
    }
    println!(
        "P3: the remaining gateway now buffers {stayer_after} traces (expected {})",
        stayer_before + leaver_traces
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
