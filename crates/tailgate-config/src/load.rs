//! Loading: YAML → env substitution → typed components → cross-reference checks.
//! Every problem becomes a [`ConfigError`] naming the file, the YAML path and what is allowed;
//! loading reports all of them at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::components::*;
use crate::field_errors::{PathStep, closest, remove_at, with_suggestion};
use crate::overrides::apply_override;
use crate::service_section::load_service;
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

pub(crate) struct Loader<'a> {
    pub(crate) file: &'a str,
    pub(crate) errors: Vec<ConfigError>,
    /// Every component ID written in a section, valid or not, so a reference to a component
    /// that failed to load is not reported a second time as undefined.
    pub(crate) declared: BTreeSet<String>,
}

/// Errors reported for one component before the rest of it is left unread: each error
/// removes the offending key and deserializes again, so a bound keeps a pathological
/// component from looping long.
const FIELD_ERRORS_PER_COMPONENT_MAX: usize = 16;

impl Loader<'_> {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            path: path.into(),
            location: None,
            message: message.into(),
        });
    }

    /// Deserializes `value` into `T`, reporting every failing field with its full path: after
    /// each error the offending key is set aside and the rest deserialized again, so two typos
    /// in one component are both reported in one pass.
    pub(crate) fn typed<T: DeserializeOwned>(&mut self, base: &str, value: Value) -> Option<T> {
        let mut value = if value.is_null() {
            Value::Object(Default::default())
        } else {
            value
        };
        let mut set_aside: Vec<String> = Vec::new();
        for _ in 0..FIELD_ERRORS_PER_COMPONENT_MAX {
            let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return set_aside.is_empty().then_some(t),
                Err(e) => e,
            };
            let steps: Vec<PathStep> = error
                .path()
                .iter()
                .filter_map(PathStep::from_segment)
                .collect();
            let inner = error.path().to_string();
            let message = error.into_inner().to_string();
            // A required field reported missing because an earlier error set it aside is not
            // news.
            if set_aside
                .iter()
                .any(|key| message.contains(&format!("missing field `{key}`")))
            {
                return None;
            }
            let path = if inner == "." || inner.is_empty() {
                base.to_string()
            } else {
                format!("{base}.{inner}")
            };
            self.error(path, with_suggestion(&message));
            match remove_at(&mut value, &steps) {
                Some(key) => set_aside.push(key),
                None => return None,
            }
        }
        None
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

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn unknown_type(singular: &str, kind: &str, supported: &[&str]) -> String {
    let mut msg = format!(
        "unknown {singular} type `{kind}`; supported: {}",
        supported.join(", ")
    );
    if let Some(near) = closest(kind, supported.iter().copied()) {
        msg.push_str(&format!("; did you mean `{near}`?"));
    }
    msg
}

/// Reads and loads a config file, with variables from the process environment.
pub fn load_file(path: &str) -> Result<Config, ConfigErrors> {
    load_file_with_overrides(path, &[])
}

/// Like [`load_file`], then applies `--set KEY=VALUE` overrides as the collector does: keys
/// joined by `::` (`receivers::otlp::protocols::grpc::endpoint=127.0.0.1:14317`), the value
/// read as YAML (`[4317]` is a list), mappings created where missing; an override wins over
/// the file.
pub fn load_file_with_overrides(path: &str, overrides: &[String]) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_string(),
            path: "(file)".into(),
            location: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    load_text(&text, path, &|name| std::env::var(name).ok(), overrides)
}

/// Loads a config from text. `env` resolves `${env:NAME}` references (injected for tests).
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    load_text(text, file, env, &[])
}

fn load_text(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &[String],
) -> Result<Config, ConfigErrors> {
    let mut l = Loader {
        file,
        errors: Vec::new(),
        declared: BTreeSet::new(),
    };
    let parsed: Value = match serde_saphyr::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) => {
            // The parser's snippets name the text `<input>`; the reader knows it by its file.
            let message = format!("not valid YAML: {e}").replace("<input>", file);
            l.error("(document)", message);
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
    for set in overrides {
        if let Err(msg) = apply_override(&mut root, set) {
            l.error("(--set)", msg);
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
                let msg = unknown_type("receiver", other, RECEIVER_TYPES);
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
                let msg = unknown_type("processor", other, PROCESSOR_TYPES);
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
                let msg = unknown_type("exporter", other, EXPORTER_TYPES);
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
                let msg = unknown_type("extension", other, EXTENSION_TYPES);
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
    const TOP_LEVEL_KEYS: &[&str] = &[
        "receivers",
        "processors",
        "exporters",
        "extensions",
        "service",
        "cluster",
    ];
    for key in root.keys() {
        let mut msg = if key == "connectors" {
            "connectors are not supported; allowed top-level keys: receivers, processors, exporters, extensions, service, cluster".to_string()
        } else {
            "unknown top-level key; allowed: receivers, processors, exporters, extensions, service, cluster"
                .to_string()
        };
        if let Some(near) = closest(key, TOP_LEVEL_KEYS.iter().copied()) {
            msg.push_str(&format!("; did you mean `{near}`?"));
        }
        l.error(key.clone(), msg);
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
        for e in &mut l.errors {
            e.location = crate::locate::locate(text, &e.path);
        }
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
