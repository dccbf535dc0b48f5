//! `tailgate-bench`: figures for `docs/performance.md`, measured side by side in one run.
//!
//! - `gateway`: P1 — the gateway pinned to one core (`taskset`), the article's policies,
//!   20 spans per trace, ~400-byte spans with 10 attributes, 512 spans per request, driven by
//!   `tailgate loadgen` on the other core; CPU-seconds of the gateway process per million spans
//!   it took in, and its peak RSS. Then rotel forwarding the same load to the same sink, in
//!   turn (A B A B), medians and the ratio.
//! - `memory`: P2 — memory per buffered span: RSS growth of a gateway holding a known number
//!   of spans (nothing decided yet), divided by their encoded bytes.
//! - `latency`: P4 — how late decisions run after their deadline (root span + quiet period)
//!   under steady load, from the gateway's own lateness histogram.
//! - `handoff`: P3 — two cluster gateways buffer a known load (nothing decided); one gets
//!   SIGTERM and hands every trace to the other; time to the completed handoff and to exit.
//! - `replication`: what `replication_factor: 2` costs beside 1 — CPU per span, peak RSS, RSS
//!   per buffered span and ingest latency of a two-gateway cluster (`replication.rs`).
//! - `agent`: the agent's CPU-seconds per million spans with enrichment, health-check filter
//!   and routing, beside a forward-only agent and rotel (`agent.rs`).
//! - `scale`: the gateway pinned to 1, 2, 4, 8... cores, each with its own load generator
//!   cores: maximum sustained rate, CPU per span, memory and decision lateness, then the
//!   same at 80% of that rate (`scale.rs`).
//! - `sink`: the OTLP sink both use (counts spans, keeps nothing).
//!
//! Nothing here asserts: it prints. The machine is shared and noisy; compare ratios from one run.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark harness: a failed measurement ends the run"
)]

mod agent;
mod gateway;
mod harness;
mod measure;
mod replication;
mod scale;
mod sink;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tailgate-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P1: CPU-seconds per million spans, Tailgate beside rotel.
    Gateway(gateway::GatewayArgs),
    /// P2: memory per buffered span.
    Memory(measure::MemoryArgs),
    /// P4: how late decisions run after root + quiet period, under load.
    Latency(measure::LatencyArgs),
    /// P3: a leaving gateway hands all its buffered traces to the other.
    Handoff(measure::HandoffArgs),
    /// What replication_factor 2 costs beside 1: CPU per span, memory, ingest latency.
    Replication(replication::ReplicationArgs),
    /// The agent's CPU per million spans: enrichment, filter, routing; beside forward-only and rotel.
    Agent(agent::AgentArgs),
    /// The gateway on 1, 2, 4, 8... cores: maximum sustained rate, CPU per span, memory and
    /// decision lateness at that rate and at 80% of it.
    Scale(scale::ScaleArgs),
    /// An OTLP/gRPC sink that counts spans (used by the other commands).
    Sink {
        #[arg(long)]
        port: u16,
    },
}

/// `target/release/<name>` next to this binary.
pub fn sibling_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.with_file_name(name)
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Only the sink serves the network; the drivers are plain blocking programs.
        Command::Sink { port } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(sink::serve(port)),
        Command::Gateway(args) => gateway::gateway(args),
        Command::Memory(args) => measure::memory(args),
        Command::Latency(args) => measure::latency(args),
        Command::Handoff(args) => measure::handoff(args),
        Command::Replication(args) => replication::replication(args),
        Command::Agent(args) => agent::agent(args),
        Command::Scale(args) => scale::scale(args),
    }
}

/// A Go-style duration of the benchmark flags (`2s`, `500ms`).
pub fn parse_wait(s: &str) -> Duration {
    if let Some(ms) = s.strip_suffix("ms") {
        return Duration::from_millis(ms.parse().unwrap_or(0));
    }
    Duration::from_secs_f64(s.trim_end_matches('s').parse().unwrap_or(0.0))
}
