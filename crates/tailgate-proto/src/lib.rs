//! Tailgate's own gRPC protocols, generated at build time from `proto/` (protox, so no
//! `protoc` to install). A crate of its own so that a client — the agent's ring watch — needs
//! only the messages and stubs, not the cluster that serves them (and its Raft).

/// `tailgate.cluster.v1`: the gateways' `Cluster` service (Raft RPCs, forwarding, handoff,
/// admin) and the `RingWatch` service agents subscribe to.
pub mod cluster {
    #![allow(clippy::all, clippy::pedantic, unused_qualifications)]
    tonic::include_proto!("tailgate.cluster.v1");
}
