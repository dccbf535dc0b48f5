//! Connectors: components that end traces pipelines and start metrics pipelines.
//! `spanmetrics` counts every span its traces pipelines receive ([`SpanMetricsConnector`]),
//! and every `metrics_flush_interval` hands the metrics to the exporters of the metrics
//! pipelines it feeds ([`sinks`]). Its exemplars link only to kept traces: the sampling
//! stages report what they kept to the [`exemplars::ExemplarBoard`].

pub mod exemplars;
pub mod sinks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge};
use tailgate_config::connectors::ConnectorConfig;
use tailgate_config::{ComponentId, Config, ProcessorConfig, Signal};
use tailgate_metrics::model::MetricsBatch;
use tailgate_metrics::spanmetrics::{Fate, SpanMetrics};
use tailgate_otlp::{EncodedSpan, TraceId};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consumer::{BoxFuture, ConsumeError, Consumer};
use crate::telemetry::{SPANMETRICS_SERIES, SPANMETRICS_SPANS};
use exemplars::ExemplarBoard;
use sinks::{MetricsSink, start_sink};

/// An exemplar candidate's trace is given up this long after the longest `decision_wait`:
/// by then it was decided, and not kept here (dropped, or owned by another gateway), and its
/// slot goes to a newer candidate.
const EXEMPLAR_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// The connectors of a service and the metrics exporters they feed.
#[derive(Default)]
pub struct Connectors {
    pub by_id: BTreeMap<ComponentId, Arc<SpanMetricsConnector>>,
    pub sinks: BTreeMap<ComponentId, Arc<dyn MetricsSink>>,
    /// Shared with the sampling stages when some connector keeps exemplars.
    pub board: Option<Arc<ExemplarBoard>>,
}

impl Connectors {
    /// Starts every connector some pipeline uses, and the exporters of the metrics pipelines
    /// (gRPC ones connect through `network`; `seed` drives retry jitter).
    pub async fn start(
        cfg: &Config,
        seed: u64,
        network: &dyn crate::net::Network,
    ) -> anyhow::Result<Connectors> {
        let mut out = Connectors::default();
        for p in cfg.pipelines(Signal::Metrics) {
            for id in &p.exporters {
                if !out.sinks.contains_key(id) {
                    let sink = start_sink(id, &cfg.exporters[id], seed, network).await?;
                    out.sinks.insert(id.clone(), sink);
                }
            }
        }
        let exemplars = cfg.connectors.values().any(|c| {
            let ConnectorConfig::SpanMetrics(s) = c;
            s.exemplars.enabled
        });
        if exemplars {
            out.board = Some(Arc::new(ExemplarBoard::new(
                longest_decision_wait(cfg) + EXEMPLAR_WAIT_MARGIN,
            )));
        }
        let instance_id = instance_id();
        for (i, (id, c)) in cfg.connectors.iter().enumerate() {
            let ConnectorConfig::SpanMetrics(s) = c;
            let sinks: Vec<Arc<dyn MetricsSink>> = cfg
                .pipelines(Signal::Metrics)
                .filter(|p| p.receivers.contains(id))
                .flat_map(|p| &p.exporters)
                .map(|e| Arc::clone(&out.sinks[e]))
                .collect();
            let aggregator = SpanMetrics::new(s, instance_id.clone(), seed ^ i as u64);
            let connector = SpanMetricsConnector::start(
                id.to_string(),
                aggregator,
                s.metrics_flush_interval.0,
                sinks,
                out.board.clone(),
            );
            out.by_id.insert(id.clone(), connector);
        }
        Ok(out)
    }

    /// Flushes every connector one last time, then drains the metrics exporters.
    pub async fn shutdown(&self, deadline: Instant) {
        for c in self.by_id.values() {
            c.stop().await;
        }
        for s in self.sinks.values() {
            s.shutdown(deadline).await;
        }
    }
}

fn longest_decision_wait(cfg: &Config) -> Duration {
    cfg.processors
        .values()
        .filter_map(|p| match p {
            ProcessorConfig::TailSampling(t) => Some(t.decision_wait.0),
            _ => None,
        })
        .max()
        .unwrap_or_default()
}

/// This process's `collector.instance.id`: a random UUID, as the collector makes one per
/// start (series from several gateways must not collide where their metrics meet).
fn instance_id() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// `spanmetrics`: a traces pipeline's exporter whose metrics go to metrics pipelines.
pub struct SpanMetricsConnector {
    name: String,
    spans_counted: metrics::Counter,
    aggregator: Mutex<SpanMetrics>,
    board: Option<Arc<ExemplarBoard>>,
    sinks: Vec<Arc<dyn MetricsSink>>,
    epoch: Instant,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl SpanMetricsConnector {
    fn start(
        name: String,
        aggregator: SpanMetrics,
        interval: Duration,
        sinks: Vec<Arc<dyn MetricsSink>>,
        board: Option<Arc<ExemplarBoard>>,
    ) -> Arc<Self> {
        let me = Arc::new(SpanMetricsConnector {
            spans_counted: counter!(SPANMETRICS_SPANS, "connector" => name.clone()),
            name,
            aggregator: Mutex::new(aggregator),
            board,
            sinks,
            epoch: Instant::now(),
            flusher: Mutex::new(None),
        });
        let weak = Arc::downgrade(&me);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.flush().await;
            }
        });
        *me.flusher.lock().expect("flusher lock") = Some(task);
        me
    }

    /// This interval's metrics to every exporter.
    pub async fn flush(&self) {
        let batch = Arc::new(self.collect());
        for sink in &self.sinks {
            sink.send(Arc::clone(&batch)).await;
        }
    }

    fn collect(&self) -> MetricsBatch {
        let now = self.epoch.elapsed();
        let mut finished: Vec<TraceId> = Vec::new();
        let board = self.board.as_deref();
        let mut fate = |id: &TraceId, age: Duration| match board {
            Some(b) => b.fate(id, age),
            None => Fate::Gone,
        };
        let (batch, series) = {
            let mut agg = self.aggregator.lock().expect("aggregator lock");
            let batch = agg.flush(now, unix_nano(), &mut fate, &mut finished);
            (batch, agg.series())
        };
        if let Some(b) = board {
            b.forget(&finished);
        }
        gauge!(SPANMETRICS_SERIES, "connector" => self.name.clone()).set(series as f64);
        batch
    }

    async fn stop(&self) {
        if let Some(task) = self.flusher.lock().expect("flusher lock").take() {
            task.abort();
        }
        self.flush().await;
    }
}

fn unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Consumer for SpanMetricsConnector {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let mut watched = Vec::new();
            self.aggregator.lock().expect("aggregator lock").ingest(
                &spans,
                self.epoch.elapsed(),
                unix_nano(),
                &mut watched,
            );
            self.spans_counted.increment(spans.len() as u64);
            if let Some(b) = &self.board
                && !watched.is_empty()
            {
                b.watch(&watched);
            }
            Ok(())
        })
    }

    /// Each traces pipeline ending here shuts it down; the service flushes it last, once
    /// (`Connectors::shutdown`), after every pipeline has delivered.
    fn shutdown(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
