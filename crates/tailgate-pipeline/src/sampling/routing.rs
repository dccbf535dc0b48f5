//! Where a batch goes: split by owner on the newest ring (forwarded to other owners, held
//! when they cannot take it), then by shard, each group's bytes reserved in the budget first.
//! With replication, what stays here is copied to the traces' replicas before the sender is
//! answered (`replication.rs` has the rest of replication).

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{counter, gauge};
use futures::future::join_all;
use tailgate_otlp::EncodedSpan;
use tailgate_ring::{Placement, Ring, by_replica};
use tokio::task::JoinHandle;

use super::replication::REPLICA_ACK_WAIT;
use super::shard::ShardMsg;
use super::{TailSamplingStage, shard_of};
use crate::cluster::{ClusterLink, FORWARD_HOPS_MAX, LinkError};
use crate::consumer::{ConsumeError, RefuseReason};
use crate::telemetry::*;

/// What a refused sender is told to wait before retrying.
const REFUSAL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Copies in flight to the replicas of one batch: (spans, the send's outcome).
type PendingCopies = Vec<(u64, JoinHandle<Result<(), LinkError>>)>;

impl TailSamplingStage {
    /// Reserves budget for spans and sends them to their shards (`stray`: not owned here).
    pub(super) fn enqueue(&self, spans: Vec<EncodedSpan>, stray: bool) -> Result<(), ConsumeError> {
        let n = spans.len() as u64;
        let bytes: u64 = spans.iter().map(|s| s.bytes().len() as u64).sum();
        if stray {
            // Spans are never lost for want of a reachable owner: over budget, early
            // decisions bring memory back down.
            self.budget.force_reserve(bytes);
        } else if !self.budget.try_reserve(bytes) {
            self.update_gauges();
            return Err(self.refuse(n, "buffer_full"));
        }
        for (i, group) in split_by_shard(spans, self.shards.len()) {
            if group.is_empty() {
                continue;
            }
            let msg = if stray {
                ShardMsg::IngestStray(group)
            } else {
                ShardMsg::Ingest(group)
            };
            if let Err(e) = self.shards[i].cast(msg) {
                // Only after shutdown stopped the actor; give the reservation back.
                if let ractor::MessagingErr::SendErr(
                    ShardMsg::Ingest(lost) | ShardMsg::IngestStray(lost),
                ) = e
                {
                    self.budget
                        .release(lost.iter().map(|s| s.bytes().len() as u64).sum());
                }
                return Err(ConsumeError::ShuttingDown);
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// Buffers what this node owns, forwards the rest to its owners.
    pub(super) async fn route(
        &self,
        spans: Vec<EncodedSpan>,
        hops: u32,
    ) -> Result<(), ConsumeError> {
        let Some(c) = &self.cluster else {
            return self.enqueue(spans, false);
        };
        let ring = Arc::clone(&c.ring.borrow());
        if ring.is_empty() {
            // Not in the cluster yet (no ring learned): another gateway may own these traces
            // and hold their other spans. Deciding here would split them (a slow-joining
            // gateway decided children without their root, found by the simulator under
            // latency). Hold them undecided, like spans whose owner is unreachable; the first
            // ring hands them to their owners.
            return self.enqueue(spans, true);
        }
        let local = c.link.local_name();
        let placement = Placement::split(&ring, local, spans, |s| s.meta.trace_id);
        // Copies start before the spans are buffered and are awaited last, so their round
        // trip overlaps the forwards; a refused batch's copies only cost the replica memory
        // until they expire.
        let copies = if c.replicating && !placement.local.is_empty() {
            Self::copy_to_replicas(&c.link, &ring, local, &placement.local)
        } else {
            Vec::new()
        };
        if placement.is_all_local() {
            self.enqueue(placement.local, false)?;
            Self::await_replicas(copies).await;
            return Ok(());
        }
        if !placement.local.is_empty() {
            self.enqueue(placement.local, false)?;
        }
        let mut strays = Vec::new();
        for (owner, spans) in placement.remote {
            let n = spans.len() as u64;
            if hops >= FORWARD_HOPS_MAX {
                counter!(CLUSTER_FORWARD_HOP_LIMIT_SPANS).increment(n);
                strays.extend(spans);
                continue;
            }
            match c.link.forward(&owner, ring.epoch(), hops + 1, &spans).await {
                Ok(()) => counter!(CLUSTER_FORWARDED_OUT_SPANS).increment(n),
                Err(e) => {
                    tracing::debug!(%owner, error = %e, "forward failed; keeping the spans here until the owner is back or replaced");
                    counter!(CLUSTER_FORWARD_FAILED_SPANS).increment(n);
                    strays.extend(spans);
                }
            }
        }
        // Spans held for an unreachable owner are, until it answers or is replaced, the only
        // copy of themselves: with replication they go to their trace's replica too, which
        // takes the trace over should the owner have crashed (the simulator lost such spans
        // when the gateway holding them left before the dead owner was removed). The replica
        // is the one of the ring now: a failed forward takes a second, and the ring it was
        // sent by may have changed meanwhile — under that ring this node, leaving since, was
        // the replica, and the spans had no copy anywhere (seed 56252).
        let stray_copies = if c.replicating && !strays.is_empty() {
            let ring_now = Arc::clone(&c.ring.borrow());
            Self::copy_to_replicas(&c.link, &ring_now, local, &strays)
        } else {
            Vec::new()
        };
        Self::await_replicas(copies).await;
        if strays.is_empty() {
            return Ok(());
        }
        Self::await_replicas(stray_copies).await;
        self.enqueue(strays, true)
    }

    /// Starts copying spans about to be buffered here to their traces' replicas: spans this
    /// node owns, and spans it holds for an unreachable owner. Where the replica is this
    /// node (a stray whose owner's successor is this node), the spans are here already.
    fn copy_to_replicas(
        link: &Arc<dyn ClusterLink>,
        ring: &Ring,
        local: &str,
        spans: &[EncodedSpan],
    ) -> PendingCopies {
        if ring.owners().len() < 2 {
            counter!(REPLICATION_UNREPLICATED_SPANS, "reason" => "no_replica")
                .increment(spans.len() as u64);
            return Vec::new();
        }
        by_replica(ring, spans.iter(), |s| s.meta.trace_id)
            .into_iter()
            .filter(|(replica, _)| replica != local)
            .map(|(replica, group)| {
                let n = group.len() as u64;
                let sent = link.replicate(&replica, ring.epoch(), &group, &[], &[]);
                (n, tokio::spawn(sent))
            })
            .collect()
    }

    /// Waits for the replicas' acks, at most [`REPLICA_ACK_WAIT`]; what they did not
    /// acknowledge in time is counted as unreplicated (the copies may still land).
    async fn await_replicas(pending: PendingCopies) {
        if pending.is_empty() {
            return;
        }
        let (counts, handles): (Vec<u64>, Vec<_>) = pending.into_iter().unzip();
        match tokio::time::timeout(REPLICA_ACK_WAIT, join_all(handles)).await {
            Ok(results) => {
                for (n, r) in counts.into_iter().zip(results) {
                    match r {
                        Ok(Ok(())) => counter!(REPLICATION_SENT_SPANS).increment(n),
                        _ => counter!(REPLICATION_UNREPLICATED_SPANS, "reason" => "failed")
                            .increment(n),
                    }
                }
            }
            Err(_) => counter!(REPLICATION_UNREPLICATED_SPANS, "reason" => "timeout")
                .increment(counts.iter().sum()),
        }
    }

    pub(super) fn refuse(&self, n: u64, reason: &'static str) -> ConsumeError {
        counter!(SAMPLING_SPANS_REFUSED, "processor" => self.name.clone(), "reason" => reason)
            .increment(n);
        counter!(PROCESSOR_REFUSED_SPANS, "processor" => self.name.clone()).increment(n);
        ConsumeError::Refused {
            reason: RefuseReason::SamplingBufferFull,
            retry_after: REFUSAL_RETRY_AFTER,
        }
    }

    pub(super) fn update_gauges(&self) {
        gauge!(TAIL_SAMPLING_TRACES_ON_MEMORY, "processor" => self.name.clone())
            .set(self.budget.traces_live() as f64);
        gauge!(SAMPLING_BUFFERED_BYTES, "processor" => self.name.clone())
            .set(self.budget.bytes_used() as f64);
    }
}

/// Spans by the shard that owns their trace, each moved once into a batch sized exactly (a
/// single shard takes the batch as it is).
fn split_by_shard(spans: Vec<EncodedSpan>, shards: usize) -> Vec<(usize, Vec<EncodedSpan>)> {
    if shards == 1 {
        return vec![(0, spans)];
    }
    let shard_of_span: Vec<usize> = spans
        .iter()
        .map(|s| shard_of(&s.meta.trace_id, shards))
        .collect();
    let mut sizes = vec![0usize; shards];
    for &i in &shard_of_span {
        sizes[i] += 1;
    }
    let mut per_shard: Vec<Vec<EncodedSpan>> = sizes.into_iter().map(Vec::with_capacity).collect();
    for (s, i) in spans.into_iter().zip(shard_of_span) {
        per_shard[i].push(s);
    }
    per_shard.into_iter().enumerate().collect()
}
