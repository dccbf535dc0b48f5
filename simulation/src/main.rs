//! `tailgate-simulation`: run one seed of one scenario (replay), or sweep many seeds over
//! every scenario and print a table ending with `SEEDS <n> VIOLATIONS <v>`.

#![allow(
    clippy::unwrap_used,
    reason = "the simulator is a test harness: a poisoned lock or an impossible state ends the run as a failure"
)]

use std::process::ExitCode;

use clap::Parser;
use tailgate_simulation::scenario::{ALL, Scenario};
use tailgate_simulation::{replay_command, run, sweep};

#[derive(Parser)]
#[command(
    name = "tailgate-simulation",
    about = "Deterministic simulation of the Tailgate gateway cluster"
)]
struct Cli {
    /// Replay one run: this seed...
    #[arg(long)]
    seed: Option<u64>,
    /// ...of this scenario (default: steady).
    #[arg(long)]
    scenario: Option<String>,
    /// Sweep this many seeds (from --first-seed) over all scenarios, or over `--scenario`.
    #[arg(long)]
    seeds: Option<u64>,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Print the event log of a replayed run.
    #[arg(long)]
    events: bool,
}

/// Log lines carry the simulated time (what the event log and the checker print), not the
/// wall clock: a run of 30 simulated seconds takes a fraction of a real one.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>8.3}", t.as_secs_f64()),
            None => write!(w, "{:>8}", "-"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_timer(SimTime)
            .with_ansi(false)
            .init();
    }
    let scenario = match cli.scenario.as_deref().map(Scenario::parse) {
        None => Scenario::Steady,
        Some(Some(s)) => s,
        Some(None) => {
            let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
            eprintln!("unknown scenario; one of: {}", names.join(", "));
            return ExitCode::from(2);
        }
    };
    if let Some(n) = cli.seeds {
        let mut failures = Vec::new();
        let scenarios: Vec<Scenario> = match cli.scenario {
            Some(_) => vec![scenario],
            None => ALL.to_vec(),
        };
        let table = sweep(
            cli.first_seed..cli.first_seed + n,
            &scenarios,
            |seed, sc, o| {
                if !o.violations.is_empty() {
                    eprintln!(
                        "VIOLATION seed {seed} {}: {}\n  replay: {}",
                        sc.name(),
                        o.violations[0],
                        replay_command(seed, sc)
                    );
                    failures.push((seed, sc));
                }
            },
        );
        println!("{:<30} {:>8} {:>11}", "scenario", "runs", "violations");
        let (mut runs, mut bad) = (0, 0);
        for (sc, (r, b)) in &table {
            println!("{:<30} {:>8} {:>11}", sc.name(), r, b);
            runs += r;
            bad += b;
        }
        println!("SEEDS {runs} VIOLATIONS {bad}");
        return if bad == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let seed = cli.seed.unwrap_or(1);
    let outcome = run(seed, scenario);
    if cli.events {
        println!("{}", outcome.event_log());
    }
    println!(
        "seed {seed} scenario {}: {} spans sent, {} exported, {} violations",
        scenario.name(),
        outcome.spans_sent,
        outcome.spans_exported,
        outcome.violations.len()
    );
    for v in &outcome.violations {
        println!("  {v}");
    }
    if outcome.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("replay: {}", replay_command(seed, scenario));
        ExitCode::FAILURE
    }
}
