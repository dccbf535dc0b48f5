//! `tailgate`: the one binary. Subcommands are thin: they parse flags, load config and call
//! into the library crates. Errors reach the user through `anyhow` with context.

mod admin;
mod agent;
mod allocator;
mod cli;
mod dev;
mod gateway;
mod lifecycle;
mod loadgen;
mod validate;

use std::process::ExitCode;

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
    Validate(cli::ConfigSource),
    /// Send synthetic traces over OTLP/gRPC and report what happened.
    Loadgen(loadgen::LoadgenArgs),
    /// Runtime sampling override for the whole cluster ("raise sampling during an incident").
    #[command(subcommand)]
    Sampling(admin::SamplingCommand),
    /// Members, their states, the epoch, the leader, and what each gateway buffers.
    Status(admin::AdminArgs),
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
            cli::init_logging("warn", false);
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
