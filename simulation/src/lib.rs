//! Deterministic simulation of the Tailgate gateway cluster (see `docs/simulation.md`).
//!
//! One run = one seed and one [`Scenario`]: `turmoil` hosts run the real gateways
//! (`tailgate_cluster::gateway::start_gateway`, Raft, forwarding, handoff, the real tail-
//! sampling engine and OTLP exporter), an OTLP sink and a traffic driver, all over turmoil's
//! simulated network; the harness injects the scenario's faults at seeded times, then
//! checks the invariants I1–I7 ([`check`]) from what the driver sent, what the sink got and
//! the gateways' state. Same seed, same event log, byte for byte.

#![allow(
    clippy::unwrap_used,
    reason = "the simulator is a test harness: a poisoned lock or an impossible state ends the run as a failure"
)]

pub mod check;
mod director;
pub mod net;
pub mod scenario;
pub mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use director::Director;
use scenario::Scenario;
use tailgate_ring::Ring;
use world::{SEEDS, Shared};

/// How long the driver sends traffic.
pub const TRAFFIC: Duration = Duration::from_secs(14);
/// After the driver finished: the last decisions (≤ 4 s), exports and retries.
const SETTLE: Duration = Duration::from_secs(14);
/// New traces every 100 ms.
const TRACES_PER_TICK: u32 = 2;

/// A gateway crash, with the ring it owned by (its buffer is what may be lost).
#[derive(Debug, Clone)]
pub struct CrashRecord {
    pub name: String,
    pub at: Duration,
    pub rings: Vec<Arc<Ring>>,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<String>,
    pub violations: Vec<String>,
    pub spans_sent: usize,
    pub spans_exported: usize,
}

impl Outcome {
    pub fn event_log(&self) -> String {
        self.events.join("\n")
    }
}

/// The command that replays one run.
pub fn replay_command(seed: u64, scenario: Scenario) -> String {
    format!(
        "cargo run --release -p tailgate-simulation -- --seed {seed} --scenario {}",
        scenario.name()
    )
}

pub fn run(seed: u64, scenario: Scenario) -> Outcome {
    let shared = Arc::new(Shared::default());
    *shared.replication_factor.lock().unwrap() = scenario.replication_factor();
    for (name, skew) in scenario.skews(seed) {
        shared.skew_ms.lock().unwrap().insert(name, skew);
    }
    if let Some(d) = scenario.duplicates(seed) {
        shared.log_at(
            Duration::ZERO,
            format!(
                "fault duplicate delivery: {}% of requests again, up to {:?} later",
                d.percent, d.delay_max
            ),
        );
        *shared.duplicates.lock().unwrap() = Some(d);
    }
    let mut sim = build_world(&shared, seed, scenario);
    let mut plan = scenario.plan(seed).into_iter().peekable();
    let mut director = Director::new(Arc::clone(&shared), seed);
    let mut violations = Vec::new();
    let mut done_at: Option<Duration> = None;
    loop {
        if let Err(e) = sim.step() {
            violations.push(format!(
                "I7: the simulation failed (panic or host error): {e}"
            ));
            break;
        }
        let now = sim.elapsed();
        director.note_epochs(now);
        director.start_pending(&mut sim);
        while plan.peek().is_some_and(|(t, _)| *t <= now) {
            let (_, fault) = plan.next().expect("peeked");
            shared.log_at(now, format!("fault {fault:?}"));
            director.apply(&mut sim, fault, now);
        }
        if done_at.is_none() && *shared.driver_done.lock().unwrap() {
            done_at = Some(now);
        }
        if done_at.is_some_and(|d| now >= d + SETTLE)
            && plan.peek().is_none()
            && director.pending_starts.is_empty()
        {
            break;
        }
        if now > TRAFFIC + SETTLE + Duration::from_secs(50) {
            violations.push("the driver never finished".into());
            break;
        }
    }
    let mut outcome = check::check(
        sim.elapsed(),
        &shared,
        scenario,
        &director.crashes,
        &director.fault_windows,
        &director.epoch_changes,
    );
    outcome.violations.splice(0..0, violations);
    outcome.events = std::mem::take(&mut *shared.events.lock().unwrap());
    outcome
}

/// The sink, the seed gateways, the agents when the scenario routes through them, and the
/// traffic driver, on one seeded turmoil simulation.
fn build_world<'a>(shared: &Arc<Shared>, seed: u64, scenario: Scenario) -> turmoil::Sim<'a> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .simulation_duration(TRAFFIC + SETTLE + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .build();
    let s = Arc::clone(shared);
    sim.host("sink", move || world::sink_host(Arc::clone(&s), seed));
    for g in SEEDS {
        director::add_gateway(&mut sim, shared, g, seed);
    }
    if scenario.via_agents() {
        *shared.via_agents.lock().unwrap() = true;
        for (agent, source) in world::AGENTS {
            let s = Arc::clone(shared);
            sim.host(agent, move || {
                world::agent_host(Arc::clone(&s), agent.to_string(), source.to_string(), seed)
            });
        }
    }
    let s = Arc::clone(shared);
    sim.client("driver", world::driver(s, seed, TRAFFIC, TRACES_PER_TICK));
    sim
}

/// Runs `seeds` over `scenarios` (round-robin), returning per-scenario (runs, violations)
/// and the failures with their replay commands.
pub fn sweep(
    seeds: impl Iterator<Item = u64>,
    scenarios: &[Scenario],
    mut on_run: impl FnMut(u64, Scenario, &Outcome),
) -> BTreeMap<Scenario, (u64, u64)> {
    let mut table = BTreeMap::new();
    for (i, seed) in seeds.enumerate() {
        let scenario = scenarios[i % scenarios.len()];
        let outcome = run(seed, scenario);
        let e = table.entry(scenario).or_insert((0, 0));
        e.0 += 1;
        e.1 += u64::from(!outcome.violations.is_empty());
        on_run(seed, scenario, &outcome);
    }
    table
}
