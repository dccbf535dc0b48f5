//! The harness's hand on the world: applies a scenario's faults to the simulation and keeps
//! what the checker needs to attribute losses (crashes, partition windows, epoch changes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tailgate_ring::Ring;

use crate::CrashRecord;
use crate::scenario::Fault;
use crate::world::{self, SEEDS, Shared, SinkMode};

/// Adds gateway `name` as a turmoil host.
pub(crate) fn add_gateway(sim: &mut turmoil::Sim<'_>, shared: &Arc<Shared>, name: &str, seed: u64) {
    let s = Arc::clone(shared);
    let n = name.to_string();
    sim.host(name, move || {
        world::gateway_host(Arc::clone(&s), n.clone(), seed)
    });
}

pub(crate) struct Director {
    shared: Arc<Shared>,
    seed: u64,
    /// Every gateway host ever added (partitions and heals span them all).
    known: Vec<String>,
    pub(crate) crashes: Vec<CrashRecord>,
    /// Closed partition windows, (from, to).
    pub(crate) fault_windows: Vec<(Duration, Duration)>,
    open_window: Option<Duration>,
    /// Starts asked for while the gateway was still shutting down: done once it stopped.
    pub(crate) pending_starts: Vec<String>,
    /// When the ring changed anywhere (two exporters of one trace are two owners of one
    /// epoch only if no change happened in between).
    pub(crate) epoch_changes: Vec<Duration>,
    epochs_seen: BTreeMap<String, u64>,
}

impl Director {
    pub(crate) fn new(shared: Arc<Shared>, seed: u64) -> Director {
        Director {
            shared,
            seed,
            known: SEEDS.iter().map(ToString::to_string).collect(),
            crashes: Vec::new(),
            fault_windows: Vec::new(),
            open_window: None,
            pending_starts: Vec::new(),
            epoch_changes: Vec::new(),
            epochs_seen: BTreeMap::new(),
        }
    }

    /// Records `now` as an epoch change if any gateway's ring moved since the last step.
    pub(crate) fn note_epochs(&mut self, now: Duration) {
        for (name, h) in self.shared.nodes.lock().unwrap().iter() {
            let e = h.node.ring_now().epoch();
            if self.epochs_seen.insert(name.clone(), e) != Some(e) {
                self.epoch_changes.push(now);
            }
        }
    }

    /// Starts the gateways that were waiting for their previous run to stop.
    pub(crate) fn start_pending(&mut self, sim: &mut turmoil::Sim<'_>) {
        self.pending_starts.retain(|g| {
            if sim.is_host_running(g.as_str()) {
                return true;
            }
            sim.bounce(g.as_str());
            false
        });
    }

    pub(crate) fn apply(&mut self, sim: &mut turmoil::Sim<'_>, fault: Fault, now: Duration) {
        match fault {
            Fault::Stop(g) => self.stop(&g),
            Fault::Start(g) => self.start(sim, g),
            Fault::Crash(g) => self.crash(sim, &g, now),
            Fault::StopNonLeader => {
                let leader = self.leader_name();
                let target = self
                    .shared
                    .nodes
                    .lock()
                    .unwrap()
                    .keys()
                    .find(|n| Some(*n) != leader.as_ref())
                    .cloned();
                if let Some(g) = target {
                    self.stop(&g);
                }
            }
            Fault::CrashLeader => {
                if let Some(g) = self.leader_name() {
                    self.crash(sim, &g, now);
                }
            }
            Fault::RestartAllStopped => {
                for g in &self.known {
                    if !sim.is_host_running(g.as_str()) {
                        sim.bounce(g.as_str());
                    }
                }
            }
            Fault::Isolate(g, oneway) => {
                self.open_window = Some(now);
                for other in self.known.iter().filter(|o| **o != g) {
                    if oneway {
                        sim.partition_oneway(g.as_str(), other.as_str());
                    } else {
                        sim.partition(g.as_str(), other.as_str());
                    }
                }
            }
            Fault::IsolateLeader => {
                self.open_window = Some(now);
                if let Some(g) = self.leader_name() {
                    for other in self.known.iter().filter(|o| **o != g) {
                        sim.partition(g.as_str(), other.as_str());
                    }
                }
            }
            Fault::Heal => self.heal(sim, now),
            Fault::MaxLatency(d) => sim.set_max_message_latency(d),
            Fault::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
            Fault::Release(a, b) => sim.release(a.as_str(), b.as_str()),
            Fault::Burst(extra) => *self.shared.burst.lock().unwrap() = extra,
            Fault::Sink {
                fail_percent,
                delay,
            } => {
                *self.shared.sink_mode.lock().unwrap() = SinkMode {
                    fail_percent,
                    delay,
                }
            }
        }
    }

    /// A graceful stop: the gateway leaves the ring and hands off.
    fn stop(&self, g: &str) {
        if self.shared.nodes.lock().unwrap().contains_key(g) {
            self.shared.stop_signal(g).notify_one();
        }
    }

    /// Starts a known gateway again (once its last run stopped), or adds a new one.
    fn start(&mut self, sim: &mut turmoil::Sim<'_>, g: String) {
        if self.known.contains(&g) {
            if sim.is_host_running(g.as_str()) {
                self.pending_starts.push(g);
            } else {
                sim.bounce(g.as_str());
            }
        } else {
            add_gateway(sim, &self.shared, &g, self.seed);
            self.known.push(g);
        }
    }

    /// Kills the gateway at once, remembering the rings it owned by.
    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, g: &str, now: Duration) {
        let rings: Vec<Arc<Ring>> = self
            .shared
            .nodes
            .lock()
            .unwrap()
            .values()
            .map(|h| h.node.ring_now())
            .collect();
        sim.crash(g);
        self.shared.nodes.lock().unwrap().remove(g);
        self.shared.endpoints.lock().unwrap().remove(g);
        self.crashes.push(CrashRecord {
            name: g.to_string(),
            at: now,
            rings,
        });
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        for a in &self.known {
            for b in &self.known {
                if a != b {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
        }
        if let Some(from) = self.open_window.take() {
            self.fault_windows.push((from, now));
        }
    }

    fn leader_name(&self) -> Option<String> {
        let nodes = self.shared.nodes.lock().unwrap();
        let (_, any) = nodes.iter().next()?;
        let id = any.node.leader_now()?;
        let state = any.node.state();
        state.members.get(&id).map(|m| m.name.clone())
    }
}
