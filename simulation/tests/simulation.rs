//! The CI subset of the deterministic simulation (the large sweep is
//! `cargo run --release -p tailgate-simulation -- --seeds 10000`).

#![allow(clippy::unwrap_used, reason = "a test: a panic is the failure report")]

use std::sync::Mutex;

use tailgate_simulation::scenario::{ALL, Scenario};
use tailgate_simulation::{replay_command, run};

/// Every scenario × 16 = 240 runs, plus 43 regression and 6 replay runs: the ~200 seeds the
/// CI subset promises. Test builds optimize dependencies (`[profile.dev.package."*"]` in the workspace
/// manifest): a seed then takes ~1.2 CPU-s instead of ~3.5, where tokio, h2, tonic and prost
/// spent most of it.
const SEEDS_PER_SCENARIO: u64 = 16;

/// Runs `(seed, scenario)` pairs on two threads (each simulation is single-threaded).
fn run_all(runs: Vec<(u64, Scenario)>) -> Vec<String> {
    let queue = Mutex::new(runs);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some((seed, scenario)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let outcome = run(seed, scenario);
                    if let Some(v) = outcome.violations.first() {
                        failures.lock().unwrap().push(format!(
                            "{} (+{} more)\n  replay: {}",
                            v,
                            outcome.violations.len() - 1,
                            replay_command(seed, scenario)
                        ));
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn ci_seeds_hold_every_invariant() {
    let runs: Vec<(u64, Scenario)> = ALL
        .iter()
        .flat_map(|sc| (1..=SEEDS_PER_SCENARIO).map(move |seed| (seed * 7919 + 1, *sc)))
        .collect();
    let failures = run_all(runs);
    assert!(
        failures.is_empty(),
        "{} runs violated invariants:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_same_seed_gives_the_same_event_log_byte_for_byte() {
    for scenario in [
        Scenario::RollingRestart,
        Scenario::CrashRestart,
        Scenario::StaleAgentRing,
    ] {
        let a = run(4242, scenario).event_log();
        // On another thread: nothing may depend on thread-local state or hash seeds.
        let b = std::thread::spawn(move || run(4242, scenario).event_log())
            .join()
            .unwrap();
        assert!(a.contains("sink digest"), "{a}");
        assert_eq!(a, b, "{} is not reproducible", scenario.name());
    }
}

#[test]
fn every_scenario_has_a_name_that_parses_back() {
    for sc in ALL {
        assert_eq!(Scenario::parse(sc.name()), Some(sc));
    }
}

/// Seeds that found product bugs (docs/simulation.md, "What the simulator found"); each must
/// stay clean.
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    let runs = vec![
        // Half-open connections after a partition; a removed member that did not know it.
        (1, Scenario::PartitionNode),
        (2, Scenario::PartitionLeader),
        // A leaderless member let a restarting seed form a second cluster.
        (1, Scenario::LeaderCrashDuringHandoff),
        // Resent spans exported twice after a partition swallowed acknowledgements.
        (28, Scenario::PartitionNode),
        // A start asked for during a slow shutdown was dropped.
        (32, Scenario::SlowExporter),
        // Two owners exporting one trace across an epoch change (exact I2).
        (207, Scenario::Latency),
        // A late-joining gateway decided children without their root at epoch 0.
        (4948, Scenario::Latency),
        (6824, Scenario::Latency),
        // The cut-off gateway was still outside the ring when the run ended (I6).
        (39596, Scenario::PartitionNode),
        (2811, Scenario::PartitionNode),
        (6843, Scenario::PartitionNode),
        (90, Scenario::AsymmetricPartition),
        (298, Scenario::AsymmetricPartition),
        // A failed handoff dropped its decisions: the new owner exported a second copy.
        (20356, Scenario::AsymmetricPartition),
        // Raft appends timed out at 100 ms under latency: joins stalled, a not-yet-joined
        // gateway held roots past decision_wait (I1), one ended outside the ring (I6).
        (2409, Scenario::Latency),
        (2757, Scenario::Latency),
        (3969, Scenario::Latency),
        (7157, Scenario::Latency),
        (7697, Scenario::Latency),
        // An agent dropped spans as permanently refused when a rolling gateway cut their
        // stream (tonic's Internal "h2 protocol error"): transport failures are retried now.
        (4236, Scenario::StaleAgentRing),
        (9356, Scenario::StaleAgentRing),
        // A broken forward's spans met this node's cached decision of a trace it had handed
        // on, and were exported here as well as by the owner (I2).
        (20983, Scenario::AsymmetricPartition),
        // replication_factor 2: a promoted copy was decided again before the leaving owner's
        // decision arrived (I2); a copy moved to a crashed replica was lost (I1).
        (1, Scenario::CrashDuringRollingRestart),
        (8, Scenario::CrashDuringRollingRestart),
        // A leaving replica gave its copy to an owner that was still exporting the trace,
        // which then crashed; a member restarted under its old name was taken for the same
        // owner and no copy reached it (I1).
        (37, Scenario::LeaderCrashDuringHandoff),
        (84, Scenario::LeaderCrashDuringHandoff),
        // A crash during a rolling restart: a kept decision handed to the new owner while the
        // deciding gateway's export was still in its batch, then that gateway crashed (I1);
        // a restarted gateway routed by its old incarnation's ring (I2); leadership handed
        // to a leaving gateway, the cluster left leaderless (I6); a failed handoff's traces
        // with no copy when their holder left (I1); decisions lost at shutdown (I2).
        (1005, Scenario::CrashDuringRollingRestart),
        (1007, Scenario::CrashDuringRollingRestart),
        (1031, Scenario::CrashDuringRollingRestart),
        (1111, Scenario::CrashDuringRollingRestart),
        (2011, Scenario::CrashDuringRollingRestart),
        (2034, Scenario::CrashDuringRollingRestart),
        (2154, Scenario::CrashDuringRollingRestart),
        (47515, Scenario::CrashDuringRollingRestart),
        // A leaving gateway decided at shutdown a trace whose new owner had crashed; the
        // decision went only to the replica, and the owner that had the trace by then
        // exported it again (I2).
        (7637, Scenario::CrashDuringRollingRestart),
        // Spans a gateway held for an already-crashed owner (its forward failed) had no
        // copy; the gateway left before the owner's removal and they died with it (I1).
        (11267, Scenario::CrashDuringRollingRestart),
        // The exporter dropped a batch at shutdown because its next backoff would pass the
        // deadline, though the sink answered again before it (I1).
        (16042, Scenario::SlowExporter),
        // Late spans one gateway released under a cached kept decision reached the trace's
        // next owner as copies; it followed the same decision at once, or a repeat of that
        // decision settled them, and exported them again (I2).
        (45997, Scenario::CrashDuringRollingRestart),
        (47017, Scenario::CrashDuringRollingRestart),
        // Copies of late spans came back to the owner that had released them; held as
        // undecided, they went to the next owner and were released again (I2).
        (50427, Scenario::CrashDuringRollingRestart),
        // A leaving gateway's drain decided spans it held for the crashed owner alone —
        // drop — and the replica, told so, dropped its whole copy with the ERROR span (I1).
        (50547, Scenario::CrashDuringRollingRestart),
        // A forward to the crashed owner failed after the ring changed; the stray's copy went
        // by the old ring, under which the (now leaving) sender was the replica: no copy (I1).
        (56252, Scenario::CrashDuringRollingRestart),
        (63432, Scenario::CrashDuringRollingRestart),
    ];
    let failures = run_all(runs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Seed 41 of the asymmetric partition never finished (a fenced shard's tick storm).
#[test]
fn a_fenced_gateway_does_not_spin_and_the_cluster_converges() {
    let outcome = run(41, Scenario::AsymmetricPartition);
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
}
