//! The loaded configuration: what every runtime crate receives, and the errors a load
//! reports.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use crate::components::*;

/// `type[/name]`, e.g. `otlp/tempo`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId {
    pub kind: String,
    pub name: Option<String>,
}

impl ComponentId {
    pub fn parse(s: &str) -> Result<ComponentId, String> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) => (k, Some(n)),
            None => (s, None),
        };
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if !valid(kind) || name.is_some_and(|n| !valid(n)) {
            return Err(format!(
                "invalid component ID `{s}`: expected `type` or `type/name` of letters, digits, `_`, `-`, `.`"
            ));
        }
        Ok(ComponentId {
            kind: kind.to_string(),
            name: name.map(str::to_string),
        })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.kind, n),
            None => f.write_str(&self.kind),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ReceiverConfig {
    Otlp(OtlpReceiverConfig),
}

#[derive(Debug, Clone)]
pub enum ProcessorConfig {
    MemoryLimiter(MemoryLimiterConfig),
    Batch(BatchConfig),
    Attributes(AttributesConfig),
    Resource(ResourceConfig),
    Filter(FilterConfig),
    TailSampling(crate::sampling::TailSamplingConfig),
    K8sAttributes(crate::agent::K8sAttributesConfig),
}

#[derive(Debug, Clone)]
pub enum ExporterConfig {
    Otlp(OtlpExporterConfig),
    OtlpHttp(OtlpHttpExporterConfig),
    File(FileExporterConfig),
    Debug(DebugExporterConfig),
    LoadBalancing(crate::agent::LoadBalancingConfig),
    Prometheus(crate::connectors::PrometheusExporterConfig),
}

impl ExporterConfig {
    /// The signals it exports.
    pub fn signals(&self) -> &'static [Signal] {
        match self {
            ExporterConfig::Otlp(_) => &[Signal::Traces, Signal::Metrics],
            ExporterConfig::Prometheus(_) => &[Signal::Metrics],
            _ => &[Signal::Traces],
        }
    }
}

/// What a pipeline carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ExtensionConfig {
    HealthCheck(HealthCheckConfig),
    Pprof(PprofConfig),
}

/// One `service.pipelines.traces[/name]` or `metrics[/name]` entry. A traces pipeline's
/// exporters may include connectors; a metrics pipeline's receivers are connectors.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub id: ComponentId,
    pub signal: Signal,
    pub receivers: Vec<ComponentId>,
    pub processors: Vec<ComponentId>,
    pub exporters: Vec<ComponentId>,
}

#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    pub extensions: Vec<ComponentId>,
    pub pipelines: Vec<PipelineConfig>,
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// The pipelines carrying `signal`, in config order.
    pub fn pipelines(&self, signal: Signal) -> impl Iterator<Item = &PipelineConfig> {
        self.service
            .pipelines
            .iter()
            .filter(move |p| p.signal == signal)
    }
}

/// A loaded, validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it came from, for messages.
    pub source: String,
    pub receivers: BTreeMap<ComponentId, ReceiverConfig>,
    pub processors: BTreeMap<ComponentId, ProcessorConfig>,
    pub exporters: BTreeMap<ComponentId, ExporterConfig>,
    pub extensions: BTreeMap<ComponentId, ExtensionConfig>,
    pub connectors: BTreeMap<ComponentId, crate::connectors::ConnectorConfig>,
    pub service: ServiceConfig,
    /// Tailgate's own `cluster` section (not a collector key).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigError {
    pub file: String,
    /// Dotted YAML path, e.g. `processors.batch.timeout` or `service.pipelines.traces.exporters[0]`.
    pub path: String,
    /// 1-based line and column of `path` in the file (of its deepest key that exists).
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "{}:{line}:{column}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
