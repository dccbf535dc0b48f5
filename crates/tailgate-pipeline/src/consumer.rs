//! The link between pipeline stages: a [`Consumer`] takes a batch of spans or refuses it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tailgate_otlp::EncodedSpan;
use thiserror::Error;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a stage did not take a batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConsumeError {
    /// Temporarily out of capacity: nothing was kept, the sender should retry after the delay.
    /// Receivers answer RESOURCE_EXHAUSTED (gRPC, with RetryInfo) or 429/503 (HTTP, with
    /// Retry-After).
    #[error("refused ({reason}); retry after {retry_after:?}")]
    Refused {
        reason: RefuseReason,
        retry_after: Duration,
    },
    /// The data could not be delivered and retrying will not help (an inline export failed
    /// permanently). Already counted as failed by the stage that failed.
    #[error("export failed: {0}")]
    Failed(String),
    /// The pipeline is shutting down and takes nothing more.
    #[error("shutting down")]
    ShuttingDown,
}

/// What ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// `memory_limiter` measured memory above its soft limit.
    MemoryLimit,
    /// A batch processor's input queue is full.
    BatchQueueFull,
    /// An exporter's `sending_queue` is full.
    ExporterQueueFull,
    /// An inline export failed with a retryable error.
    ExportRetryable,
    /// The tail-sampling buffer is at its byte budget (or `num_traces` with
    /// `block_on_overflow`).
    SamplingBufferFull,
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefuseReason::MemoryLimit => "memory limit reached",
            RefuseReason::BatchQueueFull => "batch queue full",
            RefuseReason::ExporterQueueFull => "exporter queue full",
            RefuseReason::ExportRetryable => "export failed, retryable",
            RefuseReason::SamplingBufferFull => "tail-sampling buffer full",
        })
    }
}

/// Where a request came from, for the stages at the front of a pipeline that use it
/// (`k8sattributes`' `connection` association). A batch mixes clients, so stages after
/// `batch` never see one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Client {
    pub addr: Option<std::net::IpAddr>,
}

/// A pipeline stage. `consume` returns once the stage has taken responsibility for the spans
/// (queued, exported or intentionally dropped and counted) or has refused them whole.
pub trait Consumer: Send + Sync {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// `consume` with the request's [`Client`]. Stages that pass spans on unchanged
    /// (memory guard, inline processors, tee) forward it; the rest ignore it.
    fn consume_from(
        &self,
        spans: Vec<EncodedSpan>,
        client: Client,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let _ = client;
        self.consume(spans)
    }

    /// Stops taking data, hands everything buffered downstream, then shuts the next stage
    /// down. Must finish by `deadline`; what cannot be delivered by then is counted as failed.
    fn shutdown(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()>;
}
