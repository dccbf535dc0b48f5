//! Loading: YAML → env substitution → typed components → cross-reference checks.
//! Every problem becomes a [`ConfigError`] naming the file, the YAML path and what is allowed;
//! loading reports all of them at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::components::*;
use crate::validate;

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
}

#[derive(Debug, Clone)]
pub enum ExtensionConfig {
    HealthCheck(HealthCheckConfig),
    Pprof(PprofConfig),
}

/// One `service.pipelines.traces[/name]` entry.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub id: ComponentId,
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

/// A loaded, validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it came from, for messages.
    pub source: String,
    pub receivers: BTreeMap<ComponentId, ReceiverConfig>,
    pub processors: BTreeMap<ComponentId, ProcessorConfig>,
    pub exporters: BTreeMap<ComponentId, ExporterConfig>,
    pub extensions: BTreeMap<ComponentId, ExtensionConfig>,
    pub service: ServiceConfig,
    /// Tailgate's own `cluster` section (not a collector key).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}: {path}: {message}")]
pub struct ConfigError {
    pub file: String,
    /// Dotted YAML path, e.g. `processors.batch.timeout` or `service.pipelines.traces.exporters[0]`.
    pub path: String,
    pub message: String,
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

const RECEIVER_TYPES: &[&str] = &["otlp"];
const PROCESSOR_TYPES: &[&str] = &[
    "attributes",
    "batch",
    "filter",
    "k8sattributes",
    "memory_limiter",
    "resource",
    "tail_sampling",
];
const EXPORTER_TYPES: &[&str] = &["debug", "file", "loadbalancing", "otlp", "otlphttp"];
const EXTENSION_TYPES: &[&str] = &["health_check", "pprof"];

struct Loader<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
    /// Every component ID written in a section, valid or not, so a reference to a component
    /// that failed to load is not reported a second time as undefined.
    declared: BTreeSet<String>,
}

impl Loader<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes `value` into `T`, reporting the failing field's full path.
    fn typed<T: DeserializeOwned>(&mut self, base: &str, value: Value) -> Option<T> {
        let value = if value.is_null() {
            Value::Object(Default::default())
        } else {
            value
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}.{inner}")
                };
                self.error(path, e.into_inner().to_string());
                None
            }
        }
    }

    fn section(
        &mut self,
        root: &mut serde_json::Map<String, Value>,
        name: &str,
    ) -> Vec<(ComponentId, Value)> {
        let mut out = Vec::new();
        match root.remove(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    self.declared.insert(format!("{name}.{key}"));
                    match ComponentId::parse(&key) {
                        Ok(id) => out.push((id, value)),
                        Err(msg) => self.error(format!("{name}.{key}"), msg),
                    }
                }
            }
            Some(other) => self.error(
                name,
                format!(
                    "expected a mapping of component IDs, found {}",
                    kind_of(&other)
                ),
            ),
        }
        out
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn unknown_type(section: &str, singular: &str, kind: &str, supported: &[&str]) -> String {
    let _ = section;
    format!(
        "unknown {singular} type `{kind}`; supported: {}",
        supported.join(", ")
    )
}

/// Reads and loads a config file, with variables from the process environment.
pub fn load_file(path: &str) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_string(),
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    load_str(&text, path, &|name| std::env::var(name).ok())
}

/// Loads a config from text. `env` resolves `${env:NAME}` references (injected for tests).
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut l = Loader {
        file,
        errors: Vec::new(),
        declared: BTreeSet::new(),
    };
    let parsed: Value = match serde_saphyr::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) => {
            l.error("(document)", format!("not valid YAML: {e}"));
            return Err(ConfigErrors(l.errors));
        }
    };
    let mut root = match parsed {
        Value::Object(m) => m,
        Value::Null => serde_json::Map::new(),
        other => {
            l.error(
                "(document)",
                format!(
                    "expected a mapping at the top level, found {}",
                    kind_of(&other)
                ),
            );
            return Err(ConfigErrors(l.errors));
        }
    };
    for value in root.values_mut() {
        if let Err(msg) = crate::env::substitute(value, env) {
            l.error("(document)", msg);
        }
    }

    let mut cfg = Config {
        source: file.to_string(),
        ..Default::default()
    };
    for (id, value) in l.section(&mut root, "receivers") {
        let base = format!("receivers.{id}");
        let parsed = match id.kind.as_str() {
            "otlp" => l.typed(&base, value).map(ReceiverConfig::Otlp),
            other => {
                let msg = unknown_type("receivers", "receiver", other, RECEIVER_TYPES);
                l.error(base.clone(), msg);
                None
            }
        };
        if let Some(p) = parsed {
            cfg.receivers.insert(id, p);
        }
    }
    for (id, value) in l.section(&mut root, "processors") {
        let base = format!("processors.{id}");
        let parsed = match id.kind.as_str() {
            "memory_limiter" => l.typed(&base, value).map(ProcessorConfig::MemoryLimiter),
            "batch" => l.typed(&base, value).map(ProcessorConfig::Batch),
            "attributes" => l.typed(&base, value).map(ProcessorConfig::Attributes),
            "resource" => l.typed(&base, value).map(ProcessorConfig::Resource),
            "filter" => l.typed(&base, value).map(ProcessorConfig::Filter),
            "tail_sampling" => l.typed(&base, value).map(ProcessorConfig::TailSampling),
            "k8sattributes" => l.typed(&base, value).map(ProcessorConfig::K8sAttributes),
            other => {
                let msg = unknown_type("processors", "processor", other, PROCESSOR_TYPES);
                l.error(base.clone(), msg);
                None
            }
        };
        if let Some(p) = parsed {
            for (sub, msg) in validate::processor(&p) {
                l.error(join(&base, &sub), msg);
            }
            cfg.processors.insert(id, p);
        }
    }
    for (id, value) in l.section(&mut root, "exporters") {
        let base = format!("exporters.{id}");
        let parsed = match id.kind.as_str() {
            "otlp" => l.typed(&base, value).map(ExporterConfig::Otlp),
            "otlphttp" => l.typed(&base, value).map(ExporterConfig::OtlpHttp),
            "file" => l.typed(&base, value).map(ExporterConfig::File),
            "debug" => l.typed(&base, value).map(ExporterConfig::Debug),
            "loadbalancing" => l.typed(&base, value).map(ExporterConfig::LoadBalancing),
            other => {
                let msg = unknown_type("exporters", "exporter", other, EXPORTER_TYPES);
                l.error(base.clone(), msg);
                None
            }
        };
        if let Some(p) = parsed {
            for (sub, msg) in validate::exporter(&p) {
                l.error(join(&base, &sub), msg);
            }
            cfg.exporters.insert(id, p);
        }
    }
    for (id, value) in l.section(&mut root, "extensions") {
        let base = format!("extensions.{id}");
        let parsed = match id.kind.as_str() {
            "health_check" => l.typed(&base, value).map(ExtensionConfig::HealthCheck),
            "pprof" => l.typed(&base, value).map(ExtensionConfig::Pprof),
            other => {
                let msg = unknown_type("extensions", "extension", other, EXTENSION_TYPES);
                l.error(base.clone(), msg);
                None
            }
        };
        if let Some(p) = parsed {
            cfg.extensions.insert(id, p);
        }
    }
    if let Some(v) = root.remove("cluster") {
        cfg.cluster = l.typed("cluster", v);
        if let Some(c) = &cfg.cluster {
            if c.member_timeout.0.is_zero() {
                l.error("cluster.member_timeout", "must be positive");
            }
            if c.join.iter().any(|p| p.trim().is_empty()) {
                l.error("cluster.join", "addresses must not be empty");
            }
        }
    }
    let service = root.remove("service");
    for key in root.keys() {
        let msg = if key == "connectors" {
            "connectors are not supported; allowed top-level keys: receivers, processors, exporters, extensions, service, cluster".to_string()
        } else {
            "unknown top-level key; allowed: receivers, processors, exporters, extensions, service, cluster"
                .to_string()
        };
        l.errors.push(ConfigError {
            file: file.to_string(),
            path: key.clone(),
            message: msg,
        });
    }
    match service {
        None | Some(Value::Null) => l.error(
            "service",
            "missing: a config needs `service.pipelines.traces`",
        ),
        Some(v) => load_service(&mut l, v, &mut cfg),
    }
    if l.errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(l.errors))
    }
}

fn join(base: &str, sub: &str) -> String {
    if sub.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{sub}")
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    extensions: Vec<String>,
    #[serde(default)]
    pipelines: BTreeMap<String, RawPipeline>,
    #[serde(default)]
    telemetry: TelemetryConfig,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default)]
    processors: Vec<String>,
    #[serde(default)]
    exporters: Vec<String>,
}

fn load_service(l: &mut Loader<'_>, value: Value, cfg: &mut Config) {
    let Some(raw) = l.typed::<RawService>("service", value) else {
        return;
    };
    cfg.service.telemetry = raw.telemetry;
    for (i, ext) in raw.extensions.iter().enumerate() {
        let path = format!("service.extensions[{i}]");
        match ComponentId::parse(ext) {
            Err(msg) => l.error(path, msg),
            Ok(id) if !cfg.extensions.contains_key(&id) => {
                let msg = undefined("extension", &id, cfg.extensions.keys());
                l.error(path, msg);
            }
            Ok(id) => cfg.service.extensions.push(id),
        }
    }
    if raw.pipelines.is_empty() {
        l.error(
            "service.pipelines",
            "no pipelines: define `service.pipelines.traces`",
        );
    }
    for (name, p) in raw.pipelines {
        let base = format!("service.pipelines.{name}");
        let id = match ComponentId::parse(&name) {
            Ok(id) if id.kind == "traces" => id,
            Ok(id) if id.kind == "metrics" || id.kind == "logs" || id.kind == "profiles" => {
                l.error(
                    base,
                    format!(
                        "{} pipelines are not supported: Tailgate handles traces only",
                        id.kind
                    ),
                );
                continue;
            }
            Ok(_) => {
                l.error(
                    base,
                    "unknown pipeline type; allowed: traces, traces/<name>",
                );
                continue;
            }
            Err(msg) => {
                l.error(base, msg);
                continue;
            }
        };
        let mut pipeline = PipelineConfig {
            id,
            receivers: vec![],
            processors: vec![],
            exporters: vec![],
        };
        if p.receivers.is_empty() {
            l.error(
                format!("{base}.receivers"),
                "a pipeline needs at least one receiver",
            );
        }
        if p.exporters.is_empty() {
            l.error(
                format!("{base}.exporters"),
                "a pipeline needs at least one exporter",
            );
        }
        pipeline.receivers = refs(
            l,
            &base,
            "receivers",
            "receiver",
            &p.receivers,
            &cfg.receivers,
        );
        pipeline.processors = refs(
            l,
            &base,
            "processors",
            "processor",
            &p.processors,
            &cfg.processors,
        );
        pipeline.exporters = refs(
            l,
            &base,
            "exporters",
            "exporter",
            &p.exporters,
            &cfg.exporters,
        );
        let positions: Vec<(usize, &ComponentId)> =
            pipeline.processors.iter().enumerate().collect();
        for (i, id) in &positions {
            let is_memory_limiter = matches!(
                cfg.processors.get(*id),
                Some(ProcessorConfig::MemoryLimiter(_))
            );
            if is_memory_limiter && *i != 0 {
                l.error(
                    format!("{base}.processors[{i}]"),
                    "memory_limiter must be the first processor of a pipeline",
                );
            }
        }
        cfg.service.pipelines.push(pipeline);
    }
}

fn refs<T>(
    l: &mut Loader<'_>,
    base: &str,
    field: &str,
    singular: &str,
    names: &[String],
    defined: &BTreeMap<ComponentId, T>,
) -> Vec<ComponentId> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let path = format!("{base}.{field}[{i}]");
        match ComponentId::parse(name) {
            Err(msg) => l.error(path, msg),
            Ok(id)
                if !defined.contains_key(&id) && l.declared.contains(&format!("{field}.{id}")) => {}
            Ok(id) if !defined.contains_key(&id) => {
                let msg = undefined(singular, &id, defined.keys());
                l.error(path, msg);
            }
            Ok(id) if !seen.insert(id.clone()) => {
                l.error(path, format!("{singular} `{id}` is listed twice"))
            }
            Ok(id) => out.push(id),
        }
    }
    out
}

fn undefined<'a>(
    singular: &str,
    id: &ComponentId,
    defined: impl Iterator<Item = &'a ComponentId>,
) -> String {
    let names: Vec<String> = defined.map(|d| d.to_string()).collect();
    let list = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    format!("{singular} `{id}` is not defined; defined {singular}s: {list}")
}
