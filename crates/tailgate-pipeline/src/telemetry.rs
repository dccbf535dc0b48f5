//! Self-telemetry: metric names and the Prometheus endpoint.
//!
//! Names follow the OpenTelemetry Collector's `otelcol_*` metrics where an equivalent exists,
//! as its Prometheus endpoint shows them (counters end in `_total`), so existing dashboards and
//! alerts keep working. Tailgate's own metrics start with `tailgate_`. `docs/metrics.md` lists
//! them all; keep it in step with this file.

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
pub const PROCESSOR_FILTER_SPANEVENTS_FILTERED: &str =
    "otelcol_processor_filter_spanevents_filtered_total";
pub const PROCESSOR_BATCH_SEND_SIZE: &str = "otelcol_processor_batch_batch_send_size";
pub const PROCESSOR_BATCH_SIZE_TRIGGER: &str =
    "otelcol_processor_batch_batch_size_trigger_send_total";
pub const PROCESSOR_BATCH_TIMEOUT_TRIGGER: &str =
    "otelcol_processor_batch_timeout_trigger_send_total";
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

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    crate::service::recorder().render()
}

/// Sum of the series of `name` whose labels contain `label_filter` (e.g. `exporter="file"`;
/// empty for all), from a Prometheus text rendering. For summaries and tests.
pub fn sum_metric(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_series_of_one_metric_only() {
        let text = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"2\"} 3\nab 100\na 1\n";
        assert_eq!(super::sum_metric(text, "a", ""), 6.0);
        assert_eq!(super::sum_metric(text, "a", "x=\"2\""), 3.0);
    }
}
