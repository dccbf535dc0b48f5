//! Self-telemetry: metric names and the Prometheus endpoint.
//!
//! Names follow the OpenTelemetry Collector's `otelcol_*` metrics where an equivalent exists,
//! as its Prometheus endpoint shows them (counters end in `_total`), so existing dashboards and
//! alerts keep working. Tailgate's own metrics start with `tailgate_`. `docs/metrics.md` lists
//! them all; keep it in step with this file.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

// Receivers. Labels: receiver, transport (grpc | http).
pub const RECEIVER_ACCEPTED_SPANS: &str = "otelcol_receiver_accepted_spans_total";
pub const RECEIVER_REFUSED_SPANS: &str = "otelcol_receiver_refused_spans_total";
/// Spans rejected one by one for bad IDs (OTLP partial success). Labels: receiver, transport.
pub const RECEIVER_REJECTED_SPANS: &str = "tailgate_receiver_rejected_spans_total";
/// Requests received, by the compression their sender named. Labels: receiver, transport,
/// encoding.
pub const RECEIVER_REQUESTS: &str = "tailgate_receiver_requests_total";
/// Whole requests refused as undecodable or too large. Labels: receiver, transport, reason.
pub const RECEIVER_BAD_REQUESTS: &str = "tailgate_receiver_bad_requests_total";
/// TLS handshakes a receiver refused or that timed out (no certificate, an untrusted one, a
/// plaintext client, a client too slow to finish). Labels: listener, reason.
pub const TLS_HANDSHAKE_FAILURES: &str = "tailgate_tls_handshake_failures_total";
/// Re-reads of a listener's certificate files. Labels: listener, result (ok | failed).
pub const TLS_RELOADS: &str = "tailgate_tls_reloads_total";
/// Connections a receiver closed to bound what clients hold (`listener`, `reason`).
pub const CONNECTIONS_CLOSED: &str = "tailgate_receiver_connections_closed_total";
/// Connections a receiver holds open (`listener`).
pub const CONNECTIONS_OPEN: &str = "tailgate_receiver_connections_open";

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
/// The same three for a metrics pipeline's exporters (data points, not spans).
pub const EXPORTER_SENT_METRIC_POINTS: &str = "otelcol_exporter_sent_metric_points_total";
pub const EXPORTER_SEND_FAILED_METRIC_POINTS: &str =
    "otelcol_exporter_send_failed_metric_points_total";
pub const EXPORTER_ENQUEUE_FAILED_METRIC_POINTS: &str =
    "otelcol_exporter_enqueue_failed_metric_points_total";
pub const EXPORTER_QUEUE_SIZE: &str = "otelcol_exporter_queue_size";
pub const EXPORTER_QUEUE_CAPACITY: &str = "otelcol_exporter_queue_capacity";
/// Retries of a failed export attempt.
pub const EXPORTER_RETRIES: &str = "tailgate_exporter_retries_total";

// Tail sampling, mirroring `otelcol_processor_tail_sampling_*`. Label: processor.
/// Labels: policy, decision (sampled | not_sampled | dropped), sampled.
pub const TAIL_SAMPLING_COUNT_TRACES_SAMPLED: &str =
    "otelcol_processor_tail_sampling_count_traces_sampled_total";
/// Final decisions. Labels: decision, sampled.
pub const TAIL_SAMPLING_GLOBAL_COUNT_TRACES_SAMPLED: &str =
    "otelcol_processor_tail_sampling_global_count_traces_sampled_total";
pub const TAIL_SAMPLING_TRACES_ON_MEMORY: &str =
    "otelcol_processor_tail_sampling_sampling_traces_on_memory";
/// Seconds between a decision and a late span of its trace.
pub const TAIL_SAMPLING_LATE_SPAN_AGE: &str =
    "otelcol_processor_tail_sampling_sampling_late_span_age";
/// Traces evicted before a decision. Tailgate never does this: it stays 0 by construction.
pub const TAIL_SAMPLING_TRACE_DROPPED_TOO_EARLY: &str =
    "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total";
pub const TAIL_SAMPLING_NEW_TRACE_ID_RECEIVED: &str =
    "otelcol_processor_tail_sampling_new_trace_id_received_total";
/// Milliseconds a deadline decision ran after its deadline.
pub const TAIL_SAMPLING_DECISION_TIMER_LATENCY: &str =
    "otelcol_processor_tail_sampling_sampling_decision_timer_latency";
/// Late spans settled by the decision cache. Label: sampled.
/// Kept spans whose `tracestate` could not be parsed, so no `ot=th` was recorded.
pub const TAIL_SAMPLING_UNPARSEABLE_TRACESTATE: &str =
    "otelcol_processor_tail_sampling_count_spans_with_unparseable_tracestate_total";
pub const TAIL_SAMPLING_EARLY_RELEASES_FROM_CACHE: &str =
    "otelcol_processor_tail_sampling_early_releases_from_cache_decision_total";
pub const SAMPLING_SPANS_RECEIVED: &str = "tailgate_sampling_spans_received_total";
pub const SAMPLING_SPANS_KEPT: &str = "tailgate_sampling_spans_kept_total";
/// Label reason: policy | late_dropped_trace | shutdown | duplicate | downstream_closed.
pub const SAMPLING_SPANS_DROPPED: &str = "tailgate_sampling_spans_dropped_total";
/// Label reason: buffer_full | num_traces.
pub const SAMPLING_SPANS_REFUSED: &str = "tailgate_sampling_spans_refused_total";
/// Label reason: buffer_full | num_traces | trace_too_large | shutdown.
pub const SAMPLING_EARLY_DECISIONS: &str = "tailgate_sampling_early_decisions_total";
pub const SAMPLING_BUFFERED_BYTES: &str = "tailgate_sampling_buffered_bytes";
pub const SAMPLING_BUFFER_LIMIT_BYTES: &str = "tailgate_sampling_buffer_limit_bytes";
/// Label shard.
pub const SAMPLING_BUFFERED_SPANS: &str = "tailgate_sampling_buffered_spans";
pub const SAMPLING_LATE_SPANS_AFTER_FORGET: &str =
    "tailgate_sampling_late_spans_after_forget_total";
/// Spans this gateway forwarded to their owner / received forwarded from another gateway.
pub const CLUSTER_FORWARDED_OUT_SPANS: &str = "tailgate_cluster_forwarded_spans_total";
pub const CLUSTER_FORWARDED_IN_SPANS: &str = "tailgate_cluster_forwarded_received_spans_total";
/// Spans whose owner could not be reached: kept here and handed off later.
pub const CLUSTER_FORWARD_FAILED_SPANS: &str = "tailgate_cluster_forward_failed_spans_total";
/// Spans kept by the last gateway of a forwarding chain at the hop limit.
pub const CLUSTER_FORWARD_HOP_LIMIT_SPANS: &str = "tailgate_cluster_forward_hop_limit_spans_total";
/// Traces whose handoff failed (they came back and are retried).
pub const CLUSTER_HANDOFF_FAILED_TRACES: &str = "tailgate_cluster_handoff_failed_traces_total";
/// Traces whose handoff failed after their shard stopped (only at the very end of shutdown).
pub const CLUSTER_HANDOFF_LOST_TRACES: &str = "tailgate_cluster_handoff_lost_traces_total";
pub const SAMPLING_TRACES_HANDED_OFF: &str = "tailgate_sampling_traces_handed_off_total";
pub const SAMPLING_TRACES_RECEIVED_BY_HANDOFF: &str =
    "tailgate_sampling_traces_received_by_handoff_total";
/// Replica copies a gateway holds for other owners (`replication_factor: 2`), by what
/// happened to them. Label `event`: received, settled (the owner decided), expired (no
/// decision came), evicted (memory pressure), promoted (this node took the trace over),
/// moved (to the trace's new replica), refused (no budget; the owner counts them
/// unreplicated).
pub const REPLICA_SPANS: &str = "tailgate_replica_spans_total";
/// Traces this gateway took over from a removed owner's copies.
pub const REPLICA_TRACES_PROMOTED: &str = "tailgate_replica_traces_promoted_total";
/// Replica copies held now. Label: shard.
pub const REPLICA_HELD_SPANS: &str = "tailgate_replica_held_spans";
/// Spans an owner copied to their replica and had acknowledged.
pub const REPLICATION_SENT_SPANS: &str = "tailgate_replication_sent_spans_total";
/// Spans an owner accepted without a replica's ack. Label `reason`: timeout, failed,
/// no_replica (a single owner).
pub const REPLICATION_UNREPLICATED_SPANS: &str = "tailgate_replication_unreplicated_spans_total";
/// Decisions an owner told its replicas / failed to.
pub const REPLICATION_SENT_DECISIONS: &str = "tailgate_replication_sent_decisions_total";
pub const REPLICATION_FAILED_DECISIONS: &str = "tailgate_replication_failed_decisions_total";
/// 1 while `replication_factor: 2` has a single owner (nobody to copy to).
pub const REPLICATION_DEGRADED: &str = "tailgate_replication_degraded";
/// Spans whose parent never arrived by decision time. Label: service_name.
pub const ORPHAN_SPANS: &str = "tailgate_orphan_spans_total";

// Process.
pub const PROCESS_MEMORY_RSS: &str = "otelcol_process_memory_rss";
/// Live bytes by the allocator's count (the collector's Go live heap has this name).
pub const PROCESS_HEAP_ALLOC_BYTES: &str = "otelcol_process_runtime_heap_alloc_bytes";
/// Bytes the allocator holds in resident pages, live or free.
pub const PROCESS_ALLOCATOR_RESIDENT_BYTES: &str = "tailgate_process_allocator_resident_bytes";
/// Times the memory tick gave retained free memory back to the operating system.
pub const MEMORY_RELEASES: &str = "tailgate_memory_releases_total";
/// RSS those releases gave back.
pub const MEMORY_RELEASED_BYTES: &str = "tailgate_memory_released_bytes_total";
/// Request bodies received and not yet taken by the pipeline (copied or refused).
pub const RECEIVER_INFLIGHT_BYTES: &str = "tailgate_receiver_inflight_bytes";
/// Encoded batches in an exporter's sending queue or being sent. Label: exporter.
pub const EXPORTER_QUEUE_BYTES: &str = "tailgate_exporter_queue_bytes";
/// Spans a `spanmetrics` connector counted. Label: connector.
pub const SPANMETRICS_SPANS: &str = "tailgate_spanmetrics_spans_total";
/// Series a `spanmetrics` connector holds (all metrics, all resources). Label: connector.
pub const SPANMETRICS_SERIES: &str = "tailgate_spanmetrics_series";
pub const PROCESS_UPTIME: &str = "otelcol_process_uptime";
/// The memory limiter's state: 1 while refusing.
pub const MEMORY_LIMITER_REFUSING: &str = "tailgate_memory_limiter_refusing";

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    recorder().render()
}

/// Sum of the series of `name` whose labels contain every one of `label_filters` (e.g.
/// `exporter="file"`), from a Prometheus text rendering. For summaries and tests.
pub fn sum_metric(text: &str, name: &str, label_filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label_filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The process-wide metrics recorder (installed on first use).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::Matcher;
        // Batch sizes in spans by default; seconds and milliseconds where the unit says so.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                1.0, 8.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
            ])
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(TAIL_SAMPLING_LATE_SPAN_AGE.into()),
                    &[
                        0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    ],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(TAIL_SAMPLING_DECISION_TIMER_LATENCY.into()),
                    &[
                        1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
                    ],
                )
            })
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); then we only render ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_series_of_one_metric_only() {
        let text = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"2\"} 3\nab 100\na 1\n";
        assert_eq!(super::sum_metric(text, "a", &[]), 6.0);
        assert_eq!(super::sum_metric(text, "a", &["x=\"2\""]), 3.0);
    }
}
