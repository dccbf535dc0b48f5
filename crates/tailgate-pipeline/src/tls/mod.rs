//! TLS: on the receivers' listeners (`receivers.otlp.protocols.{grpc,http}.tls`) and,
//! mutual, on the cluster plane (`cluster.tls`).
//!
//! - [`files`]: certificate files re-read without a restart ([`Reloading`]) — on change,
//!   checked every second, and every `reload_interval`.
//! - [`receiver`]: a receiver's server config ([`receiver_tls`]).
//! - [`cluster`]: the cluster's server and client configs, and [`TlsNetwork`], the
//!   [`Network`](crate::net::Network) the cluster server and the peer clients use with it.
//! - [`accept`]: [`accept_tls`], handshakes bounded in time and number, failures counted by
//!   reason.

mod accept;
mod cluster;
mod files;
mod receiver;

pub use accept::{
    HANDSHAKE_TIMEOUT, PENDING_HANDSHAKES_MAX, ServerConfigSource, accept_tls,
    handshake_failure_reason,
};
pub use cluster::{CLUSTER_CLIENT, CLUSTER_LISTENER, ClusterTls, TlsNetwork, cluster_tls};
pub use files::{Reloading, TlsError, TlsFile};
pub use receiver::{ALPN_GRPC, ALPN_HTTP, ServerTls, receiver_tls};
