//! Every supported component's settings, with the collector's names, meanings and defaults
//! (the receivers' in `receivers`, re-exported here). All structs deny unknown fields: a
//! typo is an error naming the allowed keys.

use std::collections::BTreeMap;

use serde::Deserialize;

pub use crate::receivers::{
    GrpcKeepaliveConfig, GrpcServerConfig, GrpcServerKeepalive, HttpServerConfig, OtlpProtocols,
    OtlpReceiverConfig,
};
use crate::types::{AttributeValue, ConfigRegex, GoDuration, SpanCondition, SpanEventCondition};

// ---------------------------------------------------------------- processors

/// `processors.memory_limiter`: refuse data (retryably) while memory is above the soft limit
/// (`limit - spike_limit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimiterConfig {
    /// How often memory is measured. Required, > 0.
    pub check_interval: GoDuration,
    /// Hard limit in MiB. One of `limit_mib` / `limit_percentage` is required.
    #[serde(default)]
    pub limit_mib: u64,
    /// Headroom under the hard limit in MiB. Default 20% of `limit_mib`.
    #[serde(default)]
    pub spike_limit_mib: Option<u64>,
    /// Hard limit as a percentage of total memory (the cgroup limit when set).
    #[serde(default)]
    pub limit_percentage: u64,
    /// Headroom as a percentage of total memory.
    #[serde(default)]
    pub spike_limit_percentage: u64,
}

/// `processors.batch`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Spans that trigger a send regardless of `timeout`. Default 8192.
    #[serde(default = "default_send_batch_size")]
    pub send_batch_size: usize,
    /// Upper bound of a batch; larger batches are split. 0 = no bound. Default 0.
    #[serde(default)]
    pub send_batch_max_size: usize,
    /// Time after which a non-empty batch is sent. Default 200ms.
    #[serde(default = "default_batch_timeout")]
    pub timeout: GoDuration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            send_batch_size: default_send_batch_size(),
            send_batch_max_size: 0,
            timeout: default_batch_timeout(),
        }
    }
}

fn default_send_batch_size() -> usize {
    8192
}
fn default_batch_timeout() -> GoDuration {
    GoDuration::from_millis(200)
}

/// What an attribute action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Add the attribute when the key is absent.
    Insert,
    /// Change the attribute when the key is present.
    Update,
    /// Insert or update.
    Upsert,
    /// Remove by `key` or by `pattern`.
    Delete,
    /// Replace the value by its SHA-256 hex digest, by `key` or `pattern`.
    Hash,
    /// Extract named regex groups of the value of `key` into new attributes.
    Extract,
}

/// One step of `attributes` / `resource` processing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeAction {
    #[serde(default)]
    pub key: Option<String>,
    /// Regex over attribute keys (`delete` and `hash` only).
    #[serde(default)]
    pub pattern: Option<ConfigRegex>,
    pub action: ActionKind,
    /// Literal value for insert / update / upsert.
    #[serde(default)]
    pub value: Option<AttributeValue>,
    /// Copy the value of this attribute instead of a literal.
    #[serde(default)]
    pub from_attribute: Option<String>,
}

/// `processors.attributes`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributesConfig {
    pub actions: Vec<AttributeAction>,
}

/// `processors.resource`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub attributes: Vec<AttributeAction>,
}

/// How the `filter` processor treats evaluation errors. The supported subset has no runtime
/// errors (type mismatches compare as unequal), so this is accepted for compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    Ignore,
    Silent,
    #[default]
    Propagate,
}

/// `processors.filter`: drops every span for which any `traces.span` condition is true, and
/// every span event for which any `traces.spanevent` condition is true.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub error_mode: ErrorMode,
    #[serde(default)]
    pub traces: FilterTraces,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterTraces {
    #[serde(default)]
    pub span: Vec<SpanCondition>,
    #[serde(default)]
    pub spanevent: Vec<SpanEventCondition>,
}

// ---------------------------------------------------------------- exporters

/// Client TLS settings shared by the OTLP exporters.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Plaintext connection. Default false.
    #[serde(default)]
    pub insecure: bool,
    /// PEM bundle of CAs to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key (PEM) for mutual TLS; needs `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// The name the server's certificate must hold, instead of the endpoint's host: the
    /// `loadbalancing` exporter dials gateways by pod IP, which their certificate does not
    /// list.
    #[serde(default)]
    pub server_name_override: Option<String>,
}

/// An exporter's payload compression, by the collector's names. gRPC names it in
/// `grpc-encoding`, OTLP/HTTP in `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    /// gRPC: snappy's framing format (as grpc-go's compressor); OTLP/HTTP: the block format
    /// (as the collector's `snappy`).
    Snappy,
    /// OTLP/HTTP only: snappy's framing format.
    #[serde(rename = "x-snappy-framed")]
    SnappyFramed,
    #[serde(alias = "")]
    None,
}

/// `retry_on_failure`: exponential backoff with jitter for retryable failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// First wait. Default 5s.
    #[serde(default = "default_initial_interval")]
    pub initial_interval: GoDuration,
    /// Cap of one wait. Default 30s.
    #[serde(default = "default_max_interval")]
    pub max_interval: GoDuration,
    /// Give up after this long; 0 = never. Default 300s.
    #[serde(default = "default_max_elapsed_time")]
    pub max_elapsed_time: GoDuration,
    /// Growth factor per attempt. Default 1.5.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Jitter: each wait is drawn from `[w(1-r), w(1+r)]`. Default 0.5.
    #[serde(default = "default_randomization_factor")]
    pub randomization_factor: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_elapsed_time: default_max_elapsed_time(),
            multiplier: default_multiplier(),
            randomization_factor: default_randomization_factor(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_initial_interval() -> GoDuration {
    GoDuration::from_secs(5)
}
fn default_max_interval() -> GoDuration {
    GoDuration::from_secs(30)
}
fn default_max_elapsed_time() -> GoDuration {
    GoDuration::from_secs(300)
}
fn default_multiplier() -> f64 {
    1.5
}
fn default_randomization_factor() -> f64 {
    0.5
}

/// `sending_queue`: a bounded queue of batches in front of the exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Default true. When false, the pipeline waits for each export to finish.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Parallel senders draining the queue. Default 10.
    #[serde(default = "default_num_consumers")]
    pub num_consumers: usize,
    /// Capacity in batches. Default 1000. A full queue refuses new data retryably.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            enabled: true,
            num_consumers: default_num_consumers(),
            queue_size: default_queue_size(),
        }
    }
}

fn default_num_consumers() -> usize {
    10
}
fn default_queue_size() -> usize {
    1000
}

/// `exporters.otlp`: OTLP/gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// `host:port`, or a URL (`http://` implies insecure, `https://` TLS). Required for
    /// `exporters.otlp`; under `loadbalancing`'s `protocol.otlp` the resolver gives each
    /// endpoint, so setting one there is an error.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub tls: ClientTlsConfig,
    /// Extra gRPC metadata on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    /// Per-attempt deadline. Default 5s.
    #[serde(default = "default_grpc_timeout")]
    pub timeout: GoDuration,
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
    #[serde(default)]
    pub sending_queue: QueueConfig,
}

impl OtlpExporterConfig {
    /// The same settings for another endpoint (one the `loadbalancing` resolver found).
    pub fn for_endpoint(&self, endpoint: &str) -> OtlpExporterConfig {
        OtlpExporterConfig {
            endpoint: endpoint.to_string(),
            ..self.clone()
        }
    }
}

fn default_grpc_timeout() -> GoDuration {
    GoDuration::from_secs(5)
}

/// Body encoding of `otlphttp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HttpEncoding {
    #[default]
    Proto,
    Json,
}

/// `exporters.otlphttp`: OTLP/HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpHttpExporterConfig {
    /// Base URL; traces go to `<endpoint>/v1/traces`. One of `endpoint` / `traces_endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Full URL for traces, overriding `endpoint`.
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    #[serde(default)]
    pub tls: ClientTlsConfig,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub encoding: HttpEncoding,
    /// Per-attempt deadline. Default 30s.
    #[serde(default = "default_http_timeout")]
    pub timeout: GoDuration,
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
    #[serde(default)]
    pub sending_queue: QueueConfig,
}

fn default_http_timeout() -> GoDuration {
    GoDuration::from_secs(30)
}

/// `exporters.file`: one OTLP/JSON `ExportTraceServiceRequest` per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExporterConfig {
    /// File to append to; its directory is created.
    pub path: String,
}

/// How much `debug` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    #[default]
    Basic,
    Normal,
    Detailed,
}

/// `exporters.debug`: a summary line per batch (`normal`: plus one line per span).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DebugExporterConfig {
    #[serde(default)]
    pub verbosity: Verbosity,
}

// ---------------------------------------------------------------- extensions

/// `extensions.health_check`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Default `0.0.0.0:13133`.
    #[serde(default = "default_health_endpoint")]
    pub endpoint: String,
    /// Default `/`.
    #[serde(default = "default_health_path")]
    pub path: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            endpoint: default_health_endpoint(),
            path: default_health_path(),
        }
    }
}

fn default_health_endpoint() -> String {
    "0.0.0.0:13133".into()
}
fn default_health_path() -> String {
    "/".into()
}

/// `extensions.pprof`: CPU profiles at `/debug/pprof/profile?seconds=N`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PprofConfig {
    /// Default `localhost:1777`.
    #[serde(default = "default_pprof_endpoint")]
    pub endpoint: String,
}

impl Default for PprofConfig {
    fn default() -> Self {
        PprofConfig {
            endpoint: default_pprof_endpoint(),
        }
    }
}

fn default_pprof_endpoint() -> String {
    "localhost:1777".into()
}

// ---------------------------------------------------------------- service

/// `service.telemetry`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub metrics: MetricsTelemetry,
    #[serde(default)]
    pub logs: LogsTelemetry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetricsLevel {
    None,
    Basic,
    #[default]
    Normal,
    Detailed,
}

/// `service.telemetry.metrics`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTelemetry {
    /// Prometheus `/metrics` listen address. Default `0.0.0.0:8888`.
    #[serde(default = "default_metrics_address")]
    pub address: String,
    /// `none` turns the endpoint off. Default `normal`.
    #[serde(default)]
    pub level: MetricsLevel,
}

impl Default for MetricsTelemetry {
    fn default() -> Self {
        MetricsTelemetry {
            address: default_metrics_address(),
            level: MetricsLevel::default(),
        }
    }
}

fn default_metrics_address() -> String {
    "0.0.0.0:8888".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    #[default]
    Console,
    Json,
}

/// `service.telemetry.logs`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogsTelemetry {
    #[serde(default)]
    pub level: LogLevel,
    #[serde(default)]
    pub encoding: LogEncoding,
}
