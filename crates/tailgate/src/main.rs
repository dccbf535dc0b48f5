//! `tailgate`: the one binary. Subcommands are thin: they parse flags, load config and call
//! into the library crates. Errors reach the user through `anyhow` with context.

mod admin;
mod agent;
mod allocator;
mod dev;
mod gateway;
mod lifecycle;
mod loadgen;
mod validate;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tailgate",
    version,
    about = "Tail-sampling gateway cluster for OpenTelemetry traces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway from a collector-style config.
    Gateway(gateway::GatewayArgs),
    /// Run the node-local agent (Kubernetes enrichment and ring-aware routing).
    Agent(agent::AgentArgs),
    /// Run a local cluster in one process: an agent in front of three gateways.
    ///
    /// The agent listens where apps send (OTLP/gRPC 0.0.0.0:4317, OTLP/HTTP 0.0.0.0:4318) and
    /// routes every span by trace ID to the gateway that owns the trace; the three gateways form
    /// a Raft-agreed ring on loopback, tail-sample with the reference article's policies and
    /// write the kept traces to ./tailgate-data/traces-gateway-N.jsonl. `--demo` sends synthetic
    /// traffic for a few seconds, restarts one gateway halfway (it hands its traces off) and
    /// prints what happened.
    Dev(dev::DevArgs),
    /// Check a config file; print the resolved pipelines or every error.
    Validate(ConfigSource),
    /// Send synthetic traces over OTLP/gRPC and report what happened.
    Loadgen(loadgen::LoadgenArgs),
    /// Runtime sampling override for the whole cluster ("raise sampling during an incident").
    #[command(subcommand)]
    Sampling(admin::SamplingCommand),
    /// Members, their states, the epoch, the leader, and what each gateway buffers.
    Status(admin::AdminArgs),
}

/// Where a command's config comes from: the file, `--set` overrides and `--feature-gates`,
/// the collector's three flags with the collector's meanings.
#[derive(clap::Args, Clone)]
pub struct ConfigSource {
    /// Collector-style YAML config.
    #[arg(long)]
    pub config: String,
    /// Override one setting of the config, as the collector's `--set` does: keys joined by
    /// `::`, the value read as YAML; repeatable, wins over the file. Example:
    /// `--set receivers::otlp::protocols::grpc::endpoint=127.0.0.1:14317`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The collector's feature gates Tailgate implements, comma-separated; `-name` turns one
    /// off. Known: `processor.tailsamplingprocessor.recordpolicy`.
    #[arg(long = "feature-gates", value_name = "GATES")]
    pub feature_gates: Vec<String>,
}

impl ConfigSource {
    /// Loads and validates the config with the overrides and gates applied; every problem
    /// is in the error.
    pub fn load(&self) -> Result<tailgate_config::Config, tailgate_config::ConfigErrors> {
        let gates = tailgate_config::FeatureGates::parse(&self.feature_gates);
        let cfg = tailgate_config::load_file_with_overrides(&self.config, &self.set);
        match (gates, cfg) {
            (Ok(gates), Ok(mut cfg)) => {
                gates.apply(&mut cfg);
                Ok(cfg)
            }
            (Err(mut a), Err(b)) => {
                a.0.extend(b.0);
                Err(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

/// Parses durations the way configs write them (`30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    tailgate_config::parse_go_duration(s)
}

/// Logs go to stderr; `RUST_LOG` overrides the level; `json` for log shippers. Colour only
/// on a terminal (a file or a pipe gets plain text), and never with `NO_COLOR` set.
fn init_logging(default_level: &str, json: bool) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    let result = match cli.command {
        Command::Validate(source) => return validate::run(&source),
        Command::Gateway(args) => runtime().block_on(gateway::run(args)),
        Command::Dev(args) => runtime().block_on(dev::run(args)),
        Command::Sampling(cmd) => runtime().block_on(admin::sampling(cmd)),
        Command::Status(args) => runtime().block_on(admin::status(args)),
        Command::Loadgen(args) => {
            init_logging("warn", false);
            runtime().block_on(loadgen::run(args))
        }
        Command::Agent(args) => runtime().block_on(agent::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
