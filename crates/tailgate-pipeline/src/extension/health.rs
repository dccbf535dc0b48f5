//! `health_check` extension: 200 while every receiver listens and every exporter can take
//! data (its sending queue is not full); 503 otherwise. Kubernetes readiness probes point here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::exporter::ManagedExporter;

/// What the health endpoint reports on.
pub struct Health {
    pub receivers_listening: AtomicBool,
    pub exporters: Vec<Arc<ManagedExporter>>,
    pub started: Instant,
}

impl Health {
    pub fn new(exporters: Vec<Arc<ManagedExporter>>) -> Arc<Self> {
        Arc::new(Health {
            receivers_listening: AtomicBool::new(false),
            exporters,
            started: Instant::now(),
        })
    }

    /// Why the service is not ready, or `None` when it is.
    pub fn problem(&self) -> Option<String> {
        if !self.receivers_listening.load(Ordering::Acquire) {
            return Some("receivers are not listening".into());
        }
        let full: Vec<&str> = self
            .exporters
            .iter()
            .filter(|e| !e.has_capacity())
            .map(|e| e.name())
            .collect();
        if !full.is_empty() {
            return Some(format!("exporter queue full: {}", full.join(", ")));
        }
        None
    }

    pub fn respond(&self) -> Response {
        let uptime = self.started.elapsed().as_secs_f64();
        match self.problem() {
            None => (
                StatusCode::OK,
                [("content-type", "application/json")],
                format!("{{\"status\":\"Server available\",\"uptime\":\"{uptime:.0}s\"}}"),
            )
                .into_response(),
            Some(p) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "application/json")],
                format!(
                    "{{\"status\":\"Server not available\",\"reason\":{}}}",
                    serde_json::Value::String(p)
                ),
            )
                .into_response(),
        }
    }
}
