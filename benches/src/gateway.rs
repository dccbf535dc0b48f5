//! P1: CPU-seconds per million spans of the gateway pipeline, Tailgate beside the reference
//! collector's `tail_sampling` on the same YAML and rotel, A B C in turn; for Tailgate also the
//! memory it holds beside the memory it costs (`MemoryWatch`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::harness::{
    GatewayParams, cpu_seconds, find_rotel, free_port, loadgen, median, metric, pinned,
    render_config, sink_count, start_gateway_binary, start_rotel, start_sink, status_kib,
    wait_drained, wait_port,
};
use crate::sibling_binary;

#[derive(Args, Clone)]
pub struct GatewayArgs {
    /// Measured load per run.
    #[arg(long, default_value = "20")]
    pub seconds: u64,
    /// Unmeasured load before each run.
    #[arg(long, default_value = "3")]
    pub warmup_seconds: u64,
    /// A B rounds (Tailgate, rotel).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Traces per second offered; 0 = as fast as the target takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// `decision_wait` for Tailgate (the article uses 10s; shorter keeps the buffer small
    /// at benchmark rates without changing the per-span work).
    #[arg(long, default_value = "2s")]
    pub decision_wait: String,
    /// Compression on every hop (loadgen → system → sink): `none`, `gzip` or `zstd`.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "zstd"])]
    pub compression: String,
    /// rotel-agent binary; found through the `rotel` Python package when unset.
    #[arg(long)]
    pub rotel: Option<PathBuf>,
    /// Skip rotel (when it is not installed).
    #[arg(long)]
    pub no_rotel: bool,
    /// The reference OpenTelemetry Collector (`tests/peers/build-collector.sh` prints its
    /// path): runs the same pipeline YAML with its own `tail_sampling`, in turn with the others.
    #[arg(long)]
    pub collector: Option<PathBuf>,
    /// Tailgate builds to compare, `LABEL=PATH` (repeatable; e.g. one per allocator, see
    /// `benches/allocators.sh`). Default: the `tailgate` binary beside this one.
    #[arg(long = "tailgate-bin", value_parser = parse_labelled_path)]
    pub tailgate_bins: Vec<(String, PathBuf)>,
    /// Also run each Tailgate build with RED metrics before sampling (a `spanmetrics`
    /// connector fed by every span, served by a `prometheus` exporter), as its own row.
    #[arg(long)]
    pub span_metrics: bool,
}

/// The P1 config plus RED metrics from every span: the form users write (a second traces
/// pipeline from the same receiver into the connector, a metrics pipeline to Prometheus).
fn with_span_metrics(cfg: &str, prometheus_port: u16) -> String {
    cfg.replace(
        "exporters:\n  otlp/sink:",
        &format!(
            "connectors:\n  spanmetrics:\n    dimensions: [{{name: http.route}}]\n    exemplars: {{enabled: true}}\n    metrics_flush_interval: 5s\nexporters:\n  prometheus:\n    endpoint: 127.0.0.1:{prometheus_port}\n  otlp/sink:"
        ),
    )
    .replace(
        "      exporters: [otlp/sink]\n",
        "      exporters: [otlp/sink]\n    traces/spanmetrics:\n      receivers: [otlp]\n      exporters: [spanmetrics]\n    metrics:\n      receivers: [spanmetrics]\n      exporters: [prometheus]\n",
    )
}

fn parse_labelled_path(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected LABEL=PATH, got {s:?}"))?;
    Ok((label.to_string(), PathBuf::from(path)))
}

/// Peaks of a gateway's memory while a load runs, sampled every [`MEMORY_SAMPLE_INTERVAL`]
/// from its metrics and `/proc`: what it holds by its own account beside what it costs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MemoryPeaks {
    /// Buffered encoded spans + exporter queues and sends in flight + request bodies in
    /// flight (`tailgate_sampling_buffered_bytes`, `tailgate_exporter_queue_bytes`,
    /// `tailgate_receiver_inflight_bytes`), at their largest sum.
    pub(crate) accounted_bytes: f64,
    /// The allocator's live bytes (`otelcol_process_runtime_heap_alloc_bytes`).
    pub(crate) live_bytes: f64,
    pub(crate) rss_bytes: f64,
    /// Encoded spans buffered by the sampling engine alone, at their largest.
    pub(crate) buffered_bytes: f64,
}

const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Samples memory peaks on a thread until dropped (then [`MemoryWatch::finish`]).
pub(crate) struct MemoryWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<MemoryPeaks>,
}

impl MemoryWatch {
    pub(crate) fn start(pid: u32, metrics_port: u16) -> MemoryWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peaks = MemoryPeaks::default();
            while !flag.load(Ordering::Relaxed) {
                let buffered = metric(metrics_port, "tailgate_sampling_buffered_bytes");
                let accounted = buffered
                    + metric(metrics_port, "tailgate_exporter_queue_bytes")
                    + metric(metrics_port, "tailgate_receiver_inflight_bytes");
                let live = metric(metrics_port, "otelcol_process_runtime_heap_alloc_bytes");
                let rss = status_kib(pid, "VmRSS:").unwrap_or(0) as f64 * 1024.0;
                peaks.accounted_bytes = peaks.accounted_bytes.max(accounted);
                peaks.live_bytes = peaks.live_bytes.max(live);
                peaks.rss_bytes = peaks.rss_bytes.max(rss);
                peaks.buffered_bytes = peaks.buffered_bytes.max(buffered);
                std::thread::sleep(MEMORY_SAMPLE_INTERVAL);
            }
            peaks
        });
        MemoryWatch { stop, thread }
    }

    pub(crate) fn finish(self) -> MemoryPeaks {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

struct RunResult {
    system: String,
    spans_in: u64,
    cpu_s: f64,
    peak_rss_mib: f64,
    exported: u64,
    /// Tailgate only: memory peaks during the measured load.
    memory: Option<MemoryPeaks>,
}

impl RunResult {
    fn cpu_per_million(&self) -> f64 {
        self.cpu_s / self.spans_in.max(1) as f64 * 1e6
    }
}

fn rotel_path(args: &GatewayArgs) -> anyhow::Result<PathBuf> {
    find_rotel(args.rotel.as_ref())
}

/// A system under test: a Tailgate build, the reference collector, or rotel.
#[derive(Clone)]
enum System {
    Tailgate {
        label: String,
        binary: PathBuf,
        /// With `--span-metrics`: RED metrics from every span before sampling.
        span_metrics: bool,
    },
    /// The same YAML in the collector (its metrics endpoint off: CPU and RSS come from /proc).
    Collector(PathBuf),
    Rotel(PathBuf),
}

impl System {
    fn label(&self) -> &str {
        match self {
            System::Tailgate { label, .. } => label,
            System::Collector(_) => "collector",
            System::Rotel(_) => "rotel",
        }
    }
}

fn run_once(system: &System, args: &GatewayArgs, seed: u64) -> anyhow::Result<RunResult> {
    let (_sink, sink_port) = start_sink()?;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tailgate-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut metrics_port = None;
    let (target, quiet) = match system {
        System::Tailgate {
            binary,
            span_metrics,
            ..
        } => {
            let metrics = free_port();
            metrics_port = Some(metrics);
            let mut cfg = render_config(&GatewayParams {
                grpc_port: port,
                sink_port,
                metrics_port: metrics,
                limit_mib: "4096",
                decision_wait: &args.decision_wait,
                num_traces: "200000",
                extra_sampling: "",
                compression: &args.compression,
            });
            if *span_metrics {
                cfg = with_span_metrics(&cfg, free_port());
            }
            let p = start_gateway_binary(binary, &dir, &cfg)?;
            let wait = crate::parse_wait(&args.decision_wait) + Duration::from_secs(3);
            (p, wait)
        }
        System::Collector(binary) => {
            let cfg = render_config(&GatewayParams {
                grpc_port: port,
                sink_port,
                metrics_port: 0,
                limit_mib: "4096",
                decision_wait: &args.decision_wait,
                num_traces: "200000",
                extra_sampling: "",
                compression: &args.compression,
            })
            .replace("      address: 127.0.0.1:0\n", "      level: none\n");
            let path = dir.join("collector.yaml");
            std::fs::write(&path, cfg)?;
            let p = pinned(
                "0",
                binary,
                &["--config".to_string(), path.display().to_string()],
                "collector",
            )?;
            let wait = crate::parse_wait(&args.decision_wait) + Duration::from_secs(3);
            (p, wait)
        }
        System::Rotel(rotel) => {
            let p = start_rotel(rotel, port, sink_port, &dir, &args.compression)?;
            (p, Duration::from_secs(3))
        }
    };
    wait_port(port, target.name.as_str())?;
    let pid = target.child.id();
    loadgen(
        &[port],
        args.warmup_seconds,
        args.rate,
        args.concurrency,
        0,
        seed + 1000,
        &args.compression,
    )?;
    wait_drained(sink_port, quiet, Duration::from_secs(60));
    let cpu0 = cpu_seconds(pid)?;
    let sink0 = sink_count(sink_port);
    let watch = metrics_port.map(|m| MemoryWatch::start(pid, m));
    let spans_in = loadgen(
        &[port],
        args.seconds,
        args.rate,
        args.concurrency,
        0,
        seed,
        &args.compression,
    )?;
    let sink1 = wait_drained(sink_port, quiet, Duration::from_secs(120));
    let cpu1 = cpu_seconds(pid)?;
    let peak = status_kib(pid, "VmHWM:")? as f64 / 1024.0;
    let memory = watch.map(MemoryWatch::finish);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunResult {
        system: system.label().to_string(),
        spans_in,
        cpu_s: cpu1 - cpu0,
        peak_rss_mib: peak,
        exported: sink1 - sink0,
        memory,
    })
}

pub fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let builds: Vec<(String, PathBuf)> = if args.tailgate_bins.is_empty() {
        vec![("tailgate".into(), sibling_binary("tailgate"))]
    } else {
        args.tailgate_bins.clone()
    };
    let mut systems: Vec<System> = Vec::new();
    for (label, binary) in builds {
        if args.span_metrics {
            systems.push(System::Tailgate {
                label: format!("{label}+red"),
                binary: binary.clone(),
                span_metrics: true,
            });
        }
        systems.push(System::Tailgate {
            label,
            binary,
            span_metrics: false,
        });
    }
    if let Some(c) = &args.collector {
        systems.push(System::Collector(c.clone()));
    }
    if !args.no_rotel {
        if args.compression == "zstd" {
            // rotel's OTLP exporter compresses with gzip or not at all.
            println!("rotel: not run, its exporter has no zstd (gzip or none)");
        } else {
            systems.push(System::Rotel(rotel_path(&args)?));
        }
    }
    print_header(&args);
    let mut results = Vec::new();
    for round in 0..args.rounds {
        for (i, system) in systems.iter().enumerate() {
            let r = run_once(system, &args, 42 + round as u64)?;
            let mib = |b: f64| b / 1048576.0;
            let (live, held, ratio) = match r.memory {
                Some(m) => (
                    format!("{:.0}", mib(m.live_bytes)),
                    format!("{:.0}", mib(m.accounted_bytes)),
                    format!("{:.2}", m.rss_bytes / m.accounted_bytes.max(1.0)),
                ),
                None => ("—".into(), "—".into(), "—".into()),
            };
            println!(
                "{:<4} {:<14} {:>12} {:>9.2} {:>11.3} {:>9.0} {:>12} {:>13} {:>13} {:>12}",
                format!("{}{}", (b'A' + i as u8) as char, round + 1),
                r.system,
                r.spans_in,
                r.cpu_s,
                r.cpu_per_million(),
                r.peak_rss_mib,
                live,
                held,
                ratio,
                r.exported
            );
            results.push(r);
        }
    }
    println!(
        "peak held = buffered encoded spans + exporter queues and sends in flight + request bodies in flight, at their largest; RSS / held = peak RSS sampled with it (target <= 1.5)"
    );
    print_medians(&systems, &results);
    Ok(())
}

fn print_header(args: &GatewayArgs) {
    println!(
        "P1: gateway on core 0, loadgen on core 1; 20 spans/trace, 10 attributes, ~512 spans/request, compression {}, rate {}, {}s per run",
        args.compression,
        if args.rate == 0 {
            "max".to_string()
        } else {
            format!("{} traces/s", args.rate)
        },
        args.seconds
    );
    println!(
        "{:<4} {:<14} {:>12} {:>9} {:>11} {:>9} {:>12} {:>13} {:>13} {:>12}",
        "run",
        "system",
        "spans in",
        "cpu s",
        "cpu s / 1M",
        "peak RSS",
        "peak live",
        "peak held",
        "RSS / held",
        "exported"
    );
    println!(
        "{:<4} {:<14} {:>12} {:>9} {:>11} {:>9} {:>12} {:>13} {:>13} {:>12}",
        "", "", "", "", "", "MiB", "MiB", "MiB", "", ""
    );
}

/// Each system's median CPU-seconds per million spans, and its ratio to the first system.
fn print_medians(systems: &[System], results: &[RunResult]) {
    let med = |sys: &str| {
        median(
            results
                .iter()
                .filter(|r| r.system == sys)
                .map(RunResult::cpu_per_million)
                .collect(),
        )
    };
    let first = systems[0].label().to_string();
    let t = med(&first);
    for system in systems {
        let label = system.label();
        let m = med(label);
        match system {
            System::Tailgate { .. } => println!(
                "median {label}: {m:.3} CPU-s per 1M spans (target P1 <= 1.0); ratio to {first}: {:.2}x",
                m / t
            ),
            System::Collector(_) => {
                println!(
                    "median collector (the same YAML, its tail_sampling): {m:.3} CPU-s per 1M spans"
                );
                println!("ratio collector / {first}: {:.2}x", m / t);
            }
            System::Rotel(_) => {
                println!("median rotel (forwarding, no sampling): {m:.3} CPU-s per 1M spans");
                println!("ratio rotel / {first}: {:.2}x", m / t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_metrics_variant_is_a_valid_config() {
        let cfg = render_config(&GatewayParams {
            grpc_port: 4317,
            sink_port: 4318,
            metrics_port: 8888,
            limit_mib: "4096",
            decision_wait: "2s",
            num_traces: "200000",
            extra_sampling: "",
            compression: "none",
        });
        let red = with_span_metrics(&cfg, 8889);
        let loaded = tailgate_config::load_str(&red, "p1-red.yaml", &|_| None)
            .unwrap_or_else(|e| panic!("{e}\n{red}"));
        assert_eq!(loaded.service.pipelines.len(), 3);
        assert_eq!(loaded.connectors.len(), 1);
    }
}
