//! The metrics a connector emits at each flush: the few OTLP shapes span metrics need
//! (monotonic sums, explicit-bucket histograms), with exemplars, grouped by resource.

use std::sync::Arc;

use tailgate_otlp::{SpanId, TraceId};

/// An attribute value, typed as the span's attribute was.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl AttrValue {
    /// The value as a Prometheus label value (the collector's `AsString`).
    pub fn as_label(&self) -> String {
        match self {
            AttrValue::Str(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => format_double(*d),
            AttrValue::Bool(b) => b.to_string(),
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` for ordinary values: the shortest text that
/// reads back as the same number.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "NaN".into()
    } else if d.is_infinite() {
        if d > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        let s = format!("{d}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    }
}

/// Attributes in the order they were built.
pub type Attributes = Arc<[(String, AttrValue)]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// One flush's metrics.
#[derive(Debug, Clone, Default)]
pub struct MetricsBatch {
    pub resources: Vec<ResourceMetrics>,
}

impl MetricsBatch {
    /// Data points in the batch (what exporters count).
    pub fn points(&self) -> u64 {
        self.resources
            .iter()
            .flat_map(|r| &r.metrics)
            .map(|m| match &m.data {
                MetricData::Sum(points) => points.len() as u64,
                MetricData::Histogram { points, .. } => points.len() as u64,
            })
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct ResourceMetrics {
    pub resource: Attributes,
    pub scope_name: &'static str,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone)]
pub struct Metric {
    /// The OTLP name (`traces.span.metrics.calls`).
    pub name: String,
    /// UCUM unit; empty for counts.
    pub unit: &'static str,
    pub temporality: Temporality,
    pub data: MetricData,
}

#[derive(Debug, Clone)]
pub enum MetricData {
    /// A monotonic sum.
    Sum(Vec<SumPoint>),
    Histogram {
        bounds: Arc<[f64]>,
        points: Vec<HistogramPoint>,
    },
}

#[derive(Debug, Clone)]
pub struct SumPoint {
    pub attributes: Attributes,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
    pub value: u64,
    pub exemplars: Vec<Exemplar>,
}

#[derive(Debug, Clone)]
pub struct HistogramPoint {
    pub attributes: Attributes,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
    pub count: u64,
    pub sum: f64,
    /// One more than the bounds: the last counts values above every bound.
    pub bucket_counts: Vec<u64>,
    pub exemplars: Vec<Exemplar>,
}

/// A span a data point can link to: only spans of traces the gateway kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub value: f64,
    pub time_unix_nano: u64,
}
