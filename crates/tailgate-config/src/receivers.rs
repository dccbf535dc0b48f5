//! The OTLP receiver's settings (`receivers.otlp`), with the collector's names, meanings and
//! defaults, and the limits that keep slow or idle clients from pinning a gateway
//! (docs/configuration.md).

use serde::Deserialize;

use crate::tls::ServerTlsConfig;
use crate::types::{GoDuration, present};

/// `receivers.otlp`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    #[serde(default)]
    pub protocols: OtlpProtocols,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OtlpProtocols {
    /// Present (even empty) enables OTLP/gRPC.
    #[serde(default, deserialize_with = "present")]
    pub grpc: Option<GrpcServerConfig>,
    /// Present (even empty) enables OTLP/HTTP.
    #[serde(default, deserialize_with = "present")]
    pub http: Option<HttpServerConfig>,
}

/// OTLP/gRPC server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServerConfig {
    /// Listen address. Default `0.0.0.0:4317`.
    #[serde(default = "default_grpc_endpoint")]
    pub endpoint: String,
    /// Largest accepted request in MiB, after decompression. Default 4.
    #[serde(default = "default_max_recv_msg_size_mib")]
    pub max_recv_msg_size_mib: u64,
    /// Requests one connection may have in flight at once. Default 100 (the collector's 0,
    /// unlimited, is refused: one connection could then hold any number).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Open connections at most; more are closed as they arrive (counted). Default 4096.
    /// Not a collector key.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The collector's `keepalive` (its `server_parameters`; `enforcement_policy` is not
    /// supported).
    #[serde(default)]
    pub keepalive: GrpcKeepaliveConfig,
    /// Absent: plaintext.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        GrpcServerConfig {
            endpoint: default_grpc_endpoint(),
            max_recv_msg_size_mib: default_max_recv_msg_size_mib(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_connections: default_max_connections(),
            keepalive: GrpcKeepaliveConfig::default(),
            tls: None,
        }
    }
}

/// `keepalive` of a gRPC server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcKeepaliveConfig {
    #[serde(default)]
    pub server_parameters: GrpcServerKeepalive,
}

/// `keepalive.server_parameters`: when connections end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServerKeepalive {
    /// A connection that sent and received nothing for this long is closed. Default 10m.
    #[serde(default = "default_max_connection_idle")]
    pub max_connection_idle: GoDuration,
    /// A connection is asked to go away after this long (clients reconnect, rebalancing
    /// load). Default: never.
    #[serde(default)]
    pub max_connection_age: Option<GoDuration>,
    /// Time an aged connection gets to finish its requests. Default: unbounded.
    #[serde(default)]
    pub max_connection_age_grace: Option<GoDuration>,
    /// HTTP/2 ping after this long without activity. Default: none.
    #[serde(default)]
    pub time: Option<GoDuration>,
    /// A ping unanswered this long closes the connection. Default 20s.
    #[serde(default)]
    pub timeout: Option<GoDuration>,
}

impl Default for GrpcServerKeepalive {
    fn default() -> Self {
        GrpcServerKeepalive {
            max_connection_idle: default_max_connection_idle(),
            max_connection_age: None,
            max_connection_age_grace: None,
            time: None,
            timeout: None,
        }
    }
}

/// OTLP/HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// Listen address. Default `0.0.0.0:4318`.
    #[serde(default = "default_http_endpoint")]
    pub endpoint: String,
    /// Path of the trace endpoint. Default `/v1/traces`.
    #[serde(default = "default_traces_url_path")]
    pub traces_url_path: String,
    /// Largest accepted body in bytes, after decompression. Default 4 MiB, like gRPC.
    #[serde(default = "default_max_request_body_size")]
    pub max_request_body_size: u64,
    /// A request's headers must arrive whole within this. Default 10s (the collector: 1m).
    #[serde(default = "default_read_header_timeout")]
    pub read_header_timeout: GoDuration,
    /// A keep-alive connection that sent and received nothing for this long is closed.
    /// Default 1m.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: GoDuration,
    /// Open connections at most; more are closed as they arrive (counted). Default 4096.
    /// Not a collector key.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Absent: plaintext.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            endpoint: default_http_endpoint(),
            traces_url_path: default_traces_url_path(),
            max_request_body_size: default_max_request_body_size(),
            read_header_timeout: default_read_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            tls: None,
        }
    }
}

fn default_grpc_endpoint() -> String {
    "0.0.0.0:4317".into()
}
fn default_http_endpoint() -> String {
    "0.0.0.0:4318".into()
}
fn default_traces_url_path() -> String {
    "/v1/traces".into()
}
fn default_max_recv_msg_size_mib() -> u64 {
    4
}
fn default_max_request_body_size() -> u64 {
    4 * 1024 * 1024
}
fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connection_idle() -> GoDuration {
    GoDuration::from_secs(600)
}
fn default_read_header_timeout() -> GoDuration {
    GoDuration::from_secs(10)
}
fn default_idle_timeout() -> GoDuration {
    GoDuration::from_secs(60)
}
