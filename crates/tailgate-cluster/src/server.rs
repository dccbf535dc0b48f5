//! The gRPC services a gateway serves: `Cluster` (Raft, membership, forward, handoff, admin)
//! on its cluster address, and `RingWatch` there and on its OTLP port.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tailgate_pipeline::consumer::ConsumeError;
use tailgate_ring::{MemberState, VNODES_PER_MEMBER};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::network::MESSAGE_BYTES_MAX;
use crate::node::ClusterNode;
use crate::proto::cluster_server::{Cluster, ClusterServer};
use crate::proto::ring_watch_server::{RingWatch, RingWatchServer};
use crate::proto::*;
use crate::raft::{TypeConfig, decode, encode};
use crate::transfer;

/// Ring placement scheme agents must implement to route by a `RingUpdate`.
pub const PLACEMENT: &str = "tailgate-ring-v1";

pub struct ClusterService {
    node: ClusterNode,
}

pub fn cluster_service(node: ClusterNode) -> ClusterServer<ClusterService> {
    ClusterServer::new(ClusterService { node })
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

pub fn ring_watch_service(node: ClusterNode) -> RingWatchServer<RingWatchService> {
    RingWatchServer::new(RingWatchService { node })
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn engine_error(e: ConsumeError) -> Status {
    match e {
        ConsumeError::Refused { reason, .. } => {
            Status::resource_exhausted(format!("refused: {reason}"))
        }
        other => Status::unavailable(other.to_string()),
    }
}

impl ClusterService {
    fn delivery(&self) -> Result<Arc<dyn crate::Delivery>, Status> {
        self.node
            .delivery()
            .ok_or_else(|| Status::unavailable("this gateway's sampling engine is not running"))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        if req.target != self.node.raft_id() {
            // A restarted node at the same address must not answer for its predecessor.
            return Err(Status::failed_precondition(format!(
                "this is raft id {}, not {}",
                self.node.raft_id(),
                req.target
            )));
        }
        let raft = &self.node.inner.raft;
        let internal = |e: &dyn std::fmt::Display| Status::unavailable(e.to_string());
        let payload = match RaftRpc::try_from(req.rpc).unwrap_or(RaftRpc::Unspecified) {
            RaftRpc::Append => {
                let r: AppendEntriesRequest<TypeConfig> = decode(&req.payload).map_err(bad)?;
                encode(&raft.append_entries(r).await.map_err(|e| internal(&e))?)
            }
            RaftRpc::Vote => {
                let r: VoteRequest<TypeConfig> = decode(&req.payload).map_err(bad)?;
                encode(&raft.vote(r).await.map_err(|e| internal(&e))?)
            }
            RaftRpc::PreVote => {
                let r: VoteRequest<TypeConfig> = decode(&req.payload).map_err(bad)?;
                encode(&raft.pre_vote(r).await.map_err(|e| internal(&e))?)
            }
            RaftRpc::Snapshot => {
                type Snap = (
                    openraft::alias::VoteOf<TypeConfig>,
                    openraft::alias::SnapshotMetaOf<TypeConfig>,
                    Vec<u8>,
                );
                let (vote, meta, data): Snap = decode(&req.payload).map_err(bad)?;
                let snapshot = openraft::alias::SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta,
                    snapshot: data,
                };
                encode(
                    &raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| internal(&e))?,
                )
            }
            RaftRpc::TransferLeader => {
                let r: TransferLeaderRequest<TypeConfig> = decode(&req.payload).map_err(bad)?;
                encode(
                    &raft
                        .handle_transfer_leader(r)
                        .await
                        .map_err(|e| internal(&e))?,
                )
            }
            RaftRpc::Unspecified => return Err(bad(format!("unknown raft rpc {}", req.rpc))),
        };
        Ok(Response::new(RaftReply { payload }))
    }

    async fn discover(
        &self,
        _request: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverReply>, Status> {
        Ok(Response::new(self.node.discover().await))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<AdminReply>, Status> {
        let req = request.into_inner();
        if req.name.is_empty() || req.cluster_addr.is_empty() || req.raft_id == 0 {
            return Err(bad(
                "join needs a name, a cluster address and a non-zero raft id",
            ));
        }
        Ok(Response::new(self.node.handle_join(req).await))
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<AdminReply>, Status> {
        Ok(Response::new(
            self.node.handle_leave(request.into_inner()).await,
        ))
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let req = request.into_inner();
        let delivery = self.delivery()?;
        self.node.catch_up(req.epoch).await;
        let hops = req.hops;
        let spans = transfer::forwarded_spans(req).map_err(bad)?;
        delivery
            .forwarded(spans, hops)
            .await
            .map_err(engine_error)?;
        Ok(Response::new(ForwardReply {
            epoch: self.node.ring_now().epoch(),
        }))
    }

    async fn handoff(
        &self,
        request: Request<HandoffRequest>,
    ) -> Result<Response<HandoffReply>, Status> {
        let req = request.into_inner();
        let delivery = self.delivery()?;
        self.node.catch_up(req.epoch).await;
        let (traces, decisions) = transfer::handoff_contents(req).map_err(bad)?;
        let n = traces.len() as u32;
        delivery
            .handed_off(traces, decisions)
            .await
            .map_err(engine_error)?;
        metrics::counter!(crate::CLUSTER_HANDOFF_RECEIVED_TRACES).increment(u64::from(n));
        Ok(Response::new(HandoffReply {
            epoch: self.node.ring_now().epoch(),
            traces_accepted: n,
        }))
    }

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateReply>, Status> {
        let req = request.into_inner();
        let delivery = self.delivery()?;
        let epoch = req.epoch;
        let copy = transfer::replica_copy(req).map_err(bad)?;
        delivery
            .replicated(epoch, copy)
            .await
            .map_err(engine_error)?;
        Ok(Response::new(ReplicateReply {
            epoch: self.node.ring_now().epoch(),
        }))
    }

    async fn node_status(
        &self,
        _request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(self.node.node_status().await))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let state = self.node.state();
        let leader = self.node.leader().await;
        let leader_name = leader
            .and_then(|(id, _)| state.members.get(&id).map(|m| m.name.clone()))
            .unwrap_or_default();
        let members: Vec<_> = state.members.values().cloned().collect();
        let statuses = join_all(members.iter().map(|m| {
            let node = self.node.clone();
            let m = m.clone();
            async move {
                if m.raft_id == node.raft_id() {
                    return Some(node.node_status().await);
                }
                let mut c = node.inner.peers.client(&m.cluster_addr).ok()?;
                tokio::time::timeout(Duration::from_secs(2), c.node_status(NodeStatusRequest {}))
                    .await
                    .ok()?
                    .ok()
                    .map(Response::into_inner)
            }
        }))
        .await;
        let now = (self.node.inner.wall_clock)();
        let sampling = state.sampling.as_ref().filter(|o| o.expires_unix_ms > now);
        Ok(Response::new(StatusReply {
            epoch: state.epoch,
            leader: leader_name,
            members: members
                .into_iter()
                .zip(statuses)
                .map(|(m, s)| MemberStatus {
                    name: m.name,
                    raft_id: m.raft_id,
                    cluster_addr: m.cluster_addr,
                    otlp_addr: m.otlp_addr,
                    state: m.state.label().to_string(),
                    reachable: s.is_some(),
                    node: s,
                })
                .collect(),
            sampling_active: sampling.is_some(),
            sampling_percent: sampling.map_or(0.0, |o| o.probabilistic_percent),
            sampling_expires_in_ms: sampling.map_or(0, |o| o.expires_unix_ms - now),
        }))
    }

    async fn set_sampling(
        &self,
        request: Request<SetSamplingRequest>,
    ) -> Result<Response<AdminReply>, Status> {
        let reply = self.node.handle_set_sampling(request.into_inner()).await;
        if !reply.ok && reply.message.contains("must") {
            return Err(bad(reply.message));
        }
        Ok(Response::new(reply))
    }

    async fn clear_sampling(
        &self,
        request: Request<ClearSamplingRequest>,
    ) -> Result<Response<AdminReply>, Status> {
        Ok(Response::new(
            self.node.handle_clear_sampling(request.into_inner()).await,
        ))
    }
}

pub struct RingWatchService {
    node: ClusterNode,
}

fn ring_update(node: &ClusterNode, ring: &tailgate_ring::Ring) -> RingUpdate {
    let state = node.state();
    RingUpdate {
        epoch: ring.epoch(),
        owners: ring
            .owners()
            .iter()
            .filter_map(|name| {
                state
                    .member_by_name(name)
                    .filter(|m| m.state == MemberState::Active)
            })
            .map(|m| RingMember {
                name: m.name.clone(),
                otlp_addr: m.otlp_addr.clone(),
                cluster_addr: m.cluster_addr.clone(),
            })
            .collect(),
        placement: PLACEMENT.to_string(),
        vnodes: VNODES_PER_MEMBER,
    }
}

#[tonic::async_trait]
impl RingWatch for RingWatchService {
    type WatchRingStream = Pin<Box<dyn Stream<Item = Result<RingUpdate, Status>> + Send>>;

    async fn watch_ring(
        &self,
        _request: Request<WatchRingRequest>,
    ) -> Result<Response<Self::WatchRingStream>, Status> {
        let node = self.node.clone();
        let mut ring = node.inner.ring.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut leaving_check = tokio::time::interval(LEAVING_CHECK);
            loop {
                let update = {
                    let r = ring.borrow_and_update();
                    ring_update(&node, &r)
                };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                // A leaving gateway ends its streams after the ring without it went out, so
                // agents subscribe elsewhere and its server can stop (an open stream would
                // hold graceful shutdown until its deadline).
                loop {
                    if node.inner.leaving.load(Ordering::Acquire) {
                        return;
                    }
                    tokio::select! {
                        changed = ring.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break;
                        }
                        _ = leaving_check.tick() => {}
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// How often an idle `WatchRing` stream checks whether this gateway started leaving.
const LEAVING_CHECK: Duration = Duration::from_millis(200);

/// A stream fed by a task through a small channel (so a slow agent holds one update, not a
/// backlog: it always receives the newest ring next).
fn async_stream<F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = Result<RingUpdate, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<RingUpdate, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
