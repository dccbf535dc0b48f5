//! The running pipeline: what a validated [`tailgate_config::Config`] becomes.
//!
//! ```text
//! receiver (otlp: gRPC + HTTP) ─► Ingest ─► [memory_limiter] ─► [attributes|resource|filter]*
//!     ─► [batch] ─► FanOut ─► exporter queues ─► retry ─► otlp | otlphttp | file | debug
//! ```
//!
//! - [`receiver`]: front ends and the shared [`receiver::Ingest`] path.
//! - [`stages`]: processor stages as [`consumer::Consumer`]s.
//! - [`memory`]: memory readings (live, resident, accounted) and the `memory_limiter` stage.
//! - [`exporter`]: exporters, retry, sending queues, fan-out.
//! - [`grpc_compression`]: compressed gRPC messages in front of tonic (snappy, which tonic
//!   lacks; gzip at the fastest level).
//! - [`extension`]: `health_check`, `pprof`.
//! - [`telemetry`]: metric names (see `docs/metrics.md`).
//! - [`service`]: start and ordered shutdown.
//!
//! **Invariants:** every channel and queue is bounded; when a bound is hit the sender gets a
//! retryable refusal, and anything dropped is counted with a reason. Time comes from
//! `tokio::time` and randomness from seeds in [`service::ServiceOptions`], so the simulator
//! can drive this code.

pub mod cluster;
pub mod connections;
pub mod connector;
pub mod consumer;
pub mod exporter;
pub mod extension;
pub mod grpc_compression;
pub mod memory;
pub mod net;
pub mod receiver;
mod rpc;
pub mod sampling;
pub mod service;
pub mod stages;
pub mod telemetry;
pub mod tls;

pub use service::{BoundAddresses, RunningService, ServiceOptions, start};

/// rustls needs one process-wide crypto provider; Tailgate uses ring (no C toolchain needed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
