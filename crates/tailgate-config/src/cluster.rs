//! The `cluster` section: a gateway's membership in a Tailgate cluster. Not a collector
//! key (the collector has no cluster); every setting is also a `tailgate gateway` flag, and
//! flags win.
//!
//! ```yaml
//! cluster:
//!   node_id: ${env:POD_NAME}
//!   listen: 0.0.0.0:4320
//!   advertise: ${env:POD_NAME}.tailgate-gateway:4320
//!   join: [tailgate-gateway-0.tailgate-gateway:4320, tailgate-gateway-1.tailgate-gateway:4320]
//!   member_timeout: 3s
//!   ring_debounce: 500ms
//!   replication_factor: 2   # every buffered span also on the ring successor (crash durability)
//!   tls:                    # mutual TLS between gateways (docs/operations.md, "Security")
//!     cert_file: /etc/tailgate/cluster-tls/tls.crt
//!     key_file: /etc/tailgate/cluster-tls/tls.key
//!     ca_file: /etc/tailgate/cluster-tls/ca.crt
//!     allowed_peer_names: [tailgate-gateway.observability.svc]  # a SAN every member's certificate holds
//! ```

use serde::Deserialize;

use crate::tls::ClusterTlsConfig;
use crate::types::GoDuration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Stable member name (the pod name). Default: the host name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Where the cluster gRPC service listens.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The cluster address peers reach this node at. Default: `listen` (when not a
    /// wildcard address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The OTLP gRPC address agents reach this node at. Default: `advertise`'s host with
    /// the OTLP receiver's port.
    #[serde(default)]
    pub otlp_advertise: Option<String>,
    /// Peers' cluster addresses (may include this node's own; a StatefulSet gives every pod
    /// the same list).
    #[serde(default)]
    pub join: Vec<String>,
    /// A member silent for this long is removed by the leader; its buffered traces are lost.
    #[serde(default = "default_member_timeout")]
    pub member_timeout: GoDuration,
    /// Joins within this window become one ring change.
    #[serde(default = "default_ring_debounce")]
    pub ring_debounce: GoDuration,
    /// Copies of every buffered span: 1 (the owner only) or 2 (the owner and its ring
    /// successor, so a crash of any one gateway loses no buffered trace).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u8,
    /// Mutual TLS between gateways. Absent, the cluster port is unauthenticated (a warning
    /// at start says so).
    #[serde(default)]
    pub tls: Option<ClusterTlsConfig>,
}

/// Most copies of a buffered span `replication_factor` may ask for.
pub const REPLICATION_FACTOR_MAX: u8 = 2;

fn default_replication_factor() -> u8 {
    1
}

fn default_listen() -> String {
    "0.0.0.0:4320".into()
}

fn default_member_timeout() -> GoDuration {
    GoDuration::from_secs(3)
}

fn default_ring_debounce() -> GoDuration {
    GoDuration(std::time::Duration::from_millis(500))
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            listen: default_listen(),
            advertise: None,
            otlp_advertise: None,
            join: Vec::new(),
            member_timeout: default_member_timeout(),
            ring_debounce: default_ring_debounce(),
            replication_factor: default_replication_factor(),
            tls: None,
        }
    }
}
