//! The gateway cluster: membership agreed through Raft (`openraft`), the ring every node and
//! agent routes by, forwarding of spans to their owner, and handoff of buffered traces when
//! the ring changes. See `docs/cluster.md` for the protocol and its guarantees.
//!
//! - [`raft`]: type config, in-memory log and state machine over `tailgate_ring::ClusterState`.
//! - [`network`]: channels per peer over the pipeline's `Network` seam, openraft's RPCs over gRPC.
//! - [`node`]: [`ClusterNode`] — bootstrap/join, leader duties, admin, leaving, and the
//!   `ClusterLink` the tail-sampling engine routes through.
//! - [`delivery`]: [`Delivery`], what the node delivers forwarded spans and handoffs to.
//! - [`server`]: the `Cluster` and `RingWatch` gRPC services.
//! - [`transfer`]: forward and handoff messages (spans stay encoded).

/// The cluster's wire protocol (generated in `tailgate-proto`).
pub use tailgate_proto::cluster as proto;

pub mod delivery;
mod error;
pub mod gateway;
pub mod network;
pub mod node;
pub mod raft;
pub mod server;
pub mod transfer;

pub use delivery::Delivery;
pub use error::ClusterError;
pub use node::{ClusterNode, ClusterSettings, WallClock, system_wall_clock};

/// The epoch this node routes by.
pub const CLUSTER_EPOCH: &str = "tailgate_cluster_epoch";
/// Members owning ring ranges at this node's epoch.
pub const CLUSTER_OWNERS: &str = "tailgate_cluster_owners";
/// Times this node found itself removed (after being unreachable) and rejoined.
pub const CLUSTER_REJOINS: &str = "tailgate_cluster_rejoins_total";
/// Members the leader removed (`reason`: timeout).
pub const CLUSTER_MEMBERS_REMOVED: &str = "tailgate_cluster_members_removed_total";
/// Traces, spans and decisions this node handed off (acknowledged by the receiver).
pub const CLUSTER_HANDOFF_SENT_TRACES: &str = "tailgate_cluster_handoff_sent_traces_total";
pub const CLUSTER_HANDOFF_SENT_SPANS: &str = "tailgate_cluster_handoff_sent_spans_total";
pub const CLUSTER_HANDOFF_SENT_DECISIONS: &str = "tailgate_cluster_handoff_sent_decisions_total";
/// Traces this node received by handoff.
pub const CLUSTER_HANDOFF_RECEIVED_TRACES: &str = "tailgate_cluster_handoff_received_traces_total";
