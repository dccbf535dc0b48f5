//! `debug` exporter: one summary line per batch on the log (`normal`: plus a line per span;
//! `detailed`: the batch as OTLP/JSON).

use std::collections::BTreeSet;

use tailgate_config::ComponentId;
use tailgate_config::components::{DebugExporterConfig, Verbosity};
use tailgate_otlp::scan_export_request;

use super::{ExportBatch, ExportError, ExportOutcome, Exporter};
use crate::consumer::BoxFuture;

pub struct DebugExporter {
    name: String,
    verbosity: Verbosity,
}

impl DebugExporter {
    pub fn new(id: &ComponentId, cfg: &DebugExporterConfig) -> Self {
        DebugExporter {
            name: id.to_string(),
            verbosity: cfg.verbosity,
        }
    }
}

impl Exporter for DebugExporter {
    fn export<'a>(
        &'a self,
        batch: &'a ExportBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, ExportError>> {
        Box::pin(async move {
            let scanned =
                scan_export_request(&batch.request).map_err(|e| ExportError::Permanent {
                    message: e.to_string(),
                })?;
            let traces: BTreeSet<_> = scanned.spans.iter().map(|s| s.meta.trace_id).collect();
            let errors = scanned
                .spans
                .iter()
                .filter(|s| s.meta.status_code == tailgate_otlp::StatusCode::ERROR)
                .count();
            tracing::info!(
                exporter = %self.name,
                "{} spans, {} traces, {} error spans, {} bytes",
                scanned.spans.len(),
                traces.len(),
                errors,
                batch.request.len()
            );
            match self.verbosity {
                Verbosity::Basic => {}
                Verbosity::Normal => {
                    for s in &scanned.spans {
                        tracing::info!(exporter = %self.name, "{} {} {} {}ns", s.meta.trace_id, s.meta.span_id, s.name(), s.meta.duration_nanos());
                    }
                }
                Verbosity::Detailed => {
                    let json =
                        tailgate_otlp::json::request_to_json(&batch.request).unwrap_or_default();
                    tracing::info!(exporter = %self.name, "{json}");
                }
            }
            Ok(ExportOutcome::default())
        })
    }
}
