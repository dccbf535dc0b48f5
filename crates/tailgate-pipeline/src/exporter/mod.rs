//! Exporters and the machinery around them: retry with backoff, the bounded sending queue, and
//! fan-out to several exporters.
//!
//! ```text
//! FanOut ──try_reserve all──> [sending_queue exporter A] ─ num_consumers ─> retry ─> A.export
//!        └─────────────────> [inline exporter B (queue disabled)] ────────> retry ─> B.export
//! ```
//!
//! A batch is encoded once and shared by every exporter. Fan-out reserves a slot in every
//! queue before sending to any, so a full queue refuses the batch whole (retryable, counted
//! as `otelcol_exporter_enqueue_failed_spans_total`) and no exporter gets a duplicate when
//! the sender retries. A slow exporter blocks the others only once its own queue is full.

mod debug;
mod file;
pub(crate) mod otlp_grpc;
mod otlp_http;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, gauge};
use tailgate_config::components::{QueueConfig, RetryConfig};
use tailgate_config::{ComponentId, ExporterConfig};
use tailgate_otlp::{EncodedSpan, encode_export_request};
use thiserror::Error;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consumer::{BoxFuture, ConsumeError, Consumer, RefuseReason};
use crate::telemetry::*;

pub use otlp_grpc::{client_tls, grpc_status_with_retry_info, retry_info_delay};
pub use retry::Backoff;

/// At shutdown, a retry whose backoff would pass the deadline is made this long before it
/// instead: the time one export attempt is given.
const LAST_ATTEMPT_TIME: Duration = Duration::from_millis(500);

/// One encoded request on its way out, shared by every exporter of a pipeline.
#[derive(Debug, Clone)]
pub struct ExportBatch {
    /// An encoded `ExportTraceServiceRequest`.
    pub request: Bytes,
    pub spans: u64,
}

impl ExportBatch {
    pub fn from_spans(spans: &[EncodedSpan]) -> ExportBatch {
        ExportBatch {
            request: encode_export_request(spans),
            spans: spans.len() as u64,
        }
    }
}

/// How an export attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExportError {
    /// Worth retrying; `retry_after` is the server's throttle hint.
    #[error("retryable: {message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying the same data will fail again.
    #[error("permanent: {message}")]
    Permanent { message: String },
}

/// The backend accepted the request, possibly rejecting some spans (OTLP partial success).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    pub rejected_spans: u64,
    pub message: String,
}

/// Sends one batch somewhere. Implementations do one attempt; retries live outside.
pub trait Exporter: Send + Sync {
    fn export<'a>(
        &'a self,
        batch: &'a ExportBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, ExportError>>;
}

/// An error and every source under it, `: `-separated: transport errors keep the cause (a
/// DNS failure, a refused connection) in their sources, and `Display` alone says only
/// "transport error".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Builds an exporter; gRPC ones connect through `net`.
pub fn build_exporter(
    id: &ComponentId,
    cfg: &ExporterConfig,
    net: &dyn crate::net::Network,
) -> anyhow::Result<Arc<dyn Exporter>> {
    Ok(match cfg {
        ExporterConfig::Otlp(c) => Arc::new(otlp_grpc::OtlpGrpcExporter::new(id, c, net)?),
        ExporterConfig::OtlpHttp(c) => Arc::new(otlp_http::OtlpHttpExporter::new(id, c)?),
        ExporterConfig::File(c) => Arc::new(file::FileExporter::new(c)?),
        ExporterConfig::Debug(c) => Arc::new(debug::DebugExporter::new(id, c)),
        ExporterConfig::LoadBalancing(_) => {
            anyhow::bail!(
                "exporters.{id}: `loadbalancing` routes spans itself; build it with a ComponentFactory"
            )
        }
        ExporterConfig::Prometheus(_) => {
            anyhow::bail!("exporters.{id}: `prometheus` serves metrics; it takes no traces")
        }
    })
}

/// Queue and retry settings of an exporter config (the `file` and `debug` exporters have
/// neither: they write locally, inline, without retries).
pub fn queue_and_retry(cfg: &ExporterConfig) -> (QueueConfig, RetryConfig) {
    match cfg {
        ExporterConfig::Otlp(c) => (c.sending_queue.clone(), c.retry_on_failure.clone()),
        ExporterConfig::OtlpHttp(c) => (c.sending_queue.clone(), c.retry_on_failure.clone()),
        ExporterConfig::LoadBalancing(c) => (
            c.protocol.otlp.sending_queue.clone(),
            c.protocol.otlp.retry_on_failure.clone(),
        ),
        ExporterConfig::File(_) | ExporterConfig::Debug(_) | ExporterConfig::Prometheus(_) => (
            QueueConfig {
                enabled: false,
                ..QueueConfig::default()
            },
            RetryConfig {
                enabled: false,
                ..RetryConfig::default()
            },
        ),
    }
}

/// An exporter with its retry policy and (optionally) its sending queue.
pub struct ManagedExporter {
    name: String,
    /// What its batches carry: the counters are named for it, as the collector's are.
    items: ExportedItems,
    exporter: Arc<dyn Exporter>,
    retry: RetryConfig,
    seed: u64,
    queue: std::sync::Mutex<Option<mpsc::Sender<ExportBatch>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Deadline after which retries stop; set at shutdown.
    deadline: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Turns true at shutdown: wakes workers waiting out a retry backoff, so a backend that
    /// keeps failing cannot hold shutdown past its deadline.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// What an exporter's batches carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportedItems {
    Spans,
    /// Metric data points (a metrics pipeline's `otlp` exporter).
    MetricPoints,
}

impl ExportedItems {
    /// The collector's `data_type` label.
    fn data_type(self) -> &'static str {
        match self {
            ExportedItems::Spans => "traces",
            ExportedItems::MetricPoints => "metrics",
        }
    }

    fn sent(self) -> &'static str {
        match self {
            ExportedItems::Spans => EXPORTER_SENT_SPANS,
            ExportedItems::MetricPoints => EXPORTER_SENT_METRIC_POINTS,
        }
    }

    fn send_failed(self) -> &'static str {
        match self {
            ExportedItems::Spans => EXPORTER_SEND_FAILED_SPANS,
            ExportedItems::MetricPoints => EXPORTER_SEND_FAILED_METRIC_POINTS,
        }
    }

    fn enqueue_failed(self) -> &'static str {
        match self {
            ExportedItems::Spans => EXPORTER_ENQUEUE_FAILED_SPANS,
            ExportedItems::MetricPoints => EXPORTER_ENQUEUE_FAILED_METRIC_POINTS,
        }
    }
}

impl ManagedExporter {
    /// `seed` drives retry jitter, so runs are reproducible.
    pub fn start(
        name: String,
        exporter: Arc<dyn Exporter>,
        queue: &QueueConfig,
        retry: RetryConfig,
        seed: u64,
    ) -> Arc<Self> {
        Self::start_for(ExportedItems::Spans, name, exporter, queue, retry, seed)
    }

    /// Like [`ManagedExporter::start`], for batches of `items`.
    pub fn start_for(
        items: ExportedItems,
        name: String,
        exporter: Arc<dyn Exporter>,
        queue: &QueueConfig,
        retry: RetryConfig,
        seed: u64,
    ) -> Arc<Self> {
        let deadline = Arc::new(std::sync::Mutex::new(None));
        let data_type = items.data_type();
        let me = Arc::new(ManagedExporter {
            items,
            name: name.clone(),
            exporter,
            retry,
            seed,
            queue: std::sync::Mutex::new(None),
            workers: Mutex::new(Vec::new()),
            deadline,
            stopping: tokio::sync::watch::Sender::new(false),
        });
        if queue.enabled {
            let (tx, rx) = mpsc::channel::<ExportBatch>(queue.queue_size);
            gauge!(EXPORTER_QUEUE_CAPACITY, "exporter" => name.clone(), "data_type" => data_type)
                .set(queue.queue_size as f64);
            gauge!(EXPORTER_QUEUE_SIZE, "exporter" => name.clone(), "data_type" => data_type)
                .set(0.0);
            gauge!(EXPORTER_QUEUE_BYTES, "exporter" => name.clone(), "data_type" => data_type)
                .set(0.0);
            let rx = Arc::new(Mutex::new(rx));
            let mut workers = Vec::with_capacity(queue.num_consumers);
            for worker in 0..queue.num_consumers {
                let me2 = Arc::clone(&me);
                let rx = Arc::clone(&rx);
                workers.push(tokio::spawn(async move {
                    let mut backoff =
                        Backoff::new(&me2.retry, me2.seed.wrapping_add(worker as u64));
                    loop {
                        let next = { rx.lock().await.recv().await };
                        let Some(batch) = next else { break };
                        gauge!(EXPORTER_QUEUE_SIZE, "exporter" => me2.name.clone(), "data_type" => data_type).decrement(1.0);
                        // Failures are counted inside; a queued batch has no caller to tell.
                        let _ = me2.send_with_retry(&batch, &mut backoff).await;
                        gauge!(EXPORTER_QUEUE_BYTES, "exporter" => me2.name.clone(), "data_type" => data_type)
                            .decrement(batch.request.len() as f64);
                    }
                }));
            }
            *me.queue.lock().expect("queue lock") = Some(tx);
            me.workers
                .try_lock()
                .expect("nobody else holds a fresh exporter's lock")
                .extend(workers);
        }
        me
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn queue_sender(&self) -> Option<mpsc::Sender<ExportBatch>> {
        self.queue.lock().expect("queue lock").clone()
    }

    fn is_queued(&self) -> bool {
        self.queue.lock().expect("queue lock").is_some()
    }

    /// True while new data would be accepted (queue not full).
    pub fn has_capacity(&self) -> bool {
        match self.queue_sender() {
            Some(tx) => tx.capacity() > 0,
            None => true,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().expect("deadline lock")
    }

    /// The backoff wait `w`, shortened at shutdown so one last attempt still fits before the
    /// deadline (a backend that recovers late in the drain still gets the batch; the
    /// simulator found a batch dropped although the sink answered again before the
    /// deadline); `None` when not even that fits.
    fn wait_within_deadline(&self, w: Duration) -> Option<Duration> {
        let Some(deadline) = self.deadline() else {
            return Some(w);
        };
        let now = Instant::now();
        if now + w < deadline {
            return Some(w);
        }
        let last_attempt = deadline.checked_sub(LAST_ATTEMPT_TIME)?;
        (last_attempt > now).then(|| last_attempt - now)
    }

    /// One batch through retries to a final outcome, counted either way.
    async fn send_with_retry(
        &self,
        batch: &ExportBatch,
        backoff: &mut Backoff,
    ) -> Result<(), ExportError> {
        backoff.reset();
        let started = Instant::now();
        loop {
            let attempt = match self.deadline() {
                Some(d) => match tokio::time::timeout_at(d, self.exporter.export(batch)).await {
                    Ok(r) => r,
                    Err(_) => Err(ExportError::Permanent {
                        message: "shutdown deadline passed".into(),
                    }),
                },
                None => self.exporter.export(batch).await,
            };
            match attempt {
                Ok(outcome) => {
                    let accepted = batch.spans.saturating_sub(outcome.rejected_spans);
                    counter!(self.items.sent(), "exporter" => self.name.clone())
                        .increment(accepted);
                    if outcome.rejected_spans > 0 {
                        tracing::warn!(exporter = %self.name, rejected = outcome.rejected_spans, message = %outcome.message, "backend rejected spans (partial success)");
                        counter!(self.items.send_failed(), "exporter" => self.name.clone(), "reason" => "partial_success")
                            .increment(outcome.rejected_spans);
                    }
                    return Ok(());
                }
                Err(ExportError::Permanent { message }) => {
                    let reason = if self.deadline().is_some_and(|d| Instant::now() >= d) {
                        "shutdown"
                    } else {
                        "permanent"
                    };
                    tracing::error!(exporter = %self.name, items = batch.spans, %message, "export failed permanently; dropping batch");
                    counter!(self.items.send_failed(), "exporter" => self.name.clone(), "reason" => reason).increment(batch.spans);
                    return Err(ExportError::Permanent { message });
                }
                Err(ExportError::Retryable {
                    message,
                    retry_after,
                }) => {
                    let wait = backoff
                        .next_wait(started.elapsed(), retry_after)
                        .and_then(|w| self.wait_within_deadline(w));
                    match wait {
                        Some(w) => {
                            tracing::warn!(exporter = %self.name, %message, retry_in = ?w, "export failed, will retry");
                            counter!(EXPORTER_RETRIES, "exporter" => self.name.clone())
                                .increment(1);
                            let mut stopping = self.stopping.subscribe();
                            if *stopping.borrow_and_update() {
                                tokio::time::sleep(w).await;
                            } else {
                                tokio::select! {
                                    () = tokio::time::sleep(w) => {}
                                    // Shutdown began: try again now, while its deadline allows.
                                    _ = stopping.changed() => {}
                                }
                            }
                        }
                        _ => {
                            let reason = if self.deadline().is_some() {
                                "shutdown"
                            } else {
                                "retries_exhausted"
                            };
                            tracing::error!(exporter = %self.name, items = batch.spans, %message, "export failed, no retries left; dropping batch");
                            counter!(self.items.send_failed(), "exporter" => self.name.clone(), "reason" => reason)
                                .increment(batch.spans);
                            return Err(ExportError::Retryable {
                                message,
                                retry_after,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Closes the queue, lets the workers drain it until `deadline`, and waits for them.
    pub async fn shutdown(&self, deadline: Instant) {
        *self.deadline.lock().expect("deadline lock") = Some(deadline);
        self.stopping.send_replace(true);
        drop(self.queue.lock().expect("queue lock").take());
        let workers: Vec<JoinHandle<()>> = std::mem::take(&mut *self.workers.lock().await);
        for w in workers {
            let _ = w.await;
        }
    }
}

/// The last stage of a pipeline: every exporter gets every batch.
pub struct FanOut {
    exporters: Vec<Arc<ManagedExporter>>,
    seed: u64,
}

impl FanOut {
    pub fn new(exporters: Vec<Arc<ManagedExporter>>, seed: u64) -> Self {
        assert!(
            !exporters.is_empty(),
            "validated pipelines have at least one exporter"
        );
        FanOut { exporters, seed }
    }

    pub fn exporters(&self) -> &[Arc<ManagedExporter>] {
        &self.exporters
    }
}

impl Consumer for FanOut {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            if spans.is_empty() {
                return Ok(());
            }
            self.send_batch(ExportBatch::from_spans(&spans)).await
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for e in &self.exporters {
                e.shutdown(deadline).await;
            }
        })
    }
}

impl FanOut {
    /// One encoded batch to every exporter: queued ones all or none, the others inline.
    pub async fn send_batch(&self, batch: ExportBatch) -> Result<(), ConsumeError> {
        {
            // Reserve a slot in every queue first: all or nothing.
            let mut permits = Vec::new();
            for e in &self.exporters {
                if !e.is_queued() {
                    continue;
                }
                let Some(tx) = e.queue_sender() else {
                    return Err(ConsumeError::ShuttingDown);
                };
                match tx.try_reserve_owned() {
                    Ok(p) => permits.push((Arc::clone(e), p)),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        counter!(e.items.enqueue_failed(), "exporter" => e.name.clone())
                            .increment(batch.spans);
                        return Err(ConsumeError::Refused {
                            reason: RefuseReason::ExporterQueueFull,
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(ConsumeError::ShuttingDown);
                    }
                }
            }
            for (e, permit) in permits {
                let data_type = e.items.data_type();
                gauge!(EXPORTER_QUEUE_SIZE, "exporter" => e.name.clone(), "data_type" => data_type)
                    .increment(1.0);
                gauge!(EXPORTER_QUEUE_BYTES, "exporter" => e.name.clone(), "data_type" => data_type)
                    .increment(batch.request.len() as f64);
                permit.send(batch.clone());
            }
            // Exporters without a queue export inline; the caller waits for them.
            let mut first_error = None;
            for e in self.exporters.iter().filter(|e| !e.is_queued()) {
                let mut backoff = Backoff::new(&e.retry, self.seed);
                if let Err(err) = e.send_with_retry(&batch, &mut backoff).await {
                    first_error.get_or_insert(err);
                }
            }
            match first_error {
                None => Ok(()),
                Some(ExportError::Permanent { message }) => Err(ConsumeError::Failed(message)),
                Some(ExportError::Retryable { message, .. }) => Err(ConsumeError::Failed(message)),
            }
        }
    }
}

/// The end of a pipeline with exporters of both kinds: the encoded-batch exporters behind one
/// [`FanOut`], and exporters that route spans themselves (`loadbalancing`). Each part gets
/// every batch, in order; a refusal by a later part after an earlier one took the batch
/// means the sender's retry reaches the earlier part twice (the same as the collector's
/// fan-out).
pub struct ExportFork {
    pub parts: Vec<Arc<dyn Consumer>>,
}

impl Consumer for ExportFork {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let (last, rest) = self.parts.split_last().expect("a pipeline has an exporter");
            for p in rest {
                p.consume(spans.clone()).await?;
            }
            last.consume(spans).await
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for p in &self.parts {
                p.shutdown(deadline).await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
