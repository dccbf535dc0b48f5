//! Handing off: a shard gives every trace it does not own at its ring (and, after a ring
//! change, the decisions of such traces) to the owner, in messages of at most
//! [`HANDOFF_TRACES_PER_MESSAGE`] traces. A message's traces count as in flight until the
//! receiver acknowledged them or they are back in the shard (`ShardMsg::Returned`), so
//! "nothing buffered, nothing in flight" never misses a trace.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::counter;
use ractor::ActorRef;
use tailgate_otlp::TraceId;
use tailgate_ring::Placement;
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use tokio::time::Instant;

use super::replication::KEPT_DECISION_DELAY;
use super::shard::{ShardCluster, ShardMsg, ShardState};
use crate::cluster::HandoffFailed;
use crate::telemetry::{CLUSTER_HANDOFF_FAILED_TRACES, CLUSTER_HANDOFF_LOST_TRACES};

/// Traces per handoff message: bounds a message's size and the receiver's work per call.
const HANDOFF_TRACES_PER_MESSAGE: usize = 2048;

impl ShardState {
    /// Hands every trace this shard does not own at its ring to its owner (with the
    /// decisions of such traces when `with_decisions`, i.e. after a ring change).
    pub(super) fn hand_off(&mut self, myself: &ActorRef<ShardMsg>, with_decisions: bool) {
        let now = self.now();
        let Some(c) = &mut self.cluster else { return };
        c.retry_at = None;
        if c.ring.is_empty() {
            return;
        }
        let with_decisions = with_decisions || std::mem::take(&mut c.resend_decisions);
        let (ring, local) = (Arc::clone(&c.ring), c.local.clone());
        let moves = |id: &TraceId| !ring.owns(&local, id);
        let traces = self.shard.take_traces(now, &moves);
        let decisions = if with_decisions {
            withhold_young_kept(c, self.shard.decisions_for(now, &moves), now)
        } else {
            Vec::new()
        };
        if traces.is_empty() && decisions.is_empty() {
            return;
        }
        let mut traces = Placement::split(&ring, &local, traces, |t| t.trace_id).remote;
        let mut decisions = Placement::split(&ring, &local, decisions, |d| d.trace_id).remote;
        let owners: BTreeSet<String> = traces.keys().chain(decisions.keys()).cloned().collect();
        for owner in owners {
            let mut ts = traces.remove(&owner).unwrap_or_default();
            // Every decision goes in the owner's first message.
            let mut ds = decisions.remove(&owner).unwrap_or_default();
            while !ts.is_empty() || !ds.is_empty() {
                let chunk: Vec<TraceTransfer> = ts
                    .drain(..ts.len().min(HANDOFF_TRACES_PER_MESSAGE))
                    .collect();
                send(
                    c,
                    myself,
                    &owner,
                    ring.epoch(),
                    chunk,
                    std::mem::take(&mut ds),
                );
            }
        }
    }
}

/// With replication, a member that stays in the ring keeps its kept decisions younger than
/// [`KEPT_DECISION_DELAY`] out of a handoff and sends them once they are that old (the
/// retry resends decisions). Until then the trace's export may still be in this process: had
/// the new owner the decision, it would settle its copy of the trace on it, and a crash of
/// this node before the export left would lose the spans. Without it, the new owner holds
/// its copy ([`super::replication`]'s takeover hold) and, should this node crash, decides
/// it again — a duplicate at worst, as when a crash beats the decision to the replica.
fn withhold_young_kept(
    c: &mut ShardCluster,
    decisions: Vec<DecisionTransfer>,
    now: Duration,
) -> Vec<DecisionTransfer> {
    if !c.replicating() || !c.ring.owners().contains(&c.local) {
        return decisions;
    }
    let (due, next) = split_young_kept(decisions);
    if let Some(after) = next {
        c.resend_decisions = true;
        let at = now + after;
        c.retry_at = Some(c.retry_at.map_or(at, |r| r.min(at)));
    }
    due
}

/// The decisions that may go now, and how long until the oldest withheld one may (`None`
/// when nothing is withheld).
fn split_young_kept(decisions: Vec<DecisionTransfer>) -> (Vec<DecisionTransfer>, Option<Duration>) {
    let (young, due): (Vec<_>, Vec<_>) = decisions
        .into_iter()
        .partition(|d| d.keep && d.age < KEPT_DECISION_DELAY);
    let next = young
        .iter()
        .map(|d| KEPT_DECISION_DELAY.saturating_sub(d.age))
        .min();
    (due, next)
}

/// Sends one handoff message; on failure its traces go back to the shard.
fn send(
    c: &ShardCluster,
    myself: &ActorRef<ShardMsg>,
    owner: &str,
    epoch: u64,
    traces: Vec<TraceTransfer>,
    decisions: Vec<DecisionTransfer>,
) {
    let carries_decisions = !decisions.is_empty();
    let n = traces.len() as u64;
    c.in_flight.fetch_add(n, Ordering::AcqRel);
    let sent = c.link.hand_off(owner, epoch, traces, decisions);
    let (in_flight, myself, owner) = (Arc::clone(&c.in_flight), myself.clone(), owner.to_string());
    let started = Instant::now();
    tokio::spawn(async move {
        match sent.await {
            // Acknowledged: the receiver owns the traces now.
            Ok(()) => {
                in_flight.fetch_sub(n, Ordering::AcqRel);
            }
            Err(HandoffFailed { error, traces }) => {
                tracing::warn!(%owner, traces = traces.len(), error = %error, "handoff failed; the traces stay here and are retried");
                counter!(CLUSTER_HANDOFF_FAILED_TRACES).increment(traces.len() as u64);
                let msg = ShardMsg::Returned {
                    traces,
                    away: started.elapsed(),
                    in_flight: n,
                    decisions_failed: carries_decisions,
                };
                return_to_shard(&myself, msg, &in_flight, n);
            }
        }
    });
}

/// Puts a failed handoff's traces back in the shard; they stay counted in flight until the
/// shard has them.
fn return_to_shard(myself: &ActorRef<ShardMsg>, msg: ShardMsg, in_flight: &AtomicU64, n: u64) {
    if let Err(ractor::MessagingErr::SendErr(ShardMsg::Returned { traces, .. })) = myself.cast(msg)
    {
        // Only after shutdown stopped the shard: counted, never silent.
        counter!(CLUSTER_HANDOFF_LOST_TRACES).increment(traces.len() as u64);
        in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(n: u8, keep: bool, age_ms: u64) -> DecisionTransfer {
        DecisionTransfer {
            trace_id: TraceId([n; 16]),
            keep,
            age: Duration::from_millis(age_ms),
            released: Vec::new(),
        }
    }

    #[test]
    fn young_kept_decisions_wait_and_the_oldest_of_them_sets_the_retry() {
        let (due, next) = split_young_kept(vec![
            decision(1, true, 1_000),
            decision(2, false, 0),
            decision(3, true, 4_000),
            decision(4, true, 5_000),
        ]);
        let ids: Vec<u8> = due.iter().map(|d| d.trace_id.0[0]).collect();
        assert_eq!(
            ids,
            vec![2, 4],
            "dropped ones and kept ones old enough go at once"
        );
        assert_eq!(
            next,
            Some(Duration::from_secs(1)),
            "the 4 s old one is due in 1 s"
        );
    }

    #[test]
    fn nothing_withheld_means_no_retry() {
        let (due, next) = split_young_kept(vec![decision(1, false, 0), decision(2, true, 6_000)]);
        assert_eq!(due.len(), 2);
        assert_eq!(next, None);
    }
}
