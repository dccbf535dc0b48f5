//! Loading: YAML → env substitution → `--set` overrides → typed components → cross-reference
//! checks. Every problem becomes a [`ConfigError`] naming the file, the YAML path and what is
//! allowed; loading reports all of them at once.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::field_errors::closest;
use crate::model::*;
use crate::overrides::apply_override;
use crate::reader::{Loader, join, kind_of};
use crate::sampling::{RawPolicy, TailSamplingConfig};
use crate::service_section::load_service;
use crate::validate;

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
const EXPORTER_TYPES: &[&str] = &[
    "debug",
    "file",
    "loadbalancing",
    "otlp",
    "otlphttp",
    "prometheus",
];
const CONNECTOR_TYPES: &[&str] = &["spanmetrics"];
const EXTENSION_TYPES: &[&str] = &["health_check", "pprof"];

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
    let Some(mut root) = parse_document(&mut l, text, env, overrides) else {
        return Err(ConfigErrors(l.errors));
    };
    let mut cfg = Config {
        source: file.to_string(),
        ..Default::default()
    };
    load_receivers(&mut l, &mut root, &mut cfg);
    load_processors(&mut l, &mut root, &mut cfg);
    load_exporters(&mut l, &mut root, &mut cfg);
    load_extensions(&mut l, &mut root, &mut cfg);
    load_connectors(&mut l, &mut root, &mut cfg);
    if let Some(v) = root.remove("cluster") {
        load_cluster(&mut l, v, &mut cfg);
    }
    let service = root.remove("service");
    report_unknown_top_level_keys(&mut l, &root);
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

/// The YAML as a top-level mapping, with `${env:…}` substituted and overrides applied; `None`
/// when the document cannot be read at all.
fn parse_document(
    l: &mut Loader<'_>,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &[String],
) -> Option<serde_json::Map<String, Value>> {
    let parsed: Value = match serde_saphyr::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) => {
            // The parser's snippets name the text `<input>`; the reader knows it by its file.
            let message = format!("not valid YAML: {e}").replace("<input>", l.file);
            l.error("(document)", message);
            return None;
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
            return None;
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
    Some(root)
}

type Root = serde_json::Map<String, Value>;

fn load_receivers(l: &mut Loader<'_>, root: &mut Root, cfg: &mut Config) {
    for (id, value) in l.section(root, "receivers") {
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
            for (sub, msg) in validate::receiver(&p) {
                l.error(join(&base, &sub), msg);
            }
            cfg.receivers.insert(id, p);
        }
    }
}

fn load_processors(l: &mut Loader<'_>, root: &mut Root, cfg: &mut Config) {
    for (id, value) in l.section(root, "processors") {
        let base = format!("processors.{id}");
        let parsed = match id.kind.as_str() {
            "memory_limiter" => l.typed(&base, value).map(ProcessorConfig::MemoryLimiter),
            "batch" => l.typed(&base, value).map(ProcessorConfig::Batch),
            "attributes" => l.typed(&base, value).map(ProcessorConfig::Attributes),
            "resource" => l.typed(&base, value).map(ProcessorConfig::Resource),
            "filter" => l.typed(&base, value).map(ProcessorConfig::Filter),
            "tail_sampling" => {
                load_tail_sampling(l, &base, value).map(ProcessorConfig::TailSampling)
            }
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
}

/// `tail_sampling`, with its `policies` read on their own: each policy's shape problem is
/// reported at its own path (serde's `try_from` could name only the list entry).
fn load_tail_sampling(
    l: &mut Loader<'_>,
    base: &str,
    mut value: Value,
) -> Option<TailSamplingConfig> {
    let policies = value.as_object_mut().and_then(|m| m.remove("policies"));
    let settings: Option<TailSamplingConfig> = l.typed(base, value);
    let at = format!("{base}.policies");
    let raw: Vec<RawPolicy> = match policies {
        // Validation reports the empty list.
        None | Some(Value::Null) => Vec::new(),
        Some(v) => l.typed(&at, v)?,
    };
    let policies = match crate::sampling::convert_policies(raw) {
        Ok(policies) => policies,
        Err(problems) => {
            for (sub, message) in problems.0 {
                l.error(format!("{at}{sub}"), message);
            }
            return None;
        }
    };
    settings.map(|settings| TailSamplingConfig {
        policies,
        ..settings
    })
}

fn load_exporters(l: &mut Loader<'_>, root: &mut Root, cfg: &mut Config) {
    for (id, value) in l.section(root, "exporters") {
        let base = format!("exporters.{id}");
        let parsed = match id.kind.as_str() {
            "otlp" => l.typed(&base, value).map(ExporterConfig::Otlp),
            "otlphttp" => l.typed(&base, value).map(ExporterConfig::OtlpHttp),
            "file" => l.typed(&base, value).map(ExporterConfig::File),
            "debug" => l.typed(&base, value).map(ExporterConfig::Debug),
            "loadbalancing" => l.typed(&base, value).map(ExporterConfig::LoadBalancing),
            "prometheus" => l.typed(&base, value).map(ExporterConfig::Prometheus),
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
}

fn load_extensions(l: &mut Loader<'_>, root: &mut Root, cfg: &mut Config) {
    for (id, value) in l.section(root, "extensions") {
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
}

fn load_connectors(l: &mut Loader<'_>, root: &mut Root, cfg: &mut Config) {
    use crate::connectors::{ConnectorConfig, span_metrics_problems};
    for (id, value) in l.section(root, "connectors") {
        let base = format!("connectors.{id}");
        let parsed = match id.kind.as_str() {
            "spanmetrics" => l.typed(&base, value).map(ConnectorConfig::SpanMetrics),
            other => {
                let msg = unknown_type("connector", other, CONNECTOR_TYPES);
                l.error(base.clone(), msg);
                None
            }
        };
        if let Some(c) = parsed {
            let ConnectorConfig::SpanMetrics(s) = &c;
            for (sub, msg) in span_metrics_problems(s) {
                l.error(join(&base, &sub), msg);
            }
            cfg.connectors.insert(id, c);
        }
    }
}

/// Tailgate's own `cluster` section.
fn load_cluster(l: &mut Loader<'_>, value: Value, cfg: &mut Config) {
    cfg.cluster = l.typed("cluster", value);
    if let Some(c) = &cfg.cluster {
        if c.member_timeout.0.is_zero() {
            l.error("cluster.member_timeout", "must be positive");
        }
        if c.join.iter().any(|p| p.trim().is_empty()) {
            l.error("cluster.join", "addresses must not be empty");
        }
        if !(1..=crate::cluster::REPLICATION_FACTOR_MAX).contains(&c.replication_factor) {
            l.error(
                "cluster.replication_factor",
                format!(
                    "must be 1 or {}, got {}",
                    crate::cluster::REPLICATION_FACTOR_MAX,
                    c.replication_factor
                ),
            );
        }
        for (path, message) in c
            .tls
            .iter()
            .flat_map(crate::tls::ClusterTlsConfig::problems)
        {
            l.error(format!("cluster.{path}"), message);
        }
    }
}

/// Whatever is left at the top level once the known sections are taken out.
fn report_unknown_top_level_keys(l: &mut Loader<'_>, root: &Root) {
    const TOP_LEVEL_KEYS: &[&str] = &[
        "receivers",
        "processors",
        "exporters",
        "extensions",
        "connectors",
        "service",
        "cluster",
    ];
    for key in root.keys() {
        let mut msg = format!(
            "unknown top-level key; allowed: {}",
            TOP_LEVEL_KEYS.join(", ")
        );
        if let Some(near) = closest(key, TOP_LEVEL_KEYS.iter().copied()) {
            msg.push_str(&format!("; did you mean `{near}`?"));
        }
        l.error(key.clone(), msg);
    }
}
