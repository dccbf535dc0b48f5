//! Handing off: a shard gives every trace it does not own at its ring (and, after a ring
//! change, the decisions of such traces) to the owner, in messages of at most
//! [`HANDOFF_TRACES_PER_MESSAGE`] traces. A message's traces count as in flight until the
//! receiver acknowledged them or they are back in the shard (`ShardMsg::Returned`), so
//! "nothing buffered, nothing in flight" never misses a trace.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::counter;
use ractor::ActorRef;
use tailgate_otlp::TraceId;
use tailgate_ring::Placement;
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use tokio::time::Instant;

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
            self.shard.decisions_for(now, &moves)
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
