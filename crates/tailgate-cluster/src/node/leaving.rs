//! A graceful leave: step down if leading, become Leaving (a new epoch without this node, so
//! the engine hands its traces off), then be removed — each step through whoever leads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tailgate_ring::MemberState;
use tokio::time::Instant;

use super::{ADMIN_TIMEOUT_MS, ClusterNode};
use crate::error::ClusterError;
use crate::proto::{AdminReply, LeaveRequest};

/// Pause between calls to the leader, plus up to [`LEADER_RETRY_JITTER_MS`].
const LEADER_RETRY_MS: u64 = 100;
const LEADER_RETRY_JITTER_MS: u64 = 100;
/// How often a leader handing leadership over checks whether it is still the leader.
const STEP_DOWN_POLL_MS: u64 = 20;

type ClusterClient = crate::proto::cluster_client::ClusterClient<tonic::transport::Channel>;

impl ClusterNode {
    /// Calls the leader (following hints) until `f` succeeds or `deadline`.
    async fn call_leader<F, Fut>(&self, deadline: Instant, f: F) -> Result<AdminReply, ClusterError>
    where
        F: Fn(ClusterClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<AdminReply>, tonic::Status>>,
    {
        let mut last = ClusterError::NoLeader;
        while Instant::now() < deadline {
            let target = self.leader().await.map(|(_, addr)| addr);
            if let Some(addr) = target
                && let Ok(client) = self.inner.peers.client(&addr)
            {
                match tokio::time::timeout(Duration::from_millis(ADMIN_TIMEOUT_MS), f(client)).await
                {
                    Ok(Ok(r)) if r.get_ref().ok => return Ok(r.into_inner()),
                    Ok(Ok(r)) => last = ClusterError::Refused(r.into_inner().message),
                    Ok(Err(e)) => last = ClusterError::peer(&addr, e.message()),
                    Err(_) => last = ClusterError::timeout(&addr, ADMIN_TIMEOUT_MS),
                }
            }
            tokio::time::sleep(
                Duration::from_millis(LEADER_RETRY_MS) + self.jitter(LEADER_RETRY_JITTER_MS),
            )
            .await;
        }
        Err(last)
    }

    /// Graceful leave, step one: hand leadership to another voter if this node leads, and
    /// mark this node Leaving (a new epoch without it). Returns once this node applied
    /// that epoch, so its engine is already handing its traces off.
    pub async fn start_leaving(&self, deadline: Instant) -> Result<(), ClusterError> {
        self.inner.leaving.store(true, Ordering::Release);
        if !self.is_member() {
            return Ok(());
        }
        self.step_down(deadline).await;
        let raft_id = self.inner.raft_id;
        let reply = self
            .call_leader(deadline, |mut c| async move {
                c.leave(LeaveRequest {
                    raft_id,
                    remove: false,
                })
                .await
            })
            .await?;
        self.catch_up(reply.epoch).await;
        Ok(())
    }

    /// Graceful leave, last step: remove this node from the cluster.
    pub async fn finish_leaving(&self, deadline: Instant) -> Result<(), ClusterError> {
        if !self.is_member() {
            return Ok(());
        }
        self.step_down(deadline).await;
        let raft_id = self.inner.raft_id;
        self.call_leader(deadline, |mut c| async move {
            c.leave(LeaveRequest {
                raft_id,
                remove: true,
            })
            .await
        })
        .await
        .map(|_| ())
    }

    /// If this node leads and another voter exists, transfers leadership to it: to an Active
    /// voter that acknowledged a heartbeat most recently. A voter that is itself leaving, or
    /// restarting, would hand the cluster a leader that is about to go (the simulator found a
    /// crash plus two overlapping leaves ending leaderless that way).
    async fn step_down(&self, deadline: Instant) {
        use openraft_rt::watch::WatchReceiver as _;
        let raft = &self.inner.raft;
        if !self.is_leader() {
            return;
        }
        let me = self.inner.raft_id;
        let state = self.state();
        let heartbeats = raft.metrics().borrow_watched().heartbeat.clone();
        let acked = |id: &u64| {
            heartbeats
                .as_ref()
                .and_then(|h| h.get(id).copied().flatten())
        };
        let active = |id: &u64| {
            state
                .members
                .get(id)
                .is_some_and(|m| m.state == MemberState::Active)
        };
        let others: Vec<u64> = raft.voter_ids().filter(|v| *v != me).collect();
        let to = others
            .iter()
            .filter(|v| active(v))
            .max_by_key(|v| acked(v))
            .or_else(|| others.iter().max_by_key(|v| acked(v)))
            .copied();
        let Some(to) = to else {
            return;
        };
        if let Err(e) = raft.trigger().transfer_leader(to).await {
            tracing::warn!(error = %e, "cannot transfer leadership");
            return;
        }
        while self.is_leader() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(STEP_DOWN_POLL_MS)).await;
        }
    }
}
