//! Replication in the running stage (`replication_factor: 2`; docs/cluster.md, "Crash
//! durability"). Primary–backup with the owner as the only decider:
//!
//! ```text
//! owner: route ─ enqueue owned spans ─┬─► shards (buffer, decide)
//!                                     └─► replica: Replicate{spans} ─ ack ─► answer the sender
//!        shard decides ─ dropped: at once ─┐
//!                      ─ kept: after KEPT_DECISION_DELAY ─┴─► replica: Replicate{decisions}
//!        ring change ─ copies of owned traces whose replica changed ─► new replica
//! replica: Replicate ─► shard copies (passive) ─ decision ─► dropped, decision cached
//!          ring change ─ owns it now ─► promoted (deadline resumes) ─► re-replicated
//!                      ─ the owner changed ─► copy to the new owner
//!                      ─ same owner, another replica ─► copy to the new replica
//!                        (dropped here once acknowledged unless still the replica;
//!                        sent again after a pause if the send failed)
//! ```
//!
//! When the owner changed (another member, or the same name restarted — see
//! `Ring::same_incarnation`), the copy goes to the new owner: if the previous one crashed,
//! nobody else holds the trace, and a copy sent on to a replica would never be decided (the
//! simulator found that loss when a crashed member restarted before its removal). The new
//! owner takes the trace over, or merges the copy by span ID if it has it. When only the
//! replica changed, the copy goes to the new replica: the owner may have decided the trace
//! and still be exporting it (its kept decision waits `KEPT_DECISION_DELAY`), and only a
//! replica's copy covers that window.
//!
//! The sender is answered only after the replica acknowledged, or after
//! [`REPLICA_ACK_WAIT`] (then the spans count as unreplicated): a slow replica never stalls
//! ingest and no span is unreplicated silently.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use metrics::{counter, gauge};
use ractor::ActorRef;
use tailgate_otlp::{EncodedSpan, TraceId};
use tailgate_ring::{Placement, Ring, by_replica};
use tailgate_sampling::{DecisionTransfer, Released, TraceTransfer};
use tokio::task::JoinHandle;

use super::shard::{
    CopyTarget, HANDOFF_RETRY_PAUSE, MovedIn, Replication, ShardCluster, ShardMsg, ShardState,
};
use super::{TailSamplingStage, shard_of};
use crate::cluster::ClusterLink;
use crate::consumer::ConsumeError;
use crate::telemetry::*;

/// Longest a sender waits for the replica's ack before its spans count as unreplicated.
pub(super) const REPLICA_ACK_WAIT: Duration = Duration::from_secs(1);
/// A kept decision reaches the replica only this long after the owner released the trace:
/// should the owner crash before its export left the process, the replica decides again
/// (a duplicate, counted) instead of dropping spans nobody exported.
pub(super) const KEPT_DECISION_DELAY: Duration = Duration::from_secs(5);
/// A promoted copy (or a trace moved here by a ring change) is decided no earlier than this
/// after the takeover: time for a previous owner to send its decision — one that left
/// gracefully hands it off at once (see `TraceShard::promote_replicas`), one that stays
/// withholds kept decisions for [`KEPT_DECISION_DELAY`] (`handoff.rs`).
const TAKEOVER_HOLD: Duration = KEPT_DECISION_DELAY.saturating_add(Duration::from_secs(2));
/// Shortest time past the owner's expected decision a replica copy waits for it (the owner
/// may hold a trace past its deadline: strays, fencing).
const REPLICA_GRACE_MIN: Duration = Duration::from_secs(10);

/// How long a replica copy waits for its owner's decision past the expected deadline.
pub(super) fn replica_grace(decision_wait: Duration) -> Duration {
    decision_wait.max(REPLICA_GRACE_MIN) + KEPT_DECISION_DELAY
}

/// Decisions go to the replicas in batches at most this often: a shard decides a few traces
/// on almost every tick, and a call per tick would cost more than the decisions are worth. A
/// decision that waits here is at worst taken again by a replica promoting its copy (the
/// same policies on the same spans) — and a kept one waits `KEPT_DECISION_DELAY` anyway.
const DECISION_BATCH_INTERVAL: Duration = Duration::from_millis(200);

impl Replication {
    /// When the next queued work is due.
    pub(super) fn next_due(&self) -> Option<Duration> {
        let dropped = (!self.decisions_now.is_empty()).then_some(self.send_after);
        let kept = self
            .decisions_kept
            .front()
            .map(|(at, _)| (*at + KEPT_DECISION_DELAY).max(self.send_after));
        [dropped, kept, self.place_at].into_iter().flatten().min()
    }
}

/// Sends whole-trace copies and decisions to `to` without waiting (their loss matters only
/// if a crash follows; counted). With `report`, the shard learns the outcome per trace. The
/// handle says whether the send was acknowledged.
fn spawn_replicate(
    link: &Arc<dyn ClusterLink>,
    to: &str,
    epoch: u64,
    traces: &[TraceTransfer],
    decisions: &[DecisionTransfer],
    report: Option<(&ActorRef<ShardMsg>, CopyTarget)>,
) -> JoinHandle<bool> {
    let spans: u64 = traces.iter().map(|t| t.spans.len() as u64).sum();
    let n = decisions.len() as u64;
    let sent = link.replicate(to, epoch, &[], traces, decisions);
    let to = to.to_string();
    let report = report.map(|(shard, target)| {
        let ids = traces.iter().map(|t| t.trace_id).collect();
        (shard.clone(), target, ids)
    });
    tokio::spawn(async move {
        let placed = match sent.await {
            Ok(()) => {
                counter!(REPLICATION_SENT_SPANS).increment(spans);
                counter!(REPLICATION_SENT_DECISIONS).increment(n);
                true
            }
            Err(e) => {
                tracing::debug!(%to, error = %e, "replica copy failed");
                counter!(REPLICATION_UNREPLICATED_SPANS, "reason" => "failed").increment(spans);
                counter!(REPLICATION_FAILED_DECISIONS).increment(n);
                false
            }
        };
        if let Some((shard, target, ids)) = report {
            // Only fails after shutdown stopped the shard (its copies are gone with it).
            let _ = shard.cast(ShardMsg::CopiesSent {
                ids,
                target,
                placed,
            });
        }
        placed
    })
}

impl TailSamplingStage {
    /// Takes copies from a trace's owner (sent at its `epoch`): spans whose bytes fit the
    /// budget (refused retryably otherwise: the owner counts them unreplicated), whole
    /// traces and decisions (never refused).
    pub async fn accept_replica(
        &self,
        epoch: u64,
        spans: Vec<EncodedSpan>,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) -> Result<(), ConsumeError> {
        let bytes: u64 = spans.iter().map(|s| s.bytes().len() as u64).sum();
        if !self.budget.try_reserve(bytes) {
            counter!(REPLICA_SPANS, "event" => "refused").increment(spans.len() as u64);
            return Err(self.refuse(0, "buffer_full"));
        }
        let shards = self.shards.len();
        let mut per_shard: Vec<ShardMsg> = (0..shards)
            .map(|_| ShardMsg::Replica {
                epoch,
                spans: Vec::new(),
                traces: Vec::new(),
                decisions: Vec::new(),
            })
            .collect();
        let part = |id: &TraceId| shard_of(id, shards);
        for s in spans {
            if let ShardMsg::Replica { spans, .. } = &mut per_shard[part(&s.meta.trace_id)] {
                spans.push(s);
            }
        }
        for t in traces {
            if let ShardMsg::Replica { traces, .. } = &mut per_shard[part(&t.trace_id)] {
                traces.push(t);
            }
        }
        for d in decisions {
            if let ShardMsg::Replica { decisions, .. } = &mut per_shard[part(&d.trace_id)] {
                decisions.push(d);
            }
        }
        for (shard, msg) in self.shards.iter().zip(per_shard) {
            if let ShardMsg::Replica {
                spans,
                traces,
                decisions,
                ..
            } = &msg
                && spans.is_empty()
                && traces.is_empty()
                && decisions.is_empty()
            {
                continue;
            }
            if let Err(e) = shard.cast(msg) {
                if let ractor::MessagingErr::SendErr(ShardMsg::Replica { spans, .. }) = e {
                    self.budget
                        .release(spans.iter().map(|s| s.bytes().len() as u64).sum());
                }
                return Err(ConsumeError::ShuttingDown);
            }
        }
        Ok(())
    }
}

impl ShardState {
    /// Queues decisions for the replicas (only with replication on).
    ///
    /// A drop of a trace this node does not own is not sent: it was decided on the part of
    /// the trace held here for an unreachable owner (a stray, or what a drain could not hand
    /// off), while the owner — or, after a crash, the replica — holds the rest, an error span
    /// perhaps. Sent, it made the replica drop its whole copy (seed 50547). A keep is sent:
    /// it keeps the others from exporting what this node exported.
    pub(super) fn queue_decisions(&mut self, decided: Vec<DecisionTransfer>) {
        let now = self.now();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(q) = c.replication.as_mut() else {
            return;
        };
        for d in decided {
            if d.keep {
                q.decisions_kept.push_back((now, d));
            } else if c.ring.owns(&c.local, &d.trace_id) {
                q.decisions_now.push(d);
            }
        }
    }

    /// Sends every decision that is due to the replica of its trace.
    pub(super) fn flush_decisions(&mut self) {
        self.send_decisions(false);
    }

    /// Shutdown: sends every queued decision, kept ones without their delay (this node's
    /// exports are flushed before it exits), to the replica and to the owner of its trace,
    /// and waits for the acks, at most [`REPLICA_ACK_WAIT`]. Either, left without it, would
    /// decide its copy again after this node is gone: the drain decides what a leaving
    /// member could not hand off, and the owner may hold that trace too (the simulator found
    /// a copy that reached the owner by another path exported twice).
    pub(super) async fn flush_decisions_at_shutdown(&mut self) {
        let sent = self.send_decisions(true);
        let _ = tokio::time::timeout(REPLICA_ACK_WAIT, join_all(sent)).await;
    }

    /// Sends the due decisions (`all`: every queued one) to the replica of their trace. A
    /// kept decision lists the spans released until now, late ones included: the replica
    /// must not release them again should it take the trace over.
    fn send_decisions(&mut self, all: bool) -> Vec<JoinHandle<bool>> {
        let now = self.now();
        let Some(c) = self.cluster.as_mut() else {
            return Vec::new();
        };
        let Some(q) = c.replication.as_mut() else {
            return Vec::new();
        };
        if !all && q.send_after > now {
            return Vec::new();
        }
        let mut due = std::mem::take(&mut q.decisions_now);
        while let Some((at, _)) = q.decisions_kept.front() {
            if !all && *at + KEPT_DECISION_DELAY > now {
                break;
            }
            let (at, mut d) = q.decisions_kept.pop_front().expect("front exists");
            d.age = now.saturating_sub(at);
            d.released = self.shard.released_spans(&d.trace_id);
            due.push(d);
        }
        if due.is_empty() {
            return Vec::new();
        }
        q.send_after = now + DECISION_BATCH_INTERVAL;
        let mut targets = by_replica(&c.ring, due.iter().cloned(), |d| d.trace_id);
        if all {
            let owners = Placement::split(&c.ring, &c.local, due, |d| d.trace_id).remote;
            for (owner, ds) in owners {
                targets.entry(owner).or_default().extend(ds);
            }
        }
        targets.remove(&c.local);
        targets
            .into_iter()
            .map(|(to, ds)| spawn_replicate(&c.link, &to, c.ring.epoch(), &[], &ds, None))
            .collect()
    }

    /// Copies from a trace's owner (or from a replica whose trace this node owns now).
    /// Spans of a trace this node owns at a newer ring than the sender's are buffered as
    /// its own (the sender hands its copy off on that ring); a whole-trace copy of a trace
    /// it owns at a ring at least as new is taken over (the sender was its replica).
    pub(super) async fn on_replica(
        &mut self,
        epoch: u64,
        spans: Vec<EncodedSpan>,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) {
        let now = self.now();
        let owned_since = |c: &ShardCluster, newer: bool, id: &TraceId| {
            !c.ring.is_empty()
                && (c.ring.epoch() > epoch || (!newer && c.ring.epoch() == epoch))
                && c.ring.owns(&c.local, id)
        };
        let (owned, copies): (Vec<EncodedSpan>, Vec<EncodedSpan>) = match &self.cluster {
            Some(c) => {
                // A copy's spans come trace by trace: one ring lookup per trace.
                let mut last: Option<(TraceId, bool)> = None;
                spans.into_iter().partition(|s| {
                    let id = s.meta.trace_id;
                    match last {
                        Some((last_id, owned)) if last_id == id => owned,
                        _ => {
                            let owned = owned_since(c, true, &id);
                            last = Some((id, owned));
                            owned
                        }
                    }
                })
            }
            None => (Vec::new(), spans),
        };
        let mut released = self.shard.replica_decisions(decisions, now);
        if !owned.is_empty() {
            released.absorb(self.ingest_owned(owned, now, true));
        }
        if !copies.is_empty() {
            released.absorb(self.shard.replicate(copies, now));
        }
        let mut taken_over = BTreeSet::new();
        for t in traces {
            if self
                .cluster
                .as_ref()
                .is_some_and(|c| owned_since(c, false, &t.trace_id))
            {
                taken_over.insert(t.trace_id);
                released.absorb(self.shard.take_over(t, now, TAKEOVER_HOLD));
            } else {
                released.absorb(self.shard.replicate_trace(t, now, TAKEOVER_HOLD));
            }
        }
        if !taken_over.is_empty() {
            self.copy_owned_to_replicas(now, &|id| taken_over.contains(id));
        }
        self.deliver(released).await;
    }

    /// After a ring change (`old` → the shard's ring now): promotes the copies this node
    /// owns now, sends the copies whose owner changed or which it no longer backs up to
    /// their owner, and copies every owned trace whose replica changed (the promoted ones
    /// included) to its replica.
    pub(super) async fn replicate_on_ring_change(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        old: &Ring,
    ) {
        let now = self.now();
        let Some(c) = &self.cluster else { return };
        if !c.replicating() || c.ring.is_empty() {
            return;
        }
        let (ring, local) = (Arc::clone(&c.ring), c.local.clone());
        let owns = |id: &TraceId| ring.owner(id) == Some(local.as_str());
        let (released, _) = self.shard.promote_replicas(now, TAKEOVER_HOLD, &owns);
        // A member that restarted under its old name holds the same ring positions but
        // none of its buffers: for placement it is a new member.
        let changed = |from: Option<&str>, to: Option<&str>| {
            from != to || to.is_some_and(|m| !old.same_incarnation(&ring, m))
        };
        let owner_changed = |id: &TraceId| !owns(id) && changed(old.owner(id), ring.owner(id));
        let replica_changed_here = |id: &TraceId| {
            !owns(id)
                && !changed(old.owner(id), ring.owner(id))
                && ring.replica(id) != Some(local.as_str())
        };
        self.send_copies(myself, CopyTarget::Owner, &owner_changed);
        self.send_copies(myself, CopyTarget::Replica, &replica_changed_here);
        let replica_changed = |id: &TraceId| {
            owns(id)
                && (old.owner(id) != Some(local.as_str())
                    || changed(old.replica(id), ring.replica(id)))
        };
        self.copy_owned_to_replicas(now, &replica_changed);
        self.deliver(released).await;
    }

    /// Sends the copies `select` picks to their `target` at the shard's ring (never to this
    /// node); the outcome comes back as `ShardMsg::CopiesSent`.
    fn send_copies(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        target: CopyTarget,
        select: &dyn Fn(&TraceId) -> bool,
    ) {
        let now = self.now();
        let Some(c) = &self.cluster else { return };
        let copies = self.shard.copies_for(now, select);
        if copies.is_empty() {
            return;
        }
        let groups = match target {
            CopyTarget::Owner => Placement::split(&c.ring, &c.local, copies, |t| t.trace_id).remote,
            CopyTarget::Replica => {
                let mut groups = by_replica(&c.ring, copies, |t| t.trace_id);
                groups.remove(&c.local);
                groups
            }
        };
        for (to, ts) in groups {
            spawn_replicate(
                &c.link,
                &to,
                c.ring.epoch(),
                &ts,
                &[],
                Some((myself, target)),
            );
        }
    }

    /// Copies sent on: acknowledged ones are dropped here (unless this node is their
    /// replica now), failed ones are sent again after a pause.
    pub(super) fn on_copies_sent(&mut self, ids: Vec<TraceId>, target: CopyTarget, placed: bool) {
        let now = self.now();
        let Some(c) = &mut self.cluster else { return };
        let Some(r) = c.replication.as_mut() else {
            return;
        };
        if placed {
            let ring = &c.ring;
            let unneeded: Vec<TraceId> = ids
                .into_iter()
                .filter(|id| ring.replica(id) != Some(c.local.as_str()))
                .collect();
            self.shard.drop_copies(&unneeded);
        } else {
            r.unplaced.extend(ids.into_iter().map(|id| (id, target)));
            r.place_at.get_or_insert(now + HANDOFF_RETRY_PAUSE);
        }
    }

    /// Sends again the copies whose send failed, once their pause is over, to their target
    /// at the ring of now (promoted instead if this node owns them now; kept if it is their
    /// replica).
    pub(super) async fn place_copies_again(&mut self, myself: &ActorRef<ShardMsg>) {
        let now = self.now();
        let Some(c) = &mut self.cluster else { return };
        let Some(r) = c.replication.as_mut() else {
            return;
        };
        if r.place_at.is_none_or(|at| at > now) {
            return;
        }
        r.place_at = None;
        let pending = std::mem::take(&mut r.unplaced);
        let (ring, local) = (Arc::clone(&c.ring), c.local.clone());
        let owns =
            |id: &TraceId| pending.contains_key(id) && ring.owner(id) == Some(local.as_str());
        let (released, promoted) = self.shard.promote_replicas(now, TAKEOVER_HOLD, &owns);
        let promoted: BTreeSet<TraceId> = promoted.into_iter().collect();
        for target in [CopyTarget::Owner, CopyTarget::Replica] {
            let due = |id: &TraceId| {
                pending.get(id) == Some(&target)
                    && ring.owner(id).is_some_and(|o| o != local)
                    && ring.replica(id) != Some(local.as_str())
            };
            self.send_copies(myself, target, &due);
        }
        self.copy_owned_to_replicas(now, &|id| promoted.contains(id));
        self.deliver(released).await;
    }

    /// Remembers what a ring change (`old` → the shard's ring) moved here, for
    /// [`ShardState::ingest_owned`].
    pub(super) fn note_ring_change(&mut self, old: &Arc<Ring>, now: Duration) {
        let Some(r) = self.cluster.as_mut().and_then(|c| c.replication.as_mut()) else {
            return;
        };
        r.moved_in = Some(MovedIn {
            before: Arc::clone(old),
            window_end: now + KEPT_DECISION_DELAY,
            hold_until: now + TAKEOVER_HOLD,
        });
    }

    /// Buffers spans this node owns. With replication, a trace the last ring change moved
    /// here that starts within [`KEPT_DECISION_DELAY`] of the change is decided no earlier
    /// than the change plus [`TAKEOVER_HOLD`]: its previous owner may have kept it just
    /// before, and withholds that decision while its export may still be in its process
    /// (`handoff.rs`); deciding these spans alone in the meantime would export them apart
    /// from the decision they follow, or drop spans of a kept trace. `copied`: the spans
    /// came as replica copies, maybe released by their sender already (see
    /// `TraceShard::ingest_moved`).
    pub(super) fn ingest_owned(
        &mut self,
        spans: Vec<EncodedSpan>,
        now: Duration,
        copied: bool,
    ) -> Released {
        let moved = self.cluster.as_ref().and_then(|c| {
            let m = c.replication.as_ref()?.moved_in.as_ref()?;
            (now < m.window_end).then_some((c, m))
        });
        let held: Vec<(TraceId, Duration)> = match moved {
            Some((c, m)) => spans
                .iter()
                .map(|s| s.meta.trace_id)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|id| {
                    m.before.owner(id).is_some_and(|o| o != c.local) && !self.shard.buffers(id)
                })
                .map(|id| (id, m.hold_until))
                .collect(),
            None => Vec::new(),
        };
        let released = if copied {
            self.shard.ingest_moved(spans, now, TAKEOVER_HOLD)
        } else {
            self.shard.ingest(spans, now)
        };
        for (id, at) in held {
            self.shard.hold(&id, at);
        }
        released
    }

    /// Traces a failed handoff brought back (this node does not own them): a copy goes to
    /// their replica at the shard's ring, so they outlive this node should it go before
    /// the handoff is retried (a leaving member whose new owner crashed).
    pub(super) fn copy_returned_to_replicas(&self, now: Duration, ids: &BTreeSet<TraceId>) {
        let Some(c) = &self.cluster else { return };
        if !c.replicating() || ids.is_empty() {
            return;
        }
        let copies = self.shard.copy_traces(now, &|id| ids.contains(id));
        let mut groups = by_replica(&c.ring, copies, |t| t.trace_id);
        groups.remove(&c.local);
        for (replica, ts) in groups {
            spawn_replicate(&c.link, &replica, c.ring.epoch(), &ts, &[], None);
        }
    }

    /// Copies the owned traces `select` picks to their replicas at the shard's ring.
    pub(super) fn copy_owned_to_replicas(&self, now: Duration, select: &dyn Fn(&TraceId) -> bool) {
        let Some(c) = &self.cluster else { return };
        let copies = self.shard.copy_traces(now, select);
        for (replica, ts) in by_replica(&c.ring, copies, |t| t.trace_id) {
            spawn_replicate(&c.link, &replica, c.ring.epoch(), &ts, &[], None);
        }
    }
}

impl ShardCluster {
    /// Whether this shard sends copies and decisions to replicas.
    pub(super) fn replicating(&self) -> bool {
        self.replication.is_some()
    }
}

/// Raises the degraded gauge (and says so once) while replication has nobody to copy to.
pub(super) fn report_degraded(ring: &Ring, degraded: &mut bool) {
    let now = !ring.is_empty() && ring.owners().len() < 2;
    if now != *degraded {
        if now {
            tracing::warn!(
                epoch = ring.epoch(),
                "replication_factor 2 with a single owner: buffered traces have no replica until another gateway joins"
            );
        } else {
            tracing::info!(
                epoch = ring.epoch(),
                "replication restored: every trace has a replica"
            );
        }
        *degraded = now;
    }
    gauge!(REPLICATION_DEGRADED).set(if now { 1.0 } else { 0.0 });
}
