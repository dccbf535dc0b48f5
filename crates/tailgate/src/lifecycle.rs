//! Stopping: SIGTERM and SIGINT are listened for from a command's first instant, so a signal
//! during startup stops the start instead of being lost (or ignored: a background job of a
//! non-interactive shell inherits SIGINT ignored, and only an installed handler undoes that);
//! and one line at the end says what shutdown flushed.

use std::time::Duration;

use tailgate_pipeline::telemetry::{self, sum_metric};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

/// Both stop signals, installed when created.
pub struct StopSignal {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignal {
    /// Installs the handlers; call first thing in a command, inside the runtime.
    pub fn install() -> anyhow::Result<StopSignal> {
        Ok(StopSignal {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    /// Runs `startup` unless a signal comes first. On a signal the partly started work is
    /// dropped (the process exits next, which ends what it spawned) and `None` comes back.
    pub async fn unless_stopped<T>(
        &mut self,
        what: &str,
        startup: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<Option<T>> {
        tokio::select! {
            r = startup => r.map(Some),
            name = self.recv() => {
                tracing::warn!(signal = name, "stopped while starting {what}");
                eprintln!("tailgate: {name} while starting {what}: stopped");
                Ok(None)
            }
        }
    }
}

/// Counters read before shutdown, to say afterwards what it flushed.
pub struct ShutdownReport {
    started: Instant,
    exported: f64,
    failed_at_shutdown: f64,
    handed_off: f64,
}

impl ShutdownReport {
    pub fn begin() -> ShutdownReport {
        let m = telemetry::render();
        ShutdownReport {
            started: Instant::now(),
            exported: sum_metric(&m, telemetry::EXPORTER_SENT_SPANS, &[]),
            failed_at_shutdown: sum_metric(
                &m,
                telemetry::EXPORTER_SEND_FAILED_SPANS,
                &["reason=\"shutdown\""],
            ),
            handed_off: sum_metric(&m, tailgate_cluster::CLUSTER_HANDOFF_SENT_TRACES, &[]),
        }
    }

    /// The one line printed when shutdown is done.
    pub fn line(&self, timeout: Duration) -> String {
        let m = telemetry::render();
        let exported = sum_metric(&m, telemetry::EXPORTER_SENT_SPANS, &[]) - self.exported;
        let failed = sum_metric(
            &m,
            telemetry::EXPORTER_SEND_FAILED_SPANS,
            &["reason=\"shutdown\""],
        ) - self.failed_at_shutdown;
        let handed_off =
            sum_metric(&m, tailgate_cluster::CLUSTER_HANDOFF_SENT_TRACES, &[]) - self.handed_off;
        format!(
            "shutdown complete in {:.1}s (timeout {:?}): flushed {exported:.0} spans to exporters, handed off {handed_off:.0} traces, gave up on {failed:.0} spans at the deadline",
            self.started.elapsed().as_secs_f64(),
            timeout
        )
    }
}
