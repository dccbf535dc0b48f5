//! What `replication_factor: 2` costs (docs/cluster.md, "Crash durability"): two cluster
//! gateways sharing core 0 take the same load (`tailgate loadgen` on core 1, round-robin over
//! both, so half of every batch is forwarded) at replication factor 1 and 2, in turn
//! (1 2 1 2 …). Per run: CPU-seconds of both processes per million spans accepted (from the
//! load's start until the sink is quiet, so deciding, exporting and the replicas' work are
//! inside the window), their summed peak RSS, RSS growth per buffered span at the fullest
//! moment, and the load generator's request latency from first attempt to acknowledgement
//! (what the owner's wait for the replica adds). Then medians and the RF 2 / RF 1 ratios.

use std::time::{Duration, Instant};

use clap::Args;

use crate::harness::{
    GatewayParams, Proc, cpu_seconds, free_port, loadgen_field, loadgen_line, median, metric,
    render_config, start_sink, status_kib, wait_drained, wait_port,
};
use crate::measure::{join_list, start_member};
use crate::{parse_wait, secs};

#[derive(Args, Clone)]
pub struct ReplicationArgs {
    /// Traces per second (20 spans each), over both gateways.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Runs of each replication factor, alternating.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// `decision_wait` of both gateways: how much each buffers.
    #[arg(long, default_value = "10s")]
    pub decision_wait: String,
}

/// One run's figures.
struct Figures {
    spans: f64,
    cpu_per_million: f64,
    peak_rss_mib: f64,
    /// Spans buffered as primaries at the fullest moment, and the copies held then.
    buffered: f64,
    copies: f64,
    rss_bytes_per_buffered_span: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

const NAMES: [&str; 2] = ["a", "b"];

/// One figure of a run, for the table of medians.
type Column = fn(&Figures) -> f64;

/// Both members, pinned to core 0, once they own ring ranges.
fn start_members(
    dir: &std::path::Path,
    args: &ReplicationArgs,
    replication_factor: u8,
    sink_port: u16,
    grpc: &[u16],
    metrics: &[u16],
) -> anyhow::Result<Vec<Proc>> {
    let cluster: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
    let join = join_list(&cluster);
    let mut procs = Vec::new();
    for i in 0..NAMES.len() {
        let cfg = render_config(&GatewayParams {
            grpc_port: grpc[i],
            sink_port,
            metrics_port: metrics[i],
            limit_mib: "8192",
            decision_wait: &args.decision_wait,
            num_traces: "1000000",
            extra_sampling: "",
            compression: "none",
        }) + &format!("cluster:\n  replication_factor: {replication_factor}\n");
        procs.push(start_member(
            dir,
            NAMES[i],
            &cfg,
            cluster[i],
            &join,
            Some("0"),
        )?);
    }
    for i in 0..NAMES.len() {
        wait_port(grpc[i], NAMES[i])?;
    }
    let owners = "tailgate_cluster_owners";
    for _ in 0..200 {
        if metrics.iter().all(|m| metric(*m, owners) == 2.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(procs)
}

fn run_once(args: &ReplicationArgs, replication_factor: u8) -> anyhow::Result<Figures> {
    let (_sink, sink_port) = start_sink()?;
    let dir = std::env::temp_dir().join(format!(
        "tailgate-bench-rf{replication_factor}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let grpc: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
    let metrics: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
    let procs = start_members(&dir, args, replication_factor, sink_port, &grpc, &metrics)?;
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let sum = |f: &dyn Fn(u32) -> f64| pids.iter().map(|p| f(*p)).sum::<f64>();
    let rss = || sum(&|p| status_kib(p, "VmRSS:").unwrap_or(0) as f64 * 1024.0);
    let rss_base = rss();
    let cpu0 = sum(&|p| cpu_seconds(p).unwrap_or(0.0));
    let (seconds, rate) = (args.seconds, args.rate);
    let ports = grpc.clone();
    let load = std::thread::spawn(move || loadgen_line(&ports, seconds, rate, 8, 0, 13, "none"));
    // The fullest moment: most spans buffered as primaries (sampled while the load runs).
    let (mut buffered, mut copies, mut rss_then) = (0.0, 0.0, rss_base);
    while !load.is_finished() {
        std::thread::sleep(Duration::from_millis(500));
        let b: f64 = metrics
            .iter()
            .map(|m| metric(*m, "tailgate_sampling_buffered_spans"))
            .sum();
        if b > buffered {
            buffered = b;
            copies = metrics
                .iter()
                .map(|m| metric(*m, "tailgate_replica_held_spans"))
                .sum();
            rss_then = rss();
        }
    }
    let line = load.join().expect("loadgen thread")?;
    // Every decision falls due, kept decisions reach the replicas, the sink goes quiet.
    std::thread::sleep(parse_wait(&args.decision_wait) + Duration::from_secs(6));
    let started = Instant::now();
    wait_drained(sink_port, Duration::from_secs(2), Duration::from_secs(60));
    let cpu1 = sum(&|p| cpu_seconds(p).unwrap_or(0.0));
    let peak = sum(&|p| status_kib(p, "VmHWM:").unwrap_or(0) as f64 * 1024.0);
    let spans = loadgen_field(&line, "spans") - loadgen_field(&line, "spans_failed");
    println!(
        "  rf {replication_factor}: {spans} spans; CPU {:.2} s; drained {:.1} s after the decisions",
        cpu1 - cpu0,
        secs(started.elapsed())
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Figures {
        spans,
        cpu_per_million: (cpu1 - cpu0) / spans.max(1.0) * 1e6,
        peak_rss_mib: peak / (1024.0 * 1024.0),
        buffered,
        copies,
        rss_bytes_per_buffered_span: (rss_then - rss_base) / buffered.max(1.0),
        latency_p50_ms: loadgen_field(&line, "latency_p50_ms"),
        latency_p99_ms: loadgen_field(&line, "latency_p99_ms"),
    })
}

/// RF 1 beside RF 2, alternating; prints each run, then medians and ratios.
pub fn replication(args: ReplicationArgs) -> anyhow::Result<()> {
    println!(
        "replication: two gateways on core 0, loadgen on core 1, {} traces/s x 20 spans for {} s, decision_wait {}",
        args.rate, args.seconds, args.decision_wait
    );
    let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (i, rf) in [1u8, 2].into_iter().enumerate() {
            let f = run_once(&args, rf)?;
            println!(
                "round {round} rf {rf}: {:.2} CPU-s per 1M spans, peak RSS {:.0} MiB, {:.0} spans buffered (+{:.0} copies), {:.0} RSS bytes per buffered span, ingest latency p50 {:.1} ms p99 {:.1} ms",
                f.cpu_per_million,
                f.peak_rss_mib,
                f.buffered,
                f.copies,
                f.rss_bytes_per_buffered_span,
                f.latency_p50_ms,
                f.latency_p99_ms
            );
            runs[i].push(f);
        }
    }
    let med = |i: usize, f: Column| median(runs[i].iter().map(f).collect());
    let rows: [(&str, Column); 6] = [
        ("spans accepted", |f| f.spans),
        ("CPU-s per 1M spans (both gateways)", |f| f.cpu_per_million),
        ("peak RSS, MiB (both)", |f| f.peak_rss_mib),
        ("RSS bytes per buffered span", |f| {
            f.rss_bytes_per_buffered_span
        }),
        ("ingest latency p50, ms", |f| f.latency_p50_ms),
        ("ingest latency p99, ms", |f| f.latency_p99_ms),
    ];
    println!(
        "| median of {} runs | RF 1 | RF 2 | RF 2 / RF 1 |",
        args.rounds
    );
    println!("|---|---|---|---|");
    for (name, f) in rows {
        let (a, b) = (med(0, f), med(1, f));
        println!("| {name} | {a:.2} | {b:.2} | {:.2}x |", b / a.max(1e-9));
    }
    Ok(())
}
