//! `connectors`: components that end one pipeline and start another. Tailgate has the
//! collector's `spanmetrics` (traces in, metrics out), with its keys and defaults at v0.161.0,
//! and the metrics exporter that serves them to Prometheus (`prometheus`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::types::GoDuration;

/// The labels every span-metrics series has (they cannot be dimensions).
pub const INTRINSIC_LABELS: &[&str] = &[
    "service.name",
    "span.name",
    "span.kind",
    "status.code",
    "collector.instance.id",
];

/// `connectors.spanmetrics`: RED metrics from every span the pipeline it ends receives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanMetricsConfig {
    /// Span (then resource) attributes added as labels to every metric.
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    /// More labels for the `calls` metric only.
    #[serde(default)]
    pub calls_dimensions: Vec<Dimension>,
    /// Intrinsic labels to leave out (`service.name`, `span.name`, `span.kind`, `status.code`).
    #[serde(default)]
    pub exclude_dimensions: Vec<String>,
    /// Accepted for compatibility: deprecated in the collector, with no effect.
    #[serde(default)]
    pub dimensions_cache_size: Option<usize>,
    /// Accepted for compatibility: resources are kept while they have live series.
    #[serde(default)]
    pub resource_metrics_cache_size: Option<usize>,
    /// Resource attributes that tell resources apart (default: all of them).
    #[serde(default)]
    pub resource_metrics_key_attributes: Vec<String>,
    #[serde(default)]
    pub aggregation_temporality: Temporality,
    #[serde(default)]
    pub histogram: HistogramSettings,
    /// How often metrics are emitted. Default 60s.
    #[serde(default = "default_flush_interval")]
    pub metrics_flush_interval: GoDuration,
    /// Cumulative: a resource with no span for this long is forgotten. 0 = never.
    #[serde(default)]
    pub metrics_expiration: GoDuration,
    /// Cumulative: a series with no span for this long is forgotten. 0 = never.
    #[serde(default)]
    pub series_expiration: GoDuration,
    /// Accepted for compatibility (delta start times are kept per series).
    #[serde(default)]
    pub metric_timestamp_cache_size: Option<usize>,
    /// Metric name prefix. Default `traces.span.metrics`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub exemplars: ExemplarsSettings,
    #[serde(default)]
    pub events: EventsSettings,
    /// Scopes whose name (and version) become labels.
    #[serde(default)]
    pub include_instrumentation_scope: Vec<String>,
    /// Most series per metric and resource; the rest count in one overflow series
    /// (`otel.metric.overflow="true"`). 0 = no limit.
    #[serde(default)]
    pub aggregation_cardinality_limit: usize,
    /// Copy resource attributes onto the emitted resource (they are, unless the collector's
    /// `excludeResourceMetrics` gate is on; Tailgate always copies them).
    #[serde(default)]
    pub add_resource_attributes: bool,
    /// Label `sampling.method`: `extrapolated` when a span's `ot=th` scaled its count,
    /// `counted` otherwise.
    #[serde(default)]
    pub enable_metrics_sampling_method: bool,
}

fn default_flush_interval() -> GoDuration {
    GoDuration::from_secs(60)
}

fn default_namespace() -> String {
    "traces.span.metrics".to_string()
}

/// A label from an attribute: `name`, with `default` when no span or resource has it (without
/// a default, the label is left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub default: Option<String>,
    /// The collector's glob dimensions; refused at load (see `validate`).
    #[serde(default)]
    pub glob: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Temporality {
    #[default]
    #[serde(rename = "AGGREGATION_TEMPORALITY_CUMULATIVE")]
    Cumulative,
    #[serde(rename = "AGGREGATION_TEMPORALITY_DELTA")]
    Delta,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramSettings {
    #[serde(default)]
    pub disable: bool,
    #[serde(default)]
    pub unit: HistogramUnit,
    #[serde(default)]
    pub explicit: Option<ExplicitBuckets>,
    /// The collector's exponential histograms; refused at load (see `validate`).
    #[serde(default)]
    pub exponential: Option<serde_json::Value>,
    /// More labels for the `duration` histogram only.
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HistogramUnit {
    #[default]
    #[serde(rename = "ms")]
    Milliseconds,
    #[serde(rename = "s")]
    Seconds,
}

impl HistogramUnit {
    /// The UCUM unit the metric carries.
    pub fn ucum(self) -> &'static str {
        match self {
            HistogramUnit::Milliseconds => "ms",
            HistogramUnit::Seconds => "s",
        }
    }

    /// Nanoseconds per unit.
    pub fn nanos(self) -> f64 {
        match self {
            HistogramUnit::Milliseconds => 1e6,
            HistogramUnit::Seconds => 1e9,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitBuckets {
    /// Upper bounds, as durations.
    #[serde(default)]
    pub buckets: Vec<GoDuration>,
}

/// The collector's default bucket bounds, in milliseconds.
pub const DEFAULT_BUCKETS_MS: &[f64] = &[
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10_000.0, 15_000.0,
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemplarsSettings {
    #[serde(default)]
    pub enabled: bool,
    /// Exemplars per data point and flush. Default 5.
    #[serde(default = "default_exemplars_per_point")]
    pub max_per_data_point: usize,
}

impl Default for ExemplarsSettings {
    fn default() -> Self {
        ExemplarsSettings {
            enabled: false,
            max_per_data_point: default_exemplars_per_point(),
        }
    }
}

fn default_exemplars_per_point() -> usize {
    5
}

/// `events`: a count of span events by the event's attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
}

/// `exporters.prometheus`: serves the metrics pipelines' metrics for scraping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusExporterConfig {
    /// `host:port` the scrape endpoint listens on (any path answers).
    pub endpoint: String,
    /// Prefix of every metric name.
    #[serde(default)]
    pub namespace: String,
    /// Labels added to every series.
    #[serde(default)]
    pub const_labels: BTreeMap<String, String>,
    /// Write each sample's timestamp.
    #[serde(default)]
    pub send_timestamps: bool,
    /// Series not updated for this long are no longer served. Default 5m.
    #[serde(default = "default_metric_expiration")]
    pub metric_expiration: GoDuration,
    #[serde(default)]
    pub resource_to_telemetry_conversion: Enabled,
    /// Serve OpenMetrics (with exemplars and `_created`) to scrapers that ask for it.
    #[serde(default)]
    pub enable_open_metrics: bool,
    /// Leave out the `otel_scope_*` labels.
    #[serde(default)]
    pub without_scope_info: bool,
    /// Unit and `_total` suffixes on metric names. Default true.
    #[serde(default = "yes")]
    pub add_metric_suffixes: bool,
}

fn default_metric_expiration() -> GoDuration {
    GoDuration::from_secs(300)
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enabled {
    #[serde(default)]
    pub enabled: bool,
}

/// A connector, by type.
#[derive(Debug, Clone)]
pub enum ConnectorConfig {
    SpanMetrics(SpanMetricsConfig),
}

/// Problems in a `spanmetrics` config, as (path below it, message).
pub(crate) fn span_metrics_problems(c: &SpanMetricsConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = INTRINSIC_LABELS.to_vec();
    for (list, dims) in [
        ("dimensions", &c.dimensions),
        ("calls_dimensions", &c.calls_dimensions),
        ("histogram.dimensions", &c.histogram.dimensions),
        ("events.dimensions", &c.events.dimensions),
    ] {
        // `calls`, `histogram` and `events` each add to `dimensions`, not to one another.
        let mut names = seen.clone();
        for (i, d) in dims.iter().enumerate() {
            let at = format!("{list}[{i}]");
            if !d.glob.is_empty() {
                out.push((
                    format!("{at}.glob"),
                    "glob dimensions are not supported by Tailgate; list the attribute names"
                        .into(),
                ));
            } else if d.name.is_empty() {
                out.push((at, "a dimension needs a `name`".into()));
            } else if names.contains(&d.name.as_str()) {
                out.push((
                    format!("{at}.name"),
                    format!("duplicate dimension name `{}`", d.name),
                ));
            } else {
                names.push(&d.name);
            }
        }
        if list == "dimensions" {
            seen = names;
        }
    }
    if c.histogram.exponential.is_some() {
        out.push((
            "histogram.exponential".into(),
            "exponential histograms are not supported by Tailgate; use `explicit` buckets".into(),
        ));
    }
    if c.histogram
        .explicit
        .as_ref()
        .is_some_and(|e| e.buckets.windows(2).any(|w| w[0].0 >= w[1].0))
    {
        out.push((
            "histogram.explicit.buckets".into(),
            "bounds must increase".into(),
        ));
    }
    if c.metrics_flush_interval.0.is_zero() {
        out.push(("metrics_flush_interval".into(), "must be positive".into()));
    }
    if c.exemplars.enabled && c.exemplars.max_per_data_point == 0 {
        out.push((
            "exemplars.max_per_data_point".into(),
            "must be at least 1 with exemplars enabled".into(),
        ));
    }
    for (i, d) in c.exclude_dimensions.iter().enumerate() {
        if !INTRINSIC_LABELS[..4].contains(&d.as_str()) {
            out.push((
                format!("exclude_dimensions[{i}]"),
                format!(
                    "`{d}` is not an intrinsic label; allowed: {}",
                    INTRINSIC_LABELS[..4].join(", ")
                ),
            ));
        }
    }
    out
}
