//! The shard actor: one per shard of the stage, owning one pure [`TraceShard`]; one handler
//! per message. Its mailbox is unbounded by design: every span in it was reserved in the
//! stage's byte budget before it was sent (`routing.rs`, `enqueue`), so the budget bounds
//! what mailboxes hold; the other messages are one per ring change, override, fence flip,
//! handoff reply and status call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tailgate_otlp::{EncodedSpan, TraceId};
use tailgate_ring::Ring;
use tailgate_sampling::{BufferBudget, DecisionTransfer, Released, TraceShard, TraceTransfer};
use tokio::time::Instant;

use super::metrics::ShardMetrics;
use crate::cluster::ClusterLink;
use crate::consumer::{ConsumeError, Consumer};
use crate::telemetry::SAMPLING_SPANS_DROPPED;
use metrics::counter;

/// Longest pause between attempts to pass kept spans on while the next stage refuses.
const DELIVER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// How long spans of traces this node does not own are held undecided, waiting for their
/// owner to become reachable (see `TraceShard::ingest_held`).
pub(super) const STRAY_HOLD: Duration = Duration::from_secs(8);
/// Pause before handing off again what a failed handoff brought back.
pub(super) const HANDOFF_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What one shard buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardBuffered {
    pub traces: u64,
    pub spans: u64,
    pub bytes: u64,
}

pub enum ShardMsg {
    /// Spans whose bytes were reserved in the budget.
    Ingest(Vec<EncodedSpan>),
    /// Spans of traces this node does not own, kept because their owner could not be
    /// reached; bytes reserved. Handed off again later.
    IngestStray(Vec<EncodedSpan>),
    /// A deadline may have passed.
    Tick,
    /// Shutdown: decide (or drop) everything, deliver, reply.
    Drain(RpcReplyPort<()>),
    /// A new ring: hand off what moved.
    Ring(Arc<Ring>),
    /// The runtime sampling override changed.
    Override(Option<f64>),
    /// Fenced or not (see `ClusterLink::fenced`).
    Fence(bool),
    /// Traces and decisions handed to this node by their previous owner.
    Accept {
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
        reply: RpcReplyPort<()>,
    },
    /// A handoff failed; the traces come back, `away` after they left. `in_flight` is what
    /// they counted in the stage's in-flight total until now.
    Returned {
        traces: Vec<TraceTransfer>,
        away: Duration,
        in_flight: u64,
        /// The failed message carried decisions: send them again.
        decisions_failed: bool,
    },
    /// Copies this shard sent to another node: acknowledged (`placed`) or failed.
    CopiesSent {
        ids: Vec<TraceId>,
        target: CopyTarget,
        placed: bool,
    },
    /// Copies from the owner of traces this node is the replica of (sent at `epoch`);
    /// the bytes of `spans` reserved.
    Replica {
        epoch: u64,
        spans: Vec<EncodedSpan>,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    },
    /// What the shard buffers.
    Status(RpcReplyPort<ShardBuffered>),
}

/// Where a replica copy goes when this node no longer backs it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyTarget {
    /// The trace's owner changed: the new owner takes it over (or merges it).
    Owner,
    /// Only its replica changed: the new replica holds it.
    Replica,
}

/// A shard's replication work in progress (`replication.rs` does it).
#[derive(Default)]
pub(super) struct Replication {
    /// Dropped decisions, sent with the next batch.
    pub(super) decisions_now: Vec<DecisionTransfer>,
    /// No batch of decisions leaves before this (one per `DECISION_BATCH_INTERVAL`).
    pub(super) send_after: Duration,
    /// Kept decisions and when they were taken, sent `KEPT_DECISION_DELAY` later.
    pub(super) decisions_kept: VecDeque<(Duration, DecisionTransfer)>,
    /// Copies whose send failed, with where they were going: placed again at `place_at`.
    pub(super) unplaced: BTreeMap<TraceId, CopyTarget>,
    pub(super) place_at: Option<Duration>,
    /// What the last ring change moved to this node (see `ShardState::ingest_owned`).
    pub(super) moved_in: Option<MovedIn>,
}

/// The traces a ring change moved to this node: those that start here soon after it are held
/// for the previous owner's kept decision, which it withholds for a while (`handoff.rs`).
pub(super) struct MovedIn {
    /// The ring before the change.
    pub(super) before: Arc<Ring>,
    /// Traces first seen here until then are held...
    pub(super) window_end: Duration,
    /// ...and decided no earlier than this.
    pub(super) hold_until: Duration,
}

/// A shard's view of the cluster.
pub(super) struct ShardCluster {
    pub(super) link: Arc<dyn ClusterLink>,
    pub(super) ring: Arc<Ring>,
    pub(super) local: String,
    /// Traces on their way to another node (shared by every shard of the stage).
    pub(super) in_flight: Arc<AtomicU64>,
    /// When to retry handing off traces this shard holds but does not own.
    pub(super) retry_at: Option<Duration>,
    /// A handoff carrying decisions failed: the retry sends the decisions of every trace this
    /// shard does not own again (without them the new owner decides its own copy of a trace
    /// already exported here — a duplicate the simulator found under asymmetric partitions).
    pub(super) resend_decisions: bool,
    /// With `replication_factor: 2`: decisions on their way to the replicas, copies on
    /// their way to another node.
    pub(super) replication: Option<Replication>,
}

pub(super) struct ShardActor;

pub(super) struct ShardState {
    pub(super) budget: Arc<BufferBudget>,
    pub(super) metrics: ShardMetrics,
    pub(super) processor: String,
    pub(super) shard: TraceShard,
    pub(super) next: Arc<dyn Consumer>,
    pub(super) kept_observer: Option<Arc<dyn super::KeptTraces>>,
    pub(super) epoch: Instant,
    pub(super) tick_at: Option<Duration>,
    pub(super) cluster: Option<ShardCluster>,
}

impl ShardState {
    pub(super) fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    /// Passes kept spans on (and queues the decisions for the replicas).
    pub(super) async fn deliver(&mut self, released: Released) {
        let Released { kept, decided } = released;
        self.queue_decisions(decided);
        if kept.is_empty() {
            return;
        }
        loop {
            match self.next.consume(kept.clone()).await {
                Ok(()) => {
                    if let Some(observer) = &self.kept_observer {
                        let mut last = None;
                        observer.kept(&mut kept.iter().filter_map(|s| {
                            let id = s.meta.trace_id;
                            (last.replace(id) != Some(id)).then_some(id)
                        }));
                    }
                    return;
                }
                Err(ConsumeError::Failed(_)) => return,
                Err(ConsumeError::ShuttingDown) => {
                    counter!(SAMPLING_SPANS_DROPPED, "processor" => self.processor.clone(), "reason" => "downstream_closed")
                        .increment(kept.len() as u64);
                    return;
                }
                // Waiting here blocks the shard: the budget fills and senders are refused.
                Err(ConsumeError::Refused { retry_after, .. }) => {
                    tokio::time::sleep(retry_after.min(DELIVER_RETRY_PAUSE_MAX)).await;
                }
            }
        }
    }

    fn schedule(&mut self, myself: &ActorRef<ShardMsg>) {
        let retry = self.cluster.as_ref().and_then(|c| c.retry_at);
        let replication_due = self
            .cluster
            .as_ref()
            .and_then(|c| c.replication.as_ref()?.next_due());
        let expiry = self.shard.next_replica_expiry();
        // Fenced: deadlines wait (the Fence(false) message polls); never spin on a past one.
        let due = if self.shard.is_fenced() {
            None
        } else {
            self.shard.next_deadline()
        };
        let Some(deadline) = [due, retry, replication_due, expiry]
            .into_iter()
            .flatten()
            .min()
        else {
            return;
        };
        if self.tick_at.is_some_and(|t| t <= deadline) {
            return;
        }
        self.tick_at = Some(deadline);
        let wait = deadline.saturating_sub(self.now());
        myself.send_after(wait, || ShardMsg::Tick);
    }

    fn flush_metrics(&mut self) {
        let c = self.shard.take_counters();
        self.metrics.record(c);
        self.metrics
            .buffered_spans
            .set(self.shard.spans_buffered() as f64);
        self.metrics
            .traces_on_memory
            .set(self.budget.traces_live() as f64);
        self.metrics
            .buffered_bytes
            .set(self.budget.bytes_used() as f64);
        self.metrics
            .replica_held_spans
            .set(self.shard.replicas_held().1 as f64);
    }

    /// Spans this node owns (bytes reserved).
    async fn on_ingest(&mut self, spans: Vec<EncodedSpan>) {
        let released = self.ingest_owned(spans, self.now(), false);
        self.deliver(released).await;
    }

    /// Spans held for an owner that could not take them; handed off again later.
    async fn on_ingest_stray(&mut self, spans: Vec<EncodedSpan>) {
        let now = self.now();
        let released = self.shard.ingest_held(spans, now, STRAY_HOLD);
        self.deliver(released).await;
        if let Some(c) = &mut self.cluster {
            c.retry_at.get_or_insert(now + HANDOFF_RETRY_PAUSE);
        }
    }

    /// Decides what is due; retries a handoff whose pause is over.
    async fn on_tick(&mut self, myself: &ActorRef<ShardMsg>) {
        self.tick_at = None;
        let now = self.now();
        let released = self.shard.poll(now);
        self.deliver(released).await;
        if self
            .cluster
            .as_ref()
            .and_then(|c| c.retry_at)
            .is_some_and(|at| at <= now)
        {
            self.hand_off(myself, false);
        }
        self.place_copies_again(myself).await;
    }

    /// A new ring: take this node's share of the rate limits, hand off what moved, bring
    /// the replicas up to date.
    async fn on_ring(&mut self, myself: &ActorRef<ShardMsg>, ring: Arc<Ring>) {
        let Some(c) = &mut self.cluster else { return };
        let owners = ring.owners().len().max(1);
        // Rate limits and throughput targets are cluster-wide: each owner takes its share
        // (the shard divides it among the node's shards). Passing the per-shard share here
        // divided by the shard count twice: every cluster member kept half (two shards) of
        // its rate limit after its first ring change.
        self.shard.set_rate_share(1.0 / owners as f64);
        let old = std::mem::replace(&mut c.ring, ring);
        let now = self.now();
        self.note_ring_change(&old, now);
        self.hand_off(myself, true);
        self.replicate_on_ring_change(myself, &old).await;
    }

    async fn on_fence(&mut self, fenced: bool) {
        if fenced != self.shard.is_fenced() {
            let what = if fenced {
                "paused: no contact with the cluster"
            } else {
                "resumed"
            };
            tracing::info!(fenced, "sampling decisions {what}");
        }
        self.shard.set_fenced(fenced);
        if !fenced {
            let released = self.shard.poll(self.now());
            self.deliver(released).await;
        }
    }

    /// Traces and decisions from their previous owner; a trace sent for an older epoch is
    /// passed on to its newest owner.
    async fn on_accept(&mut self, traces: Vec<TraceTransfer>, decisions: Vec<DecisionTransfer>) {
        let now = self.now();
        for d in decisions {
            let released = self.shard.accept_decision(d, now);
            self.deliver(released).await;
        }
        let mut stray = false;
        let mut owned = std::collections::HashSet::new();
        for t in traces {
            if let Some(c) = &self.cluster {
                if c.ring.owns(&c.local, &t.trace_id) {
                    owned.insert(t.trace_id);
                } else {
                    stray = true;
                }
            }
            let released = self.shard.accept_trace(t, now);
            self.deliver(released).await;
        }
        if self.cluster.as_ref().is_some_and(ShardCluster::replicating) && !owned.is_empty() {
            // This node owns them now: their replica gets a copy.
            self.copy_owned_to_replicas(now, &|id| owned.contains(id));
        }
        if stray && let Some(c) = &mut self.cluster {
            c.retry_at = Some(now);
        }
    }

    /// A failed handoff's traces, back `away` after they left.
    async fn on_returned(
        &mut self,
        traces: Vec<TraceTransfer>,
        away: Duration,
        in_flight: u64,
        decisions_failed: bool,
    ) {
        let now = self.now();
        let mut released = Released::default();
        let ids: std::collections::BTreeSet<TraceId> = traces.iter().map(|t| t.trace_id).collect();
        for mut t in traces {
            t.remaining = t.remaining.saturating_sub(away);
            t.age += away;
            released.absorb(self.shard.restore_trace(t, now, STRAY_HOLD));
        }
        if let Some(c) = &mut self.cluster {
            c.in_flight.fetch_sub(in_flight, Ordering::AcqRel);
            c.retry_at = Some(now + HANDOFF_RETRY_PAUSE);
            c.resend_decisions |= decisions_failed;
        }
        self.copy_returned_to_replicas(now, &ids);
        self.deliver(released).await;
    }

    fn buffered(&self) -> ShardBuffered {
        ShardBuffered {
            traces: self.shard.traces_buffered() as u64,
            spans: self.shard.spans_buffered() as u64,
            bytes: self.shard.bytes_buffered(),
        }
    }

    /// Shutdown: decide (or drop) everything, deliver it, and tell the replicas every
    /// decision still queued.
    async fn on_drain(&mut self) {
        let released = self.shard.drain(self.now());
        self.deliver(released).await;
        self.flush_decisions_at_shutdown().await;
        self.flush_metrics();
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardState;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: ShardState,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Ingest(spans) => state.on_ingest(spans).await,
            ShardMsg::IngestStray(spans) => state.on_ingest_stray(spans).await,
            ShardMsg::Tick => state.on_tick(&myself).await,
            ShardMsg::Ring(ring) => state.on_ring(&myself, ring).await,
            ShardMsg::Override(percent) => state.shard.set_override(percent),
            ShardMsg::Fence(fenced) => state.on_fence(fenced).await,
            ShardMsg::Accept {
                traces,
                decisions,
                reply,
            } => {
                state.on_accept(traces, decisions).await;
                let _ = reply.send(());
            }
            ShardMsg::Returned {
                traces,
                away,
                in_flight,
                decisions_failed,
            } => {
                state
                    .on_returned(traces, away, in_flight, decisions_failed)
                    .await;
            }
            ShardMsg::Replica {
                epoch,
                spans,
                traces,
                decisions,
            } => state.on_replica(epoch, spans, traces, decisions).await,
            ShardMsg::CopiesSent {
                ids,
                target,
                placed,
            } => state.on_copies_sent(ids, target, placed),
            ShardMsg::Status(reply) => {
                let _ = reply.send(state.buffered());
                return Ok(());
            }
            ShardMsg::Drain(reply) => {
                state.on_drain().await;
                let _ = reply.send(());
                return Ok(());
            }
        }
        state.flush_decisions();
        state.flush_metrics();
        state.schedule(&myself);
        Ok(())
    }
}
