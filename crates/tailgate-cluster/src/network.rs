//! Talking to peers: channels per address over the pipeline's `Network` seam (TCP in
//! production, the simulator's network under test), and openraft's network over our
//! `Cluster` gRPC service.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};
use openraft::{BasicNode, RaftNetworkV2};
use tailgate_pipeline::net::Network;
use tonic::transport::{Channel, Endpoint};

use crate::proto::cluster_client::ClusterClient;
use crate::proto::{RaftRequest, RaftRpc};
use crate::raft::{TypeConfig, decode, encode};

/// Largest cluster message (a handoff chunk is far smaller; this is the hard ceiling).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// HTTP/2 ping interval (and ping timeout) on cluster connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a peer may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Shortest wait for a Raft reply. openraft asks for the heartbeat interval (100 ms) as the
/// timeout of replication and 200 ms for snapshots, so a peer whose round trip is longer never
/// acknowledges anything: under 128 ms of one-way latency the simulator saw a gateway's join
/// stall for 4.6 s while every append timed out, and the spans it held meanwhile were decided
/// too late. Heartbeats stay bounded by openraft itself (the interval); the floor lets
/// replication, snapshots and votes complete on a slow link.
const RAFT_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// Plain HTTP/2 (no TLS) on the cluster network.
fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    // HTTP/2 keepalive: a connection left half-open by a partition is noticed within
    // seconds and replaced, instead of swallowing every later call until it times out.
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true))
}

/// One lazily connected channel per peer address, shared by every caller.
#[derive(Clone)]
pub struct Peers {
    network: Arc<dyn Network>,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl Peers {
    pub fn new(network: Arc<dyn Network>) -> Peers {
        Peers {
            network,
            channels: Arc::default(),
        }
    }

    pub fn client(&self, addr: &str) -> Result<ClusterClient<Channel>, tonic::Status> {
        let mut channels = self.channels.lock().expect("not poisoned");
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let e = endpoint(addr).map_err(|e| {
                    tonic::Status::invalid_argument(format!("peer address {addr:?}: {e}"))
                })?;
                let c = self.network.channel(e);
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(ClusterClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }
}

/// openraft's network factory: one [`PeerRaft`] per target.
pub struct RaftNetwork {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for RaftNetwork {
    type Network = PeerRaft;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerRaft {
        PeerRaft {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft RPCs to one peer, as `Cluster/Raft` calls carrying bincode payloads.
pub struct PeerRaft {
    target: u64,
    addr: String,
    peers: Peers,
}

impl PeerRaft {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        rpc: RaftRpc,
        req: &Req,
        option: RPCOption,
    ) -> Result<Resp, Unreachable<TypeConfig>> {
        let timeout = option.soft_ttl().max(RAFT_TIMEOUT_MIN);
        let unreachable = |e: &dyn std::fmt::Display| {
            Unreachable::<TypeConfig>::from_string(format!("{}: {e}", self.addr))
        };
        let mut client = self.peers.client(&self.addr).map_err(|e| unreachable(&e))?;
        let request = RaftRequest {
            target: self.target,
            rpc: rpc as i32,
            payload: encode(req),
        };
        let reply = tokio::time::timeout(timeout, client.raft(request))
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        decode(&reply.into_inner().payload).map_err(|e| unreachable(&e))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerRaft {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(RaftRpc::Append, &rpc, option).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(RaftRpc::Vote, &rpc, option).await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(RaftRpc::PreVote, &rpc, option).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // The cluster state is small (members and settings): one message carries it all.
        let req = (vote, snapshot.meta, snapshot.snapshot);
        Ok(self.call(RaftRpc::Snapshot, &req, option).await?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(RaftRpc::TransferLeader, &req, option).await?)
    }
}
