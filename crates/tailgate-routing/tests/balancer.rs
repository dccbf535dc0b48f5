//! The `loadbalancing` exporter's accounting: a bounded queue that refuses retryably, and a
//! shutdown that counts what it could not deliver.

#![allow(clippy::unwrap_used, reason = "a test: a panic is the failure report")]

use std::time::Duration;

use prost::Message;
use tailgate_config::ExporterConfig;
use tailgate_otlp::EncodedSpan;
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tailgate_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tailgate_pipeline::consumer::{ConsumeError, Consumer, RefuseReason};
use tailgate_routing::LoadBalancer;

fn spans(n: usize, trace_seed: u8) -> Vec<EncodedSpan> {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        trace_id: {
                            let mut t = vec![trace_seed; 16];
                            t[0] = (i % 251) as u8 + 1;
                            t
                        },
                        span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
                        name: "x".repeat(100),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    tailgate_otlp::scan_export_request(&bytes::Bytes::from(req.encode_to_vec()))
        .unwrap()
        .spans
}

fn config(hostnames: &str) -> tailgate_config::agent::LoadBalancingConfig {
    let yaml = format!(
        "receivers:\n  otlp:\nexporters:\n  loadbalancing:\n    queue_limit_mib: 1\n    protocol:\n      otlp:\n        tls:\n          insecure: true\n        timeout: 200ms\n        retry_on_failure:\n          initial_interval: 50ms\n          max_interval: 100ms\n    resolver:\n      static:\n        hostnames: [{hostnames}]\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [loadbalancing]\n"
    );
    let cfg =
        tailgate_config::load_str(&yaml, "t.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    match cfg.exporters.values().next().unwrap() {
        ExporterConfig::LoadBalancing(lb) => lb.clone(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn an_unreachable_backend_fills_the_byte_budget_then_batches_are_refused_retryably() {
    let metrics = tailgate_pipeline::telemetry::recorder();
    // Nothing listens on port 9 (discard) on loopback: every attempt fails retryably.
    let lb = LoadBalancer::start(
        "loadbalancing".into(),
        &config("127.0.0.1:9"),
        tailgate_pipeline::net::tcp(),
        1,
    )
    .await
    .unwrap();
    let mut taken = 0;
    let refused = loop {
        match lb.consume(spans(1000, taken as u8 + 1)).await {
            Ok(()) => taken += 1,
            Err(e) => break e,
        }
        assert!(taken < 100, "the 1 MiB budget never filled");
    };
    assert!(
        matches!(
            refused,
            ConsumeError::Refused {
                reason: RefuseReason::ExporterQueueFull,
                ..
            }
        ),
        "{refused:?}"
    );
    let (bytes, held_spans) = lb.held();
    assert_eq!(
        held_spans,
        taken * 1000,
        "everything taken is still held for retry"
    );
    assert!(bytes <= 1024 * 1024, "within the budget: {bytes}");

    // Shutdown: nothing more is taken; what is still held is counted as failed at the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    lb.shutdown(deadline).await;
    assert!(tokio::time::Instant::now() >= deadline);
    assert!(matches!(
        lb.consume(spans(1, 9)).await,
        Err(ConsumeError::ShuttingDown)
    ));

    // Every span is accounted for: refused at the door, or failed at shutdown.
    let text = metrics.render();
    let value = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value(
            "otelcol_exporter_enqueue_failed_spans_total",
            "loadbalancing"
        ),
        1000.0
    );
    assert_eq!(
        value(
            "otelcol_exporter_send_failed_spans_total",
            "reason=\"shutdown\""
        ),
        (taken * 1000) as f64,
        "{text}"
    );
    assert_eq!(
        value("otelcol_exporter_sent_spans_total", "loadbalancing"),
        0.0
    );
}
