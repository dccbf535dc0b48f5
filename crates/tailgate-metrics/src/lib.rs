//! Metrics made from spans, as pure state machines the pipeline drives.
//!
//! - [`spanmetrics`]: the `spanmetrics` connector's aggregation (RED metrics per label set),
//!   with exemplars only of traces the caller says were kept.
//! - [`model`]: what a flush emits; [`otlp`] encodes it as an `ExportMetricsServiceRequest`.
//! - [`prometheus`]: the Prometheus text and OpenMetrics expositions of what the `prometheus`
//!   exporter holds, with the collector's name and label translation.
//!
//! **Invariants:** no I/O, no clock: time is passed in.

pub mod model;
pub mod otlp;
pub mod prometheus;
pub mod spanmetrics;
mod tracestate_count;
