//! Self-telemetry: metric names and the Prometheus endpoint.
//!
//! Names follow the OpenTelemetry Collector's `otelcol_*` metrics where an equivalent exists,
//! as its Prometheus endpoint shows them (counters end in `_total`), so existing dashboards and
//! alerts keep working. Tailgate's own metrics start with `tailgate_`. `docs/metrics.md` lists
//! them all; keep it in step with this file.

use std::net::SocketAddr;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusBuilder;

// Receivers. Labels: receiver, transport (grpc | http).
pub const RECEIVER_ACCEPTED_SPANS: &str = "otelcol_receiver_accepted_spans_total";
pub const RECEIVER_REFUSED_SPANS: &str = "otelcol_receiver_refused_spans_total";
/// Spans rejected one by one for bad IDs (OTLP partial success). Labels: receiver, transport.
pub const RECEIVER_REJECTED_SPANS: &str = "tailgate_receiver_rejected_spans_total";
/// Whole requests refused as undecodable or too large. Labels: receiver, transport, reason.
pub const RECEIVER_BAD_REQUESTS: &str = "tailgate_receiver_bad_requests_total";

// Processors. Label: processor.
pub const PROCESSOR_INCOMING_ITEMS: &str = "otelcol_processor_incoming_items_total";
pub const PROCESSOR_OUTGOING_ITEMS: &str = "otelcol_processor_outgoing_items_total";
pub const PROCESSOR_REFUSED_SPANS: &str = "otelcol_processor_refused_spans_total";
pub const PROCESSOR_FILTER_SPANS_FILTERED: &str = "otelcol_processor_filter_spans_filtered_total";
pub const PROCESSOR_FILTER_SPANEVENTS_FILTERED: &str = "otelcol_processor_filter_spanevents_filtered_total";
pub const PROCESSOR_BATCH_SEND_SIZE: &str = "otelcol_processor_batch_batch_send_size";
pub const PROCESSOR_BATCH_SIZE_TRIGGER: &str = "otelcol_processor_batch_batch_size_trigger_send_total";
pub const PROCESSOR_BATCH_TIMEOUT_TRIGGER: &str = "otelcol_processor_batch_timeout_trigger_send_total";
/// Spans held in a batch processor waiting to be cut. Label: processor.
pub const PROCESSOR_BATCH_PENDING_SPANS: &str = "tailgate_processor_batch_pending_spans";

// Exporters. Label: exporter.
pub const EXPORTER_SENT_SPANS: &str = "otelcol_exporter_sent_spans_total";
/// Label `reason`: permanent | retries_exhausted | partial_success | shutdown.
pub const EXPORTER_SEND_FAILED_SPANS: &str = "otelcol_exporter_send_failed_spans_total";
pub const EXPORTER_ENQUEUE_FAILED_SPANS: &str = "otelcol_exporter_enqueue_failed_spans_total";
pub const EXPORTER_QUEUE_SIZE: &str = "otelcol_exporter_queue_size";
pub const EXPORTER_QUEUE_CAPACITY: &str = "otelcol_exporter_queue_capacity";
/// Retries of a failed export attempt.
pub const EXPORTER_RETRIES: &str = "tailgate_exporter_retries_total";

// Process.
pub const PROCESS_MEMORY_RSS: &str = "otelcol_process_memory_rss";
pub const PROCESS_UPTIME: &str = "otelcol_process_uptime";
/// The memory limiter's state: 1 while refusing.
pub const MEMORY_LIMITER_REFUSING: &str = "tailgate_memory_limiter_refusing";

/// Installs the global Prometheus recorder serving `/metrics` on `address`. Only the first
/// call in a process installs; later calls (tests running several services) reuse it.
pub fn install_prometheus(address: SocketAddr) -> anyhow::Result<()> {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets(&[1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0])
        .context("metrics buckets")?
        .install()
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    let _ = INSTALLED.set(());
    Ok(())
}

/// Installs a recorder that keeps metrics in memory without serving them, so `metrics::*`
/// calls cost the same when `service.telemetry.metrics.level: none`.
pub fn handle_only() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}
