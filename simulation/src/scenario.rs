//! Scenarios: which faults, when. Every time and target is drawn from the run's seed, so a
//! seed names one exact run.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Steady,
    RollingRestart,
    ScaleUpDown,
    CrashRestart,
    LeaderCrashDuringHandoff,
    CrashUnderLoad,
    CrashDuringRollingRestart,
    PartitionNode,
    PartitionLeader,
    AsymmetricPartition,
    Latency,
    SlowExporter,
    ClockSkew,
    StaleAgentRing,
    DuplicateDelivery,
}

pub const ALL: [Scenario; 15] = [
    Scenario::Steady,
    Scenario::RollingRestart,
    Scenario::ScaleUpDown,
    Scenario::CrashRestart,
    Scenario::LeaderCrashDuringHandoff,
    Scenario::CrashUnderLoad,
    Scenario::CrashDuringRollingRestart,
    Scenario::PartitionNode,
    Scenario::PartitionLeader,
    Scenario::AsymmetricPartition,
    Scenario::Latency,
    Scenario::SlowExporter,
    Scenario::ClockSkew,
    Scenario::StaleAgentRing,
    Scenario::DuplicateDelivery,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::ScaleUpDown => "scale-up-down",
            Scenario::CrashRestart => "crash-restart",
            Scenario::LeaderCrashDuringHandoff => "leader-crash-during-handoff",
            Scenario::CrashUnderLoad => "crash-under-load",
            Scenario::CrashDuringRollingRestart => "crash-during-rolling-restart",
            Scenario::PartitionNode => "partition-node",
            Scenario::PartitionLeader => "partition-leader",
            Scenario::AsymmetricPartition => "asymmetric-partition",
            Scenario::Latency => "latency",
            Scenario::SlowExporter => "slow-exporter",
            Scenario::ClockSkew => "clock-skew",
            Scenario::StaleAgentRing => "stale-agent-ring",
            Scenario::DuplicateDelivery => "duplicate-delivery",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        ALL.into_iter().find(|x| x.name() == s)
    }

    /// Only graceful events: the zero-loss promise applies in full (I1).
    pub fn graceful(self) -> bool {
        matches!(
            self,
            Scenario::Steady
                | Scenario::RollingRestart
                | Scenario::ScaleUpDown
                | Scenario::Latency
                | Scenario::SlowExporter
                | Scenario::ClockSkew
                | Scenario::StaleAgentRing
                | Scenario::DuplicateDelivery
        )
    }

    /// Copies of every buffered span the gateways keep: the crash scenarios run with
    /// `replication_factor: 2`, where a single crash must lose nothing (I1).
    pub fn replication_factor(self) -> u8 {
        if matches!(
            self,
            Scenario::CrashRestart
                | Scenario::LeaderCrashDuringHandoff
                | Scenario::CrashUnderLoad
                | Scenario::CrashDuringRollingRestart
        ) {
            2
        } else {
            1
        }
    }

    /// The driver sends through agents (real `loadbalancing` routing by the ring).
    pub fn via_agents(self) -> bool {
        self == Scenario::StaleAgentRing
    }

    /// The faults of this scenario for `seed`, in time order.
    pub fn plan(self, seed: u64) -> Vec<(Duration, Fault)> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5ce7_a210);
        let mut plan = Vec::new();
        match self {
            Scenario::Steady => {}
            Scenario::RollingRestart => rolling_restart(&mut rng, &mut plan),
            Scenario::ScaleUpDown => {
                let t = ms(&mut rng, 2000, 4000);
                plan.push((t, Fault::Start("g3".into())));
                plan.push((t + ms(&mut rng, 0, 800), Fault::Start("g4".into())));
                let down = t + ms(&mut rng, 4000, 6000);
                plan.push((down, Fault::Stop("g4".into())));
                plan.push((down + ms(&mut rng, 0, 1500), Fault::Stop("g3".into())));
            }
            Scenario::CrashRestart => {
                let g = gw(&mut rng);
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::Crash(g.clone())));
                plan.push((t + ms(&mut rng, 1000, 5000), Fault::Start(g)));
            }
            Scenario::LeaderCrashDuringHandoff => {
                // Four gateways: one leaving plus the crashed leader are two failures, which
                // Raft tolerates only with a majority of four voters left (see docs).
                plan.push((Duration::ZERO, Fault::Start("g3".into())));
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::StopNonLeader));
                plan.push((t + ms(&mut rng, 20, 400), Fault::CrashLeader));
                plan.push((t + ms(&mut rng, 2000, 4000), Fault::RestartAllStopped));
            }
            Scenario::CrashUnderLoad => {
                // A burst fills every gateway with open traces; one dies in the middle of it
                // and comes back later.
                let t = ms(&mut rng, 2000, 4000);
                plan.push((t, Fault::Burst(rng.random_range(8..20))));
                let g = gw(&mut rng);
                let crash = t + ms(&mut rng, 1000, 3000);
                plan.push((crash, Fault::Crash(g.clone())));
                plan.push((t + ms(&mut rng, 4000, 5000), Fault::Burst(0)));
                plan.push((crash + ms(&mut rng, 3000, 6000), Fault::Start(g)));
            }
            Scenario::CrashDuringRollingRestart => {
                // Four gateways (a rollout's leaving member plus a crashed one are two
                // failures, which needs four voters); g3 crashes somewhere in the roll.
                plan.push((Duration::ZERO, Fault::Start("g3".into())));
                rolling_restart(&mut rng, &mut plan);
                let crash = ms(&mut rng, 3000, 10_000);
                plan.push((crash, Fault::Crash("g3".into())));
                plan.push((crash + ms(&mut rng, 2000, 5000), Fault::Start("g3".into())));
            }
            Scenario::PartitionNode => {
                let g = gw(&mut rng);
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::Isolate(g.clone(), false)));
                plan.push((t + ms(&mut rng, 1000, 5000), Fault::Heal));
            }
            Scenario::PartitionLeader => {
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::IsolateLeader));
                plan.push((t + ms(&mut rng, 1000, 5000), Fault::Heal));
            }
            Scenario::AsymmetricPartition => {
                let g = gw(&mut rng);
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::Isolate(g, true)));
                plan.push((t + ms(&mut rng, 1000, 5000), Fault::Heal));
            }
            Scenario::Latency => {
                plan.push((Duration::ZERO, Fault::MaxLatency(ms(&mut rng, 20, 150))));
                let g = gw(&mut rng);
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::Stop(g.clone())));
                plan.push((t + ms(&mut rng, 500, 2000), Fault::Start(g)));
            }
            Scenario::SlowExporter => slow_exporter(&mut rng, &mut plan),
            Scenario::StaleAgentRing => stale_agent_ring(&mut rng, &mut plan),
            Scenario::DuplicateDelivery => {
                // Copies are delivered throughout (see `duplicates`); a graceful restart moves
                // traces and their decisions while copies are still arriving.
                let g = gw(&mut rng);
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::Stop(g.clone())));
                plan.push((t + ms(&mut rng, 500, 2000), Fault::Start(g)));
            }
            Scenario::ClockSkew => {
                // Skews are set before start (see `skews`); a restart under skew.
                let g = gw(&mut rng);
                let t = ms(&mut rng, 3000, 6000);
                plan.push((t, Fault::Stop(g.clone())));
                plan.push((t + ms(&mut rng, 500, 2000), Fault::Start(g)));
            }
        }
        plan.sort_by_key(|(t, _)| *t);
        plan
    }

    /// For `DuplicateDelivery`: how the driver delivers some requests a second time.
    pub fn duplicates(self, seed: u64) -> Option<Duplicates> {
        if self != Scenario::DuplicateDelivery {
            return None;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0xd0b1_ca7e);
        Some(Duplicates {
            percent: rng.random_range(10..50),
            delay_max: Duration::from_millis(rng.random_range(200..3000)),
        })
    }

    /// Wall-clock skew per gateway (milliseconds), for `ClockSkew`.
    pub fn skews(self, seed: u64) -> Vec<(String, i64)> {
        if self != Scenario::ClockSkew {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5ce3);
        (0..5)
            .map(|i| (format!("g{i}"), rng.random_range(-30_000..30_000)))
            .collect()
    }
}

/// Duplicate delivery: `percent` of the requests the gateways accepted are delivered again, to
/// another gateway, up to `delay_max` later — what a client retrying after a lost
/// acknowledgement, or a proxy replaying a request, does. The copies carry the same span IDs,
/// and the checker allows no second export of any of them (I2 without exception).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Duplicates {
    pub percent: u32,
    pub delay_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGTERM: graceful leave and handoff.
    Stop(String),
    /// Start (or restart) a gateway.
    Start(String),
    /// Kill without a goodbye.
    Crash(String),
    /// Gracefully stop a gateway that does not lead.
    StopNonLeader,
    CrashLeader,
    /// Start every gateway that is not running.
    RestartAllStopped,
    /// Cut a gateway off from every other gateway (`true`: only its outgoing traffic).
    Isolate(String, bool),
    IsolateLeader,
    Heal,
    MaxLatency(Duration),
    /// Messages between two hosts wait (in order) until released: slow, not lost.
    Hold(String, String),
    Release(String, String),
    Sink {
        fail_percent: u32,
        delay: Duration,
    },
    /// The driver sends this many more traces every 100 ms (0 ends the burst).
    Burst(u32),
}

/// A drawn duration in `[lo, hi)` milliseconds.
fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..hi))
}

/// A drawn seed gateway.
fn gw(rng: &mut StdRng) -> String {
    format!("g{}", rng.random_range(0..3))
}

/// Every gateway stopped and started in turn, in a drawn order.
fn rolling_restart(rng: &mut StdRng, plan: &mut Vec<(Duration, Fault)>) {
    let mut t = ms(rng, 3000, 4000);
    let mut order = vec!["g0", "g1", "g2"];
    // A rollout goes in some order; draw it.
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for g in order {
        plan.push((t, Fault::Stop(g.into())));
        t += ms(rng, 300, 1500);
        plan.push((t, Fault::Start(g.into())));
        t += ms(rng, 1500, 3000);
    }
}

/// The sink fails and slows down while a gateway restarts, then recovers.
fn slow_exporter(rng: &mut StdRng, plan: &mut Vec<(Duration, Fault)>) {
    let t = ms(rng, 1000, 3000);
    let fail = rng.random_range(10..60);
    let delay = ms(rng, 0, 800);
    plan.push((
        t,
        Fault::Sink {
            fail_percent: fail,
            delay,
        },
    ));
    let g = gw(rng);
    plan.push((t + ms(rng, 1000, 3000), Fault::Stop(g.clone())));
    plan.push((t + ms(rng, 4000, 5000), Fault::Start(g)));
    plan.push((
        t + ms(rng, 5000, 8000),
        Fault::Sink {
            fail_percent: 0,
            delay: Duration::ZERO,
        },
    ));
}

/// Agents route by an old ring while gateways roll.
fn stale_agent_ring(rng: &mut StdRng, plan: &mut Vec<(Duration, Fault)>) {
    // a0's link to g0 (its only ring source) stalls while g1 rolls: ring updates
    // (and a0's spans to g0) wait, so a0 routes by the ring from before the roll.
    // a1's ring source is g1 itself, so a1 routes by its last ring while g1 is
    // down. Then g2 rolls with every link up. The stall stays under 3 s: spans held
    // longer than `decision_wait` (4 s) would be decided without their root, which
    // is tail sampling's late-span limit, not a routing fault.
    let t = ms(rng, 2500, 3500);
    plan.push((t, Fault::Hold("a0".into(), "g0".into())));
    let stop = t + ms(rng, 100, 500);
    plan.push((stop, Fault::Stop("g1".into())));
    plan.push((stop + ms(rng, 300, 1500), Fault::Start("g1".into())));
    plan.push((
        t + ms(rng, 2500, 2900),
        Fault::Release("a0".into(), "g0".into()),
    ));
    let stop = t + ms(rng, 4000, 5000);
    plan.push((stop, Fault::Stop("g2".into())));
    plan.push((stop + ms(rng, 300, 1500), Fault::Start("g2".into())));
}
