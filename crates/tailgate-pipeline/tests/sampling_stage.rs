//! Goal: the tail-sampling stage decides on time — at root + quiet period, or at the deadline
//! — delivers kept traces whole, lets late spans follow the decision, and refuses (never
//! drops) when its byte budget is full. Method: the real stage and ractor shard actors on
//! tokio's paused clock, with a capturing next stage.

#![allow(clippy::unwrap_used, reason = "a test: a panic is the failure report")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tailgate_config::sampling::TailSamplingConfig;
use tailgate_otlp::proto::trace::v1::Span;
use tailgate_otlp::{EncodedSpan, scan_export_request};
use tailgate_pipeline::consumer::{BoxFuture, ConsumeError, Consumer};
use tailgate_pipeline::sampling::{SamplingSetup, TailSamplingStage};
use tailgate_test_support::{encoded, status};
use tokio::time::{Instant, advance};

#[derive(Default)]
struct Capture {
    spans: Mutex<Vec<(Duration, String)>>,
    start: Mutex<Option<Instant>>,
}

impl Consumer for Capture {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let at = self
            .start
            .lock()
            .unwrap()
            .map(|s| s.elapsed())
            .unwrap_or_default();
        let mut out = self.spans.lock().unwrap();
        for s in spans {
            out.push((at, s.name().to_string()));
        }
        Box::pin(async { Ok(()) })
    }
    fn shutdown(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn spans(trace: u8, items: &[(&str, bool, bool)]) -> Vec<EncodedSpan> {
    // (name, is_root, error)
    let spans = items
        .iter()
        .enumerate()
        .map(|(i, (name, root, err))| Span {
            trace_id: vec![trace; 16],
            span_id: {
                // Unique per name, so separate calls never collide by accident.
                let mut id = [0x5Au8; 8];
                for (k, b) in name.bytes().enumerate() {
                    id[k % 8] ^= b.wrapping_add(i as u8);
                }
                id.to_vec()
            },
            parent_span_id: if *root { vec![] } else { vec![0xAA; 8] },
            name: name.to_string(),
            status: status(if *err { 2 } else { 0 }),
            ..Default::default()
        })
        .collect();
    scan_export_request(&encoded(Vec::new(), spans))
        .unwrap()
        .spans
}

fn config(yaml_policies: &str, extra: &str) -> TailSamplingConfig {
    let text = format!(
        "decision_wait: 10s\ndecision_wait_after_root_received: 2s\n{extra}policies:\n{yaml_policies}"
    );
    serde_saphyr::from_str(&text).unwrap()
}

const ERRORS: &str =
    "  - name: errors\n    type: status_code\n    status_code: {status_codes: [ERROR]}\n";

async fn stage(cfg: TailSamplingConfig, budget: u64) -> (TailSamplingStage, Arc<Capture>) {
    let capture = Arc::new(Capture::default());
    *capture.start.lock().unwrap() = Some(Instant::now());
    let setup = SamplingSetup {
        name: "tail_sampling".into(),
        cfg,
        buffer_limit_bytes: budget,
        shards: 2,
        kept_observer: None,
    };
    (
        TailSamplingStage::start(setup, capture.clone(), None)
            .await
            .unwrap(),
        capture,
    )
}

/// Lets actors run and paused time advance to the next timer.
async fn settle(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        tokio::task::yield_now().await;
        advance(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn root_plus_quiet_period_deadline_and_late_spans_on_the_paused_clock() {
    let (stage, capture) = stage(config(ERRORS, ""), 1 << 20).await;
    // Trace 1: error child now, root at 1s -> decided at 3s.
    stage
        .consume(spans(1, &[("child-1", false, true)]))
        .await
        .unwrap();
    settle(Duration::from_secs(1)).await;
    stage
        .consume(spans(1, &[("root-1", true, false)]))
        .await
        .unwrap();
    // Trace 2: error, no root -> decided at its 10s deadline (sent at 1s -> 11s).
    stage
        .consume(spans(2, &[("orphan-2", false, true)]))
        .await
        .unwrap();
    settle(Duration::from_millis(1500)).await;
    assert!(
        capture.spans.lock().unwrap().is_empty(),
        "nothing before root + 2s"
    );
    settle(Duration::from_millis(700)).await;
    let got = capture.spans.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        vec!["child-1", "root-1"]
    );
    assert!(
        got[0].0 >= Duration::from_secs(3) && got[0].0 <= Duration::from_millis(3050),
        "decided at {:?}",
        got[0].0
    );
    settle(Duration::from_secs(9)).await;
    let got = capture.spans.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].1, "orphan-2");
    assert!(
        got[2].0 >= Duration::from_secs(11) && got[2].0 <= Duration::from_millis(11_050),
        "deadline at {:?}",
        got[2].0
    );
    // A late span of kept trace 1 is exported at once, not buffered for another wait.
    stage
        .consume(spans(1, &[("late-1", false, false)]))
        .await
        .unwrap();
    settle(Duration::from_millis(50)).await;
    assert_eq!(capture.spans.lock().unwrap().last().unwrap().1, "late-1");
    stage
        .shutdown(Instant::now() + Duration::from_secs(5))
        .await;
}

#[tokio::test(start_paused = true)]
async fn full_budget_refuses_retryably_and_shutdown_decides_what_is_pending() {
    let one = spans(1, &[("x", true, true)])[0].bytes().len() as u64;
    let (stage, capture) = stage(config(ERRORS, ""), 3 * one).await;
    stage.consume(spans(1, &[("a", true, true)])).await.unwrap();
    stage.consume(spans(2, &[("b", true, true)])).await.unwrap();
    stage.consume(spans(3, &[("c", true, true)])).await.unwrap();
    let err = stage
        .consume(spans(4, &[("d", true, true)]))
        .await
        .unwrap_err();
    assert!(matches!(err, ConsumeError::Refused { .. }), "{err:?}");
    settle(Duration::from_millis(100)).await;
    // Shutdown decides the pending traces on the data at hand: all three had errors.
    stage
        .shutdown(Instant::now() + Duration::from_secs(5))
        .await;
    let mut names: Vec<String> = capture
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "b", "c"]);
}
