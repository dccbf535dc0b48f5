//! Deterministic simulation of the Tailgate gateway cluster (see `docs/simulation.md`).
//!
//! One run = one seed and one [`Scenario`]: `turmoil` hosts run the real gateways
//! (`tailgate_cluster::gateway::start_gateway`, Raft, forwarding, handoff, the real tail-
//! sampling engine and OTLP exporter), an OTLP sink and a traffic driver, all over turmoil's
//! simulated network; the harness injects the scenario's faults at seeded times, then
//! checks the invariants I1–I7 ([`check`]) from what the driver sent, what the sink got and
//! the gateways' state. Same seed, same event log, byte for byte.

pub mod check;
pub mod net;
pub mod scenario;
pub mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use scenario::{Fault, Scenario};
use tailgate_ring::Ring;
use world::{SEEDS, Shared, SinkMode};

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

fn leader_name(shared: &Shared) -> Option<String> {
    let nodes = shared.nodes.lock().unwrap();
    let (_, any) = nodes.iter().next()?;
    let id = any.node.leader_now()?;
    let state = any.node.state();
    state.members.get(&id).map(|m| m.name.clone())
}

pub fn run(seed: u64, scenario: Scenario) -> Outcome {
    let shared = Arc::new(Shared::default());
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
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .simulation_duration(TRAFFIC + SETTLE + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .build();

    let s = Arc::clone(&shared);
    sim.host("sink", move || world::sink_host(Arc::clone(&s), seed));
    let add_gateway = |sim: &mut turmoil::Sim<'_>, name: &str| {
        let s = Arc::clone(&shared);
        let n = name.to_string();
        sim.host(name, move || {
            world::gateway_host(Arc::clone(&s), n.clone(), seed)
        });
    };
    for g in SEEDS {
        add_gateway(&mut sim, g);
    }
    if scenario.via_agents() {
        *shared.via_agents.lock().unwrap() = true;
        for (agent, source) in world::AGENTS {
            let s = Arc::clone(&shared);
            sim.host(agent, move || {
                world::agent_host(Arc::clone(&s), agent.to_string(), source.to_string(), seed)
            });
        }
    }
    let s = Arc::clone(&shared);
    sim.client("driver", world::driver(s, seed, TRAFFIC, TRACES_PER_TICK));

    let mut plan = scenario.plan(seed).into_iter().peekable();
    let mut crashes: Vec<CrashRecord> = Vec::new();
    let mut fault_windows: Vec<(Duration, Duration)> = Vec::new();
    let mut open_window: Option<Duration> = None;
    let mut known: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    let mut violations = Vec::new();
    let mut done_at: Option<Duration> = None;
    // Starts asked for while the gateway was still shutting down: done once it stopped.
    let mut pending_starts: Vec<String> = Vec::new();
    // When the ring changed anywhere (two exporters of one trace are two owners of one
    // epoch only if no change happened in between).
    let mut epoch_changes: Vec<Duration> = Vec::new();
    let mut epochs_seen: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        match sim.step() {
            Ok(_) => {}
            Err(e) => {
                violations.push(format!(
                    "I7: the simulation failed (panic or host error): {e}"
                ));
                break;
            }
        }
        let now = sim.elapsed();
        for (name, h) in shared.nodes.lock().unwrap().iter() {
            let e = h.node.ring_now().epoch();
            if epochs_seen.insert(name.clone(), e) != Some(e) {
                epoch_changes.push(now);
            }
        }
        pending_starts.retain(|g| {
            if sim.is_host_running(g.as_str()) {
                return true;
            }
            sim.bounce(g.as_str());
            false
        });
        while plan.peek().is_some_and(|(t, _)| *t <= now) {
            let (_, fault) = plan.next().expect("peeked");
            shared.log_at(now, format!("fault {fault:?}"));
            match fault {
                Fault::Stop(g) => stop(&shared, &g),
                Fault::Start(g) => {
                    if known.contains(&g) {
                        if sim.is_host_running(g.as_str()) {
                            pending_starts.push(g);
                        } else {
                            sim.bounce(g.as_str());
                        }
                    } else {
                        known.push(g.clone());
                        add_gateway(&mut sim, &g);
                    }
                }
                Fault::Crash(g) => crash(&mut sim, &shared, &g, now, &mut crashes),
                Fault::StopNonLeader => {
                    let leader = leader_name(&shared);
                    let target = shared
                        .nodes
                        .lock()
                        .unwrap()
                        .keys()
                        .find(|n| Some(*n) != leader.as_ref())
                        .cloned();
                    if let Some(g) = target {
                        stop(&shared, &g);
                    }
                }
                Fault::CrashLeader => {
                    if let Some(g) = leader_name(&shared) {
                        crash(&mut sim, &shared, &g, now, &mut crashes);
                    }
                }
                Fault::RestartAllStopped => {
                    for g in known.clone() {
                        if !sim.is_host_running(g.as_str()) {
                            sim.bounce(g.as_str());
                        }
                    }
                }
                Fault::Isolate(g, oneway) => {
                    open_window = Some(now);
                    for other in known.iter().filter(|o| **o != g) {
                        if oneway {
                            sim.partition_oneway(g.as_str(), other.as_str());
                        } else {
                            sim.partition(g.as_str(), other.as_str());
                        }
                    }
                }
                Fault::IsolateLeader => {
                    open_window = Some(now);
                    if let Some(g) = leader_name(&shared) {
                        for other in known.iter().filter(|o| **o != g) {
                            sim.partition(g.as_str(), other.as_str());
                        }
                    }
                }
                Fault::Heal => {
                    for a in &known {
                        for b in &known {
                            if a != b {
                                sim.repair(a.as_str(), b.as_str());
                            }
                        }
                    }
                    if let Some(from) = open_window.take() {
                        fault_windows.push((from, now));
                    }
                }
                Fault::MaxLatency(d) => sim.set_max_message_latency(d),
                Fault::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
                Fault::Release(a, b) => sim.release(a.as_str(), b.as_str()),
                Fault::Sink {
                    fail_percent,
                    delay,
                } => {
                    *shared.sink_mode.lock().unwrap() = SinkMode {
                        fail_percent,
                        delay,
                    }
                }
            }
        }
        if done_at.is_none() && *shared.driver_done.lock().unwrap() {
            done_at = Some(now);
        }
        if done_at.is_some_and(|d| now >= d + SETTLE)
            && plan.peek().is_none()
            && pending_starts.is_empty()
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
        &crashes,
        &fault_windows,
        &epoch_changes,
    );
    outcome.violations.splice(0..0, violations);
    outcome.events = std::mem::take(&mut *shared.events.lock().unwrap());
    outcome
}

fn stop(shared: &Shared, g: &str) {
    if shared.nodes.lock().unwrap().contains_key(g) {
        shared.stop_signal(g).notify_one();
    }
}

fn crash(
    sim: &mut turmoil::Sim<'_>,
    shared: &Shared,
    g: &str,
    now: Duration,
    crashes: &mut Vec<CrashRecord>,
) {
    let rings: Vec<Arc<Ring>> = shared
        .nodes
        .lock()
        .unwrap()
        .values()
        .map(|h| h.node.ring_now())
        .collect();
    sim.crash(g);
    shared.nodes.lock().unwrap().remove(g);
    shared.endpoints.lock().unwrap().remove(g);
    crashes.push(CrashRecord {
        name: g.to_string(),
        at: now,
        rings,
    });
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
