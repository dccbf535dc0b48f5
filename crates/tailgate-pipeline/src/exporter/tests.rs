//! The retry loop at shutdown, on tokio's paused clock.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tailgate_config::GoDuration;

use super::*;

/// A backend that fails every request (retryably) until `recovers_at`, then accepts.
struct RecoveringSink {
    recovers_at: Instant,
    accepted_spans: AtomicU64,
    attempts: StdMutex<Vec<Instant>>,
}

impl Exporter for RecoveringSink {
    fn export<'a>(
        &'a self,
        batch: &'a ExportBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, ExportError>> {
        Box::pin(async move {
            let now = Instant::now();
            self.attempts.lock().expect("attempts lock").push(now);
            if now < self.recovers_at {
                return Err(ExportError::Retryable {
                    message: "backend unavailable".into(),
                    retry_after: None,
                });
            }
            self.accepted_spans
                .fetch_add(batch.spans, Ordering::Relaxed);
            Ok(ExportOutcome::default())
        })
    }
}

/// The collector's default backoff without jitter: 5 s, then 7.5 s, ...
fn retry() -> RetryConfig {
    RetryConfig {
        enabled: true,
        initial_interval: GoDuration::from_secs(5),
        max_interval: GoDuration::from_secs(30),
        max_elapsed_time: GoDuration::from_secs(300),
        multiplier: 1.5,
        randomization_factor: 0.0,
    }
}

fn batch() -> ExportBatch {
    ExportBatch {
        request: Bytes::from_static(b""),
        spans: 4,
    }
}

async fn run(
    recovers_after: Duration,
    shutdown_after: Duration,
    deadline_after: Duration,
) -> Arc<RecoveringSink> {
    let start = Instant::now();
    let sink = Arc::new(RecoveringSink {
        recovers_at: start + recovers_after,
        accepted_spans: AtomicU64::new(0),
        attempts: StdMutex::new(Vec::new()),
    });
    let queue = QueueConfig {
        enabled: true,
        num_consumers: 1,
        queue_size: 10,
    };
    let exporter = ManagedExporter::start("otlp".into(), sink.clone(), &queue, retry(), 1);
    exporter
        .queue_sender()
        .expect("a queued exporter")
        .send(batch())
        .await
        .expect("the queue takes the batch");
    tokio::time::sleep_until(start + shutdown_after).await;
    exporter.shutdown(start + deadline_after).await;
    assert!(
        Instant::now() <= start + deadline_after,
        "shutdown ran past its deadline"
    );
    sink
}

#[tokio::test(start_paused = true)]
async fn backend_recovering_before_the_shutdown_deadline_gets_the_batch() {
    // Attempts at 0 s and (woken by shutdown) 1 s fail; the next backoff (7.5 s) would pass
    // the deadline at 4 s, so the last attempt is made at 3.5 s, after the recovery at 3 s.
    let sink = run(
        Duration::from_secs(3),
        Duration::from_secs(1),
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(sink.accepted_spans.load(Ordering::Relaxed), 4);
    let attempts = sink.attempts.lock().expect("attempts lock").len();
    assert_eq!(attempts, 3, "first try, the try at shutdown, the last try");
}

#[tokio::test(start_paused = true)]
async fn backend_down_through_the_deadline_costs_one_last_attempt_then_the_drop() {
    let sink = run(
        Duration::from_secs(60),
        Duration::from_secs(1),
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(sink.accepted_spans.load(Ordering::Relaxed), 0);
    let attempts = sink.attempts.lock().expect("attempts lock").clone();
    assert_eq!(attempts.len(), 3);
    // The last attempt leaves the time one attempt is given before the deadline.
    let last = attempts[2] - attempts[0];
    assert_eq!(last, Duration::from_secs(4) - LAST_ATTEMPT_TIME);
}
