//! The `service` section: extensions and pipelines, and every reference from a pipeline to a
//! component checked against what the other sections defined.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::components::TelemetryConfig;
use crate::field_errors::closest;
use crate::model::{ComponentId, Config, PipelineConfig, ProcessorConfig};
use crate::reader::Loader;

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

pub(crate) fn load_service(l: &mut Loader<'_>, value: Value, cfg: &mut Config) {
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
        if let Some(pipeline) = load_pipeline(l, &name, p, cfg) {
            cfg.service.pipelines.push(pipeline);
        }
    }
}

/// One `service.pipelines` entry with its references resolved; `None` when its name is not a
/// traces pipeline.
fn load_pipeline(
    l: &mut Loader<'_>,
    name: &str,
    p: RawPipeline,
    cfg: &Config,
) -> Option<PipelineConfig> {
    let base = format!("service.pipelines.{name}");
    let id = match ComponentId::parse(name) {
        Ok(id) if id.kind == "traces" => id,
        Ok(id) if id.kind == "metrics" || id.kind == "logs" || id.kind == "profiles" => {
            l.error(
                base,
                format!(
                    "{} pipelines are not supported: Tailgate handles traces only",
                    id.kind
                ),
            );
            return None;
        }
        Ok(_) => {
            l.error(
                base,
                "unknown pipeline type; allowed: traces, traces/<name>",
            );
            return None;
        }
        Err(msg) => {
            l.error(base, msg);
            return None;
        }
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
    let pipeline = PipelineConfig {
        id,
        receivers: refs(
            l,
            &base,
            "receivers",
            "receiver",
            &p.receivers,
            &cfg.receivers,
        ),
        processors: refs(
            l,
            &base,
            "processors",
            "processor",
            &p.processors,
            &cfg.processors,
        ),
        exporters: refs(
            l,
            &base,
            "exporters",
            "exporter",
            &p.exporters,
            &cfg.exporters,
        ),
    };
    for (i, id) in pipeline.processors.iter().enumerate() {
        let is_memory_limiter = matches!(
            cfg.processors.get(id),
            Some(ProcessorConfig::MemoryLimiter(_))
        );
        if is_memory_limiter && i != 0 {
            l.error(
                format!("{base}.processors[{i}]"),
                "memory_limiter must be the first processor of a pipeline",
            );
        }
    }
    Some(pipeline)
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
                l.error(path, format!("{singular} `{id}` is listed twice"));
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
    let names: Vec<String> = defined.map(ToString::to_string).collect();
    let list = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    let wanted = id.to_string();
    match closest(&wanted, names.iter().map(String::as_str)) {
        Some(near) => format!(
            "{singular} `{id}` is not defined; defined {singular}s: {list}; did you mean `{near}`?"
        ),
        None => format!("{singular} `{id}` is not defined; defined {singular}s: {list}"),
    }
}
