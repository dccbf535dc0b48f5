//! Operators' writes (the cluster-wide sampling override) and this node's status. A write
//! received by a follower is relayed to the leader.

use std::time::Duration;

use tailgate_ring::{Command, SamplingOverride};

use super::{ADMIN_TIMEOUT_MS, ClusterNode, applied_epoch};
use crate::proto::{AdminReply, ClearSamplingRequest, NodeStatus, SetSamplingRequest};

pub(super) fn admin_ok(epoch: u64) -> AdminReply {
    AdminReply {
        ok: true,
        epoch,
        ..Default::default()
    }
}

pub(super) fn admin_err(message: impl ToString) -> AdminReply {
    AdminReply {
        ok: false,
        message: message.to_string(),
        ..Default::default()
    }
}

impl ClusterNode {
    /// `None` if this node leads; otherwise the reply that points at the leader.
    pub(super) async fn not_leader_reply(&self) -> Option<AdminReply> {
        if self.is_leader() {
            return None;
        }
        let hint = self.leader().await.map(|(_, a)| a).unwrap_or_default();
        Some(AdminReply {
            ok: false,
            message: "not the leader".into(),
            leader_addr: hint,
            epoch: self.inner.state.borrow().epoch,
        })
    }

    pub async fn handle_set_sampling(&self, req: SetSamplingRequest) -> AdminReply {
        if !(0.0..=100.0).contains(&req.probabilistic_percent) {
            return admin_err(format!(
                "probabilistic percent must be within 0..=100, got {}",
                req.probabilistic_percent
            ));
        }
        if req.duration_ms == 0 {
            return admin_err("duration must be positive");
        }
        let cmd = Command::SetSampling(SamplingOverride {
            probabilistic_percent: req.probabilistic_percent,
            expires_unix_ms: (self.inner.wall_clock)().saturating_add(req.duration_ms),
        });
        self.admin_write(cmd).await
    }

    pub async fn handle_clear_sampling(&self, _req: ClearSamplingRequest) -> AdminReply {
        self.admin_write(Command::ClearSampling).await
    }

    /// Writes an operator's command through the leader, wherever it was received.
    async fn admin_write(&self, cmd: Command) -> AdminReply {
        if self.is_leader() {
            return match self.write(cmd).await {
                Ok(a) => admin_ok(applied_epoch(&a)),
                Err(e) => admin_err(e),
            };
        }
        let Some((_, addr)) = self.leader().await else {
            return admin_err("the cluster has no leader right now; retry");
        };
        let mut client = match self.inner.peers.client(&addr) {
            Ok(c) => c,
            Err(e) => return admin_err(e.message()),
        };
        let call = async {
            match cmd {
                Command::SetSampling(o) => {
                    let now = (self.inner.wall_clock)();
                    client
                        .set_sampling(SetSamplingRequest {
                            probabilistic_percent: o.probabilistic_percent,
                            duration_ms: o.expires_unix_ms.saturating_sub(now),
                        })
                        .await
                }
                _ => client.clear_sampling(ClearSamplingRequest {}).await,
            }
        };
        match tokio::time::timeout(Duration::from_millis(ADMIN_TIMEOUT_MS), call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => admin_err(format!("leader at {addr}: {}", e.message())),
            Err(_) => admin_err(format!("leader at {addr} did not answer")),
        }
    }

    /// This node's buffers.
    pub async fn node_status(&self) -> NodeStatus {
        let buffered = match self.delivery() {
            Some(d) => d.buffered().await,
            None => Default::default(),
        };
        let state = self.state();
        NodeStatus {
            name: self.inner.settings.name.clone(),
            epoch: state.epoch,
            buffered_traces: buffered.traces + buffered.in_flight,
            buffered_spans: buffered.spans,
            buffered_bytes: buffered.bytes,
            state: state
                .members
                .get(&self.inner.raft_id)
                .map_or("not a member", |m| m.state.label())
                .to_string(),
        }
    }
}
