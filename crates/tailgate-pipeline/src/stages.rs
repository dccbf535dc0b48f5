//! Processor stages of a pipeline, each a [`Consumer`] in front of the next.
//!
//! - [`SyncStage`]: runs a pure [`SpanProcessor`] (attributes, resource, filter) inline.
//! - [`BatchStage`]: the async boundary; a task cuts batches by size or timeout. Its input
//!   queue holds at most [`BATCH_QUEUE_REQUESTS_MAX`] requests; when full, receivers refuse
//!   retryably. When the next stage refuses, the batch task waits and retries, which fills its
//!   queue: backpressure travels up to the senders instead of data being dropped.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tailgate_otlp::EncodedSpan;
use tailgate_processors::SpanProcessor;
use tailgate_processors::batch::Batcher;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consumer::{BoxFuture, Client, ConsumeError, Consumer, RefuseReason};
use crate::telemetry::*;

/// Requests a batch stage buffers before refusing.
pub const BATCH_QUEUE_REQUESTS_MAX: usize = 256;
/// Longest pause between retries when the next stage refuses a cut batch.
const BATCH_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// Spans a batch stage gave up on at shutdown. Labels: processor, reason.
pub const PROCESSOR_DROPPED_SPANS: &str = "tailgate_processor_dropped_spans_total";

/// A pure processor run inline.
pub struct SyncStage {
    name: String,
    processor: Box<dyn SpanProcessor>,
    next: Arc<dyn Consumer>,
}

impl SyncStage {
    pub fn new(name: String, processor: Box<dyn SpanProcessor>, next: Arc<dyn Consumer>) -> Self {
        SyncStage {
            name,
            processor,
            next,
        }
    }
}

impl Consumer for SyncStage {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.consume_from(spans, Client::default())
    }

    fn consume_from(
        &self,
        mut spans: Vec<EncodedSpan>,
        client: Client,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            counter!(PROCESSOR_INCOMING_ITEMS, "processor" => self.name.clone())
                .increment(spans.len() as u64);
            let done = self.processor.process(&mut spans);
            if done.spans_dropped > 0 {
                counter!(PROCESSOR_FILTER_SPANS_FILTERED, "processor" => self.name.clone())
                    .increment(done.spans_dropped as u64);
            }
            if done.events_dropped > 0 {
                counter!(PROCESSOR_FILTER_SPANEVENTS_FILTERED, "processor" => self.name.clone())
                    .increment(done.events_dropped as u64);
            }
            counter!(PROCESSOR_OUTGOING_ITEMS, "processor" => self.name.clone())
                .increment(spans.len() as u64);
            if spans.is_empty() {
                return Ok(());
            }
            self.next.consume_from(spans, client).await
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        self.next.shutdown(deadline)
    }
}

/// `batch`: accumulates spans and sends a batch when `send_batch_size` is reached or
/// `timeout` has passed since the first pending span.
pub struct BatchStage {
    name: String,
    tx: std::sync::Mutex<Option<mpsc::Sender<Vec<EncodedSpan>>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    deadline: Arc<std::sync::Mutex<Option<Instant>>>,
    next: Arc<dyn Consumer>,
}

impl BatchStage {
    pub fn start(
        name: String,
        mut batcher: Batcher,
        timeout: Duration,
        next: Arc<dyn Consumer>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<EncodedSpan>>(BATCH_QUEUE_REQUESTS_MAX);
        let deadline: Arc<std::sync::Mutex<Option<Instant>>> =
            Arc::new(std::sync::Mutex::new(None));
        let send_to = Arc::clone(&next);
        let task_name = name.clone();
        let task_deadline = Arc::clone(&deadline);
        let task = tokio::spawn(async move {
            let send = |batch: Vec<EncodedSpan>, trigger: &'static str| {
                let next = Arc::clone(&send_to);
                let name = task_name.clone();
                let deadline = Arc::clone(&task_deadline);
                async move {
                    histogram!(PROCESSOR_BATCH_SEND_SIZE, "processor" => name.clone())
                        .record(batch.len() as f64);
                    counter!(trigger, "processor" => name.clone()).increment(1);
                    deliver(&name, next.as_ref(), batch, &deadline).await;
                }
            };
            let mut flush_at: Option<Instant> = None;
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(spans) => {
                            for batch in batcher.push(spans) {
                                send(batch, PROCESSOR_BATCH_SIZE_TRIGGER).await;
                            }
                            flush_at = match (batcher.pending_spans(), flush_at) {
                                (0, _) => None,
                                (_, Some(t)) => Some(t),
                                (_, None) => Some(Instant::now() + timeout),
                            };
                        }
                        None => break,
                    },
                    () = async { tokio::time::sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                        for batch in batcher.flush() {
                            send(batch, PROCESSOR_BATCH_TIMEOUT_TRIGGER).await;
                        }
                        flush_at = None;
                    }
                }
                gauge!(PROCESSOR_BATCH_PENDING_SPANS, "processor" => task_name.clone())
                    .set(batcher.pending_spans() as f64);
            }
            for batch in batcher.flush() {
                send(batch, PROCESSOR_BATCH_TIMEOUT_TRIGGER).await;
            }
            gauge!(PROCESSOR_BATCH_PENDING_SPANS, "processor" => task_name.clone()).set(0.0);
        });
        BatchStage {
            name,
            tx: std::sync::Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
            deadline,
            next,
        }
    }
}

/// Hands a cut batch to the next stage, waiting out refusals until the shutdown deadline.
async fn deliver(
    name: &str,
    next: &dyn Consumer,
    batch: Vec<EncodedSpan>,
    deadline: &std::sync::Mutex<Option<Instant>>,
) {
    loop {
        let n = batch.len() as u64;
        match next.consume(batch.clone()).await {
            Ok(()) | Err(ConsumeError::Failed(_)) => return, // failures are counted where they happen
            Err(ConsumeError::ShuttingDown) => {
                counter!(PROCESSOR_DROPPED_SPANS, "processor" => name.to_string(), "reason" => "shutdown").increment(n);
                return;
            }
            Err(ConsumeError::Refused { retry_after, .. }) => {
                let pause = retry_after.min(BATCH_RETRY_PAUSE_MAX);
                let past = deadline
                    .lock()
                    .expect("deadline lock")
                    .is_some_and(|d| Instant::now() + pause >= d);
                if past {
                    tracing::error!(processor = %name, spans = n, "next stage still refusing at the shutdown deadline; dropping batch");
                    counter!(PROCESSOR_DROPPED_SPANS, "processor" => name.to_string(), "reason" => "shutdown").increment(n);
                    return;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl Consumer for BatchStage {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let n = spans.len() as u64;
            counter!(PROCESSOR_INCOMING_ITEMS, "processor" => self.name.clone()).increment(n);
            let Some(tx) = self.tx.lock().expect("tx lock").clone() else {
                return Err(ConsumeError::ShuttingDown);
            };
            match tx.try_send(spans) {
                Ok(()) => {
                    counter!(PROCESSOR_OUTGOING_ITEMS, "processor" => self.name.clone())
                        .increment(n);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    counter!(PROCESSOR_REFUSED_SPANS, "processor" => self.name.clone())
                        .increment(n);
                    Err(ConsumeError::Refused {
                        reason: RefuseReason::BatchQueueFull,
                        retry_after: Duration::from_secs(1),
                    })
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(ConsumeError::ShuttingDown),
            }
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            *self.deadline.lock().expect("deadline lock") = Some(deadline);
            drop(self.tx.lock().expect("tx lock").take());
            if let Some(task) = self.task.lock().await.take() {
                let _ = task.await;
            }
            self.next.shutdown(deadline).await;
        })
    }
}

/// A receiver feeding several pipelines gives each its own copy.
pub struct Tee {
    pub pipelines: Vec<Arc<dyn Consumer>>,
}

impl Consumer for Tee {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.consume_from(spans, Client::default())
    }

    fn consume_from(
        &self,
        spans: Vec<EncodedSpan>,
        client: Client,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let (last, rest) = self
                .pipelines
                .split_last()
                .expect("a receiver feeds at least one pipeline");
            for p in rest {
                p.consume_from(spans.clone(), client).await?;
            }
            last.consume_from(spans, client).await
        })
    }

    /// Pipelines can be shared by several receivers, so the service shuts each down once,
    /// directly; a tee has nothing of its own to flush.
    fn shutdown(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
