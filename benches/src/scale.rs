//! `scale`: the P1 gateway pinned to 1, 2, 4, 8... cores. For each core count, in steady
//! state: first as fast as it takes spans (its maximum sustained rate, CPU-seconds per 1M
//! spans, peak RSS, peak held and buffered bytes, decision lateness), then at a fraction of
//! that rate (80% by default: P4's lateness target is read there, where a gateway is meant to
//! run).
//!
//! Each gateway core gets `--loadgen-per-core` load generator processes on cores of their own
//! (one loadgen core saturates about one gateway core in the P1 setup); a core count that
//! does not fit beside its load generators on this machine is skipped, and said so.
//! "Steady state": every figure is taken over the measured window only, after a warm-up as
//! long as the decision wait and more, so the buffer is full and decisions run as they arrive;
//! CPU and lateness are differences between the window's two ends.

use std::time::Duration;

use clap::Args;

use crate::gateway::{MemoryPeaks, MemoryWatch};
use crate::harness::{
    GatewayParams, Loadgen, cpu_seconds, free_port, http_get, loadgen_field, render_config,
    start_gateway_on, start_sink_on, wait_port,
};
use crate::measure::{histogram_buckets, quantile};
use crate::sibling_binary;

/// How late each deadline decision ran (milliseconds), the gateway's own histogram.
const LATENESS: &str = "otelcol_processor_tail_sampling_sampling_decision_timer_latency";

/// Spans per trace of the load (the P1 shape).
const SPANS_PER_TRACE: f64 = 20.0;

#[derive(Args, Clone)]
pub struct ScaleArgs {
    /// Gateway core counts, comma-separated.
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Load generator processes (each on a core of its own) per gateway core.
    #[arg(long, default_value_t = 1)]
    pub loadgen_per_core: usize,
    /// Measured window of each phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Unmeasured load before each window.
    #[arg(long, default_value_t = 5)]
    pub warmup_seconds: u64,
    /// Fraction of the maximum sustained rate of the second phase.
    #[arg(long, default_value_t = 0.8)]
    pub fraction: f64,
    #[arg(long, default_value = "2s")]
    pub decision_wait: String,
}

/// One measured window.
struct Window {
    spans_per_s: f64,
    cpu_per_million: f64,
    memory: MemoryPeaks,
    lateness_p50_ms: Option<f64>,
    lateness_p99_ms: Option<f64>,
}

pub fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let available = std::thread::available_parallelism()?.get();
    println!(
        "scale: the P1 gateway on N cores, {} loadgen process(es) per gateway core, {} s windows after {} s warm-up, decision_wait {}; this machine has {available} cores",
        args.loadgen_per_core, args.seconds, args.warmup_seconds, args.decision_wait
    );
    println!(
        "{:>5} | {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>9} {:>8} {:>8}",
        "cores",
        "max span/s",
        "CPU s/1M",
        "RSS MiB",
        "held MiB",
        "buf MiB",
        "p99 ms",
        "span/s",
        "CPU s/1M",
        "p50 ms",
        "p99 ms"
    );
    for &n in &args.cores {
        let loadgens = n * args.loadgen_per_core;
        if n == 0 || n + loadgens > available {
            println!(
                "{n:>5} | skipped: needs {} cores ({n} gateway + {loadgens} loadgen), this machine has {available}",
                n + loadgens
            );
            continue;
        }
        let (max, at_fraction) = scale_point(&args, n, loadgens)?;
        let mib = |b: f64| b / 1048576.0;
        let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("<={v}"));
        println!(
            "{n:>5} | {:>11.0} {:>9.3} {:>9.0} {:>9.0} {:>9.0} {:>9} | {:>11.0} {:>9.3} {:>8} {:>8}",
            max.spans_per_s,
            max.cpu_per_million,
            mib(max.memory.rss_bytes),
            mib(max.memory.accounted_bytes),
            mib(max.memory.buffered_bytes),
            ms(max.lateness_p99_ms),
            at_fraction.spans_per_s,
            at_fraction.cpu_per_million,
            ms(at_fraction.lateness_p50_ms),
            ms(at_fraction.lateness_p99_ms),
        );
    }
    println!(
        "left: as fast as the gateway takes spans; right: at {:.0}% of that rate (P4: lateness p99 target <= 50 ms). held = buffered + exporter queues + request bodies in flight; lateness = how long after its deadline each decision ran (bucket bounds)",
        args.fraction * 100.0
    );
    Ok(())
}

/// One core count: a fresh gateway, the maximum phase, then the fraction phase.
fn scale_point(args: &ScaleArgs, n: usize, loadgens: usize) -> anyhow::Result<(Window, Window)> {
    let loadgen_cores: Vec<String> = (n..n + loadgens).map(|c| c.to_string()).collect();
    let (_sink, sink_port) = start_sink_on(loadgen_cores.last().expect("one loadgen at least"))?;
    let port = free_port();
    let metrics_port = free_port();
    // Room for decision_wait of traffic at several hundred thousand spans/s per core.
    let limit_mib = (3072 * n).to_string();
    let num_traces = (200_000 * n).to_string();
    let cfg = render_config(&GatewayParams {
        grpc_port: port,
        sink_port,
        metrics_port,
        limit_mib: &limit_mib,
        decision_wait: &args.decision_wait,
        num_traces: &num_traces,
        extra_sampling: "",
        compression: "none",
    });
    let dir = std::env::temp_dir().join(format!("tailgate-bench-scale-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cores = if n == 1 {
        "0".to_string()
    } else {
        format!("0-{}", n - 1)
    };
    let gateway = start_gateway_on(&cores, &sibling_binary("tailgate"), &dir, &cfg)?;
    wait_port(port, "tailgate")?;
    let pid = gateway.child.id();
    let warmup = args
        .warmup_seconds
        .max(crate::parse_wait(&args.decision_wait).as_secs() + 2);

    load(&loadgen_cores, port, warmup, 0)?;
    let max = window(&loadgen_cores, port, pid, metrics_port, args.seconds, 0)?;
    let traces_per_s = (max.spans_per_s * args.fraction / SPANS_PER_TRACE).round() as u64;
    load(&loadgen_cores, port, warmup, traces_per_s.max(1))?;
    let at_fraction = window(
        &loadgen_cores,
        port,
        pid,
        metrics_port,
        args.seconds,
        traces_per_s.max(1),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((max, at_fraction))
}

/// Runs one loadgen per core in `cores` for `seconds`, `traces_per_s` over all of them (0: as
/// fast as the gateway takes them), and returns the spans the gateway accepted.
fn load(cores: &[String], port: u16, seconds: u64, traces_per_s: u64) -> anyhow::Result<u64> {
    let per_loadgen = traces_per_s.div_ceil(cores.len() as u64);
    let handles: Vec<_> = cores
        .iter()
        .enumerate()
        .map(|(i, core)| {
            let core = core.clone();
            std::thread::spawn(move || {
                Loadgen {
                    core: &core,
                    ports: &[port],
                    seconds,
                    rate: per_loadgen,
                    concurrency: 8,
                    traces: 0,
                    seed: 100 + i as u64,
                    compression: "none",
                }
                .run()
            })
        })
        .collect();
    let mut spans = 0.0;
    for h in handles {
        let line = h.join().expect("loadgen thread")?;
        spans += loadgen_field(&line, "spans") - loadgen_field(&line, "spans_failed");
    }
    Ok(spans as u64)
}

/// A measured window: the load, with CPU, lateness buckets and memory taken at both ends.
fn window(
    cores: &[String],
    port: u16,
    pid: u32,
    metrics_port: u16,
    seconds: u64,
    traces_per_s: u64,
) -> anyhow::Result<Window> {
    let before = histogram_buckets(&http_get(metrics_port, "/metrics")?, LATENESS);
    let cpu0 = cpu_seconds(pid)?;
    let watch = MemoryWatch::start(pid, metrics_port);
    let started = std::time::Instant::now();
    let spans = load(cores, port, seconds, traces_per_s)?;
    let elapsed = started.elapsed().max(Duration::from_secs(1));
    let cpu = cpu_seconds(pid)? - cpu0;
    let memory = watch.finish();
    let after = histogram_buckets(&http_get(metrics_port, "/metrics")?, LATENESS);
    // The window's own decisions: the cumulative buckets' growth over it.
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - was)
        })
        .collect();
    Ok(Window {
        spans_per_s: spans as f64 / elapsed.as_secs_f64(),
        cpu_per_million: cpu / spans.max(1) as f64 * 1e6,
        memory,
        lateness_p50_ms: quantile(&delta, 0.50),
        lateness_p99_ms: quantile(&delta, 0.99),
    })
}
