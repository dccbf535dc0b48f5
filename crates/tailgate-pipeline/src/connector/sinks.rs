//! Where a metrics pipeline's metrics go: its exporters, as [`MetricsSink`]s — `prometheus`
//! (held and served for scraping) and `otlp` (sent as OTLP metrics through a sending queue
//! with retries, like a traces exporter).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use tailgate_config::connectors::PrometheusExporterConfig;
use tailgate_config::{ComponentId, ExporterConfig};
use tailgate_metrics::model::MetricsBatch;
use tailgate_metrics::prometheus::PrometheusStore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consumer::BoxFuture;
use crate::exporter::otlp_grpc::OtlpGrpcExporter;
use crate::exporter::{ExportBatch, ExportedItems, FanOut, ManagedExporter, queue_and_retry};

/// The scrape media type of OpenMetrics 1.0.
const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metrics exporter.
pub trait MetricsSink: Send + Sync {
    fn send(&self, batch: Arc<MetricsBatch>) -> BoxFuture<'_, ()>;
    /// Sends what is queued until `deadline`, then stops.
    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()>;
}

/// Starts the exporter `id` of a metrics pipeline.
pub async fn start_sink(
    id: &ComponentId,
    cfg: &ExporterConfig,
    seed: u64,
    network: &dyn crate::net::Network,
) -> anyhow::Result<Arc<dyn MetricsSink>> {
    match cfg {
        ExporterConfig::Prometheus(p) => Ok(Arc::new(PrometheusSink::start(id, p).await?)),
        ExporterConfig::Otlp(o) => {
            let exporter = OtlpGrpcExporter::for_metrics(id, o, network)?;
            let (queue, retry) = queue_and_retry(cfg);
            let managed = ManagedExporter::start_for(
                ExportedItems::MetricPoints,
                id.to_string(),
                Arc::new(exporter),
                &queue,
                retry,
                seed.rotate_left(17),
            );
            Ok(Arc::new(OtlpMetricsSink {
                fan_out: FanOut::new(vec![managed], seed),
            }))
        }
        _ => anyhow::bail!("exporters.{id}: does not export metrics"),
    }
}

/// `prometheus`: the latest metrics, served on `endpoint` (any path).
pub struct PrometheusSink {
    store: Arc<Mutex<PrometheusStore>>,
    epoch: Instant,
    server: JoinHandle<()>,
    pub address: std::net::SocketAddr,
}

impl PrometheusSink {
    async fn start(id: &ComponentId, cfg: &PrometheusExporterConfig) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(&cfg.endpoint)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "exporters.{id}.endpoint: cannot listen on {}: {e}",
                    cfg.endpoint
                )
            })?;
        let address = listener.local_addr()?;
        let store = Arc::new(Mutex::new(PrometheusStore::new(cfg)));
        let epoch = Instant::now();
        let open_metrics = cfg.enable_open_metrics;
        let scrape_store = Arc::clone(&store);
        let router = Router::new().fallback(move |headers: HeaderMap| {
            let store = Arc::clone(&scrape_store);
            async move {
                let wants_om = open_metrics
                    && headers
                        .get(header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                let body = {
                    let mut s = store.lock().expect("store lock");
                    s.expire(epoch.elapsed());
                    s.render(wants_om)
                };
                let content_type = if wants_om {
                    OPEN_METRICS
                } else {
                    PROMETHEUS_TEXT
                };
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
        });
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "prometheus exporter stopped serving");
            }
        });
        tracing::info!(exporter = %id, %address, "serving metrics for scraping");
        Ok(PrometheusSink {
            store,
            epoch,
            server,
            address,
        })
    }
}

impl MetricsSink for PrometheusSink {
    fn send(&self, batch: Arc<MetricsBatch>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.store
                .lock()
                .expect("store lock")
                .apply(&batch, self.epoch.elapsed());
        })
    }

    fn shutdown(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.server.abort() })
    }
}

/// `otlp` in a metrics pipeline.
struct OtlpMetricsSink {
    fan_out: FanOut,
}

impl MetricsSink for OtlpMetricsSink {
    fn send(&self, batch: Arc<MetricsBatch>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let points = batch.points();
            if points == 0 {
                return;
            }
            let export = ExportBatch {
                request: tailgate_metrics::otlp::encode(&batch),
                spans: points,
            };
            // A full queue was counted (`enqueue_failed_metric_points`); the next flush
            // carries the cumulative values again.
            if let Err(e) = self.fan_out.send_batch(export).await {
                tracing::warn!(error = %e, "metrics export refused");
            }
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for e in self.fan_out.exporters() {
                e.shutdown(deadline).await;
            }
        })
    }
}
