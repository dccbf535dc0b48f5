//! The `service` section: extensions and pipelines, and every reference from a pipeline to a
//! component checked against what the other sections defined.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::components::TelemetryConfig;
use crate::field_errors::closest;
use crate::model::{ComponentId, Config, PipelineConfig, ProcessorConfig, Signal};
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
    if cfg.pipelines(Signal::Traces).next().is_none() && !cfg.service.pipelines.is_empty() {
        l.error(
            "service.pipelines",
            "no traces pipeline: define `service.pipelines.traces`",
        );
    }
    check_connectors(l, cfg);
}

/// One `service.pipelines` entry with its references resolved; `None` when its name is not a
/// traces or metrics pipeline.
fn load_pipeline(
    l: &mut Loader<'_>,
    name: &str,
    p: RawPipeline,
    cfg: &Config,
) -> Option<PipelineConfig> {
    let base = format!("service.pipelines.{name}");
    let signal = match ComponentId::parse(name) {
        Ok(id) if id.kind == "traces" => Signal::Traces,
        Ok(id) if id.kind == "metrics" => Signal::Metrics,
        Ok(id) if id.kind == "logs" || id.kind == "profiles" => {
            l.error(
                base,
                format!(
                    "{} pipelines are not supported: Tailgate handles traces, and the metrics its connectors make",
                    id.kind
                ),
            );
            return None;
        }
        Ok(_) => {
            l.error(
                base,
                "unknown pipeline type; allowed: traces[/<name>], metrics[/<name>]",
            );
            return None;
        }
        Err(msg) => {
            l.error(base, msg);
            return None;
        }
    };
    let id = ComponentId::parse(name).expect("parsed above");
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
    let pipeline = match signal {
        Signal::Traces => PipelineConfig {
            id,
            signal,
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
            exporters: exporters(l, &base, &p.exporters, cfg, Signal::Traces),
        },
        Signal::Metrics => {
            if !p.processors.is_empty() {
                l.error(
                    format!("{base}.processors"),
                    "metrics pipelines take no processors in Tailgate: a connector's metrics go straight to the exporters",
                );
            }
            PipelineConfig {
                id,
                signal,
                receivers: metrics_receivers(l, &base, &p.receivers, cfg),
                processors: Vec::new(),
                exporters: exporters(l, &base, &p.exporters, cfg, Signal::Metrics),
            }
        }
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

/// A pipeline's exporters: those exporting its signal, and for traces also connectors.
fn exporters(
    l: &mut Loader<'_>,
    base: &str,
    names: &[String],
    cfg: &Config,
    signal: Signal,
) -> Vec<ComponentId> {
    let mut out: Vec<(usize, ComponentId)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if signal == Signal::Traces
            && let Ok(id) = ComponentId::parse(name)
            && cfg.connectors.contains_key(&id)
        {
            out.push((i, id));
            continue;
        }
        let path = format!("{base}.exporters[{i}]");
        let Some(id) = one_ref(l, &path, "exporter", name, &cfg.exporters) else {
            continue;
        };
        if cfg.exporters[&id].signals().contains(&signal) {
            out.push((i, id));
        } else if signal == Signal::Traces {
            l.error(
                path,
                format!(
                    "exporter `{id}` exports metrics, not traces; use it in a metrics pipeline"
                ),
            );
        } else {
            l.error(
                path,
                format!(
                    "exporter `{id}` does not export metrics; metrics exporters: otlp, prometheus"
                ),
            );
        }
    }
    dedup(l, base, "exporters", "exporter", out)
}

/// A metrics pipeline's receivers: connectors.
fn metrics_receivers(
    l: &mut Loader<'_>,
    base: &str,
    names: &[String],
    cfg: &Config,
) -> Vec<ComponentId> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = format!("{base}.receivers[{i}]");
        if let Ok(id) = ComponentId::parse(name)
            && cfg.receivers.contains_key(&id)
        {
            l.error(
                path,
                format!("receiver `{id}` does not receive metrics in Tailgate: a metrics pipeline's receivers are connectors, such as spanmetrics"),
            );
            continue;
        }
        if let Some(id) = one_ref(l, &path, "connector", name, &cfg.connectors) {
            out.push((i, id));
        }
    }
    dedup(l, base, "receivers", "receiver", out)
}

/// One reference, resolved; `None` (reported) when it names nothing defined.
fn one_ref<T>(
    l: &mut Loader<'_>,
    path: &str,
    singular: &str,
    name: &str,
    defined: &BTreeMap<ComponentId, T>,
) -> Option<ComponentId> {
    match ComponentId::parse(name) {
        Err(msg) => {
            l.error(path, msg);
            None
        }
        Ok(id) if defined.contains_key(&id) => Some(id),
        Ok(id) => {
            let section = format!("{singular}s");
            if !l.declared.contains(&format!("{section}.{id}")) {
                let msg = undefined(singular, &id, defined.keys());
                l.error(path, msg);
            }
            None
        }
    }
}

fn dedup(
    l: &mut Loader<'_>,
    base: &str,
    field: &str,
    singular: &str,
    refs: Vec<(usize, ComponentId)>,
) -> Vec<ComponentId> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, id) in refs {
        if seen.insert(id.clone()) {
            out.push(id);
        } else {
            l.error(
                format!("{base}.{field}[{i}]"),
                format!("{singular} `{id}` is listed twice"),
            );
        }
    }
    out
}

/// Every connector must end a traces pipeline and start a metrics pipeline, as in the
/// collector: one without the other would count spans nobody reads, or read nothing.
pub(crate) fn check_connectors(l: &mut Loader<'_>, cfg: &Config) {
    for id in cfg.connectors.keys() {
        let exported = cfg
            .pipelines(Signal::Traces)
            .any(|p| p.exporters.contains(id));
        let received = cfg
            .pipelines(Signal::Metrics)
            .any(|p| p.receivers.contains(id));
        match (exported, received) {
            (true, false) => l.error(
                format!("connectors.{id}"),
                format!("connector `{id}` is a traces pipeline's exporter but no metrics pipeline's receiver"),
            ),
            (false, true) => l.error(
                format!("connectors.{id}"),
                format!("connector `{id}` is a metrics pipeline's receiver but no traces pipeline's exporter"),
            ),
            _ => {}
        }
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
