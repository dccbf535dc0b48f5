//! The leader's duties: admit joiners (learner first, voter while there are fewer than
//! [`VOTERS_MAX`]), activate them together after the debounce, mark leavers and remove them,
//! and remove members that stopped answering.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use openraft::{BasicNode, ChangeMembers};
use tailgate_ring::{Applied, ClusterState, Command, Member, MemberState};
use tokio::time::Instant;

use super::admin::{admin_err, admin_ok};
use super::{ClusterNode, VOTERS_MAX, applied_epoch};
use crate::error::ClusterError;
use crate::proto::{AdminReply, JoinRequest, LeaveRequest, NodeStatusRequest};

/// How often the leader looks at joiners and health.
const LEADER_TICK_MS: u64 = 100;
/// How often the leader pings every other member (and how long a ping may take).
const HEALTH_INTERVAL_MS: u64 = 500;

impl ClusterNode {
    /// Leader: adds a member (learner first, so it catches up before it votes or owns).
    pub async fn handle_join(&self, req: JoinRequest) -> AdminReply {
        if let Some(r) = self.not_leader_reply().await {
            return r;
        }
        let _one_change_at_a_time = self.inner.membership.lock().await;
        let raft = &self.inner.raft;
        let node = BasicNode {
            addr: req.cluster_addr.clone(),
        };
        if let Err(e) = raft.add_learner(req.raft_id, node, true).await {
            return admin_err(format!("cannot add {} as learner: {e}", req.name));
        }
        // An older incarnation of the same name leaves Raft's membership with it.
        let old: Vec<u64> = self
            .state()
            .members
            .values()
            .filter(|m| m.name == req.name && m.raft_id != req.raft_id)
            .map(|m| m.raft_id)
            .collect();
        for id in old {
            if let Err(e) = self.remove_from_raft(id).await {
                return admin_err(format!(
                    "cannot remove the old incarnation of {}: {e}",
                    req.name
                ));
            }
        }
        let member = Member {
            name: req.name,
            raft_id: req.raft_id,
            cluster_addr: req.cluster_addr,
            otlp_addr: req.otlp_addr,
            state: MemberState::Joining,
        };
        match self.write(Command::Join(member)).await {
            Ok(Applied::Refused { reason }) => return admin_err(reason),
            Err(e) => return admin_err(e),
            Ok(_) => {}
        }
        if raft.voter_ids().count() < VOTERS_MAX {
            let add = ChangeMembers::AddVoterIds(BTreeSet::from([req.raft_id]));
            if let Err(e) = raft.change_membership(add, false).await {
                tracing::warn!(error = %e, "cannot promote the new member to voter; it stays a learner");
            }
        }
        admin_ok(self.inner.state.borrow().epoch)
    }

    async fn remove_from_raft(&self, raft_id: u64) -> Result<(), ClusterError> {
        let raft = &self.inner.raft;
        if raft.voter_ids().all(|v| v == raft_id) {
            // The last voter: the cluster ends with it; Raft cannot have an empty membership.
            return Ok(());
        }
        let change = if raft.voter_ids().any(|v| v == raft_id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([raft_id]))
        } else if raft.learner_ids().any(|v| v == raft_id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([raft_id]))
        } else {
            return Ok(());
        };
        raft.change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(ClusterError::raft)
    }

    /// Leader: a member starts leaving (`remove = false`) or is gone (`remove = true`).
    pub async fn handle_leave(&self, req: LeaveRequest) -> AdminReply {
        if let Some(r) = self.not_leader_reply().await {
            return r;
        }
        let _one_change_at_a_time = self.inner.membership.lock().await;
        let cmd = if req.remove {
            if let Err(e) = self.remove_from_raft(req.raft_id).await {
                return admin_err(format!("cannot remove {} from Raft: {e}", req.raft_id));
            }
            self.promote_learners().await;
            Command::Remove {
                raft_id: req.raft_id,
            }
        } else {
            Command::Leave {
                raft_id: req.raft_id,
            }
        };
        match self.write(cmd).await {
            Ok(a) => admin_ok(applied_epoch(&a)),
            Err(e) => admin_err(e),
        }
    }

    /// Keeps up to [`VOTERS_MAX`] voters when members left.
    async fn promote_learners(&self) {
        let raft = &self.inner.raft;
        let voters = raft.voter_ids().count();
        let learners: Vec<u64> = raft.learner_ids().collect();
        let promote: BTreeSet<u64> = learners
            .into_iter()
            .take(VOTERS_MAX.saturating_sub(voters))
            .collect();
        if !promote.is_empty()
            && let Err(e) = raft
                .change_membership(ChangeMembers::AddVoterIds(promote), false)
                .await
        {
            tracing::warn!(error = %e, "cannot promote learners");
        }
    }
}

/// The leader's periodic work: activate joiners after the debounce (unless leaving); remove
/// members that answered no ping for `member_timeout`.
pub(super) async fn leader_duties(node: ClusterNode) {
    let mut joining_since: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut last_ok: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut next_health = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(LEADER_TICK_MS)).await;
        if !node.is_leader() {
            joining_since.clear();
            last_ok.clear();
            continue;
        }
        let now = Instant::now();
        let state = node.state();
        // A leader that is leaving admits nobody (it hands leadership over), but keeps
        // removing crashed members until it does: a crash during its leave must not leave
        // the dead member owning ring ranges nobody serves.
        if node.inner.leaving.load(Ordering::Acquire) {
            joining_since.clear();
        } else {
            activate_joiners(&node, &state, &mut joining_since, now).await;
        }
        if now >= next_health {
            next_health = now + Duration::from_millis(HEALTH_INTERVAL_MS);
            remove_silent_members(&node, &state, &mut last_ok, now).await;
        }
    }
}

/// Activates every Joining member together, once the newest waited the debounce (or the
/// oldest waited twice that), so a burst of joins is one ring change.
async fn activate_joiners(
    node: &ClusterNode,
    state: &ClusterState,
    joining_since: &mut BTreeMap<u64, Instant>,
    now: Instant,
) {
    let debounce = node.inner.settings.ring_debounce;
    joining_since.retain(|id, _| {
        state
            .members
            .get(id)
            .is_some_and(|m| m.state == MemberState::Joining)
    });
    for m in state
        .members
        .values()
        .filter(|m| m.state == MemberState::Joining)
    {
        joining_since.entry(m.raft_id).or_insert(now);
    }
    let (Some(newest), Some(oldest)) = (
        joining_since.values().max().copied(),
        joining_since.values().min().copied(),
    ) else {
        return;
    };
    if now.duration_since(newest) >= debounce || now.duration_since(oldest) >= 2 * debounce {
        let ids: Vec<u64> = joining_since.keys().copied().collect();
        match node.write(Command::Activate { raft_ids: ids }).await {
            Ok(a) => tracing::info!(result = %a, "activated joining members"),
            Err(e) => tracing::warn!(error = %e, "cannot activate joining members"),
        }
    }
}

/// Pings every other member; removes those silent for `member_timeout`.
async fn remove_silent_members(
    node: &ClusterNode,
    state: &ClusterState,
    last_ok: &mut BTreeMap<u64, Instant>,
    now: Instant,
) {
    let others: Vec<Member> = state
        .members
        .values()
        .filter(|m| m.raft_id != node.inner.raft_id)
        .cloned()
        .collect();
    last_ok.retain(|id, _| state.members.contains_key(id));
    let pings = join_all(others.iter().map(|m| {
        let peers = node.inner.peers.clone();
        let addr = m.cluster_addr.clone();
        async move {
            let Ok(mut c) = peers.client(&addr) else {
                return false;
            };
            matches!(
                tokio::time::timeout(
                    Duration::from_millis(HEALTH_INTERVAL_MS),
                    c.node_status(NodeStatusRequest {})
                )
                .await,
                Ok(Ok(_))
            )
        }
    }))
    .await;
    for (m, ok) in others.iter().zip(pings) {
        let seen = last_ok.entry(m.raft_id).or_insert(now);
        if ok {
            *seen = now;
        } else if now.duration_since(*seen) >= node.inner.settings.member_timeout {
            tracing::warn!(member = %m.name, raft_id = m.raft_id, "member stopped answering; removing it (its buffered traces are lost)");
            metrics::counter!(crate::CLUSTER_MEMBERS_REMOVED, "reason" => "timeout").increment(1);
            let reply = node
                .handle_leave(LeaveRequest {
                    raft_id: m.raft_id,
                    remove: true,
                })
                .await;
            if !reply.ok {
                tracing::warn!(member = %m.name, error = %reply.message, "cannot remove member");
            }
        }
    }
}
