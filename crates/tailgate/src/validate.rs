//! `tailgate validate --config F`

use std::process::ExitCode;

use tailgate_config::{Config, ExporterConfig, ProcessorConfig};

pub fn run(source: &crate::cli::ConfigSource) -> ExitCode {
    let path = &source.config;
    match source.load() {
        Ok(cfg) => {
            print!("{}", describe(&cfg));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path, errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// The limits as configured, in the form they were written (MiB or percent), with the
/// spike headroom's default spelled out and the soft limit the refusals start at.
fn describe_memory_limiter(m: &tailgate_config::components::MemoryLimiterConfig) -> String {
    let limits = if m.limit_mib > 0 {
        let (spike, origin) = match m.spike_limit_mib {
            Some(s) => (s, ""),
            None => (m.limit_mib / 5, " (default: 20% of the limit)"),
        };
        format!(
            "limit {} MiB, spike {spike} MiB{origin}: refuses at {} MiB live, or {} MiB RSS",
            m.limit_mib,
            m.limit_mib - spike,
            m.limit_mib
        )
    } else {
        format!(
            "limit {}% of memory, spike {}%: refuses at {}% live, or {}% RSS",
            m.limit_percentage,
            m.spike_limit_percentage,
            m.limit_percentage - m.spike_limit_percentage,
            m.limit_percentage
        )
    };
    format!("check every {}, {limits}", m.check_interval)
}

/// One exporter (or connector) line of a pipeline.
fn describe_exporter(cfg: &Config, id: &tailgate_config::ComponentId) -> String {
    if let Some(tailgate_config::connectors::ConnectorConfig::SpanMetrics(m)) =
        cfg.connectors.get(id)
    {
        return format!(
            "  connector {id}: RED metrics `{}.*` every {}, {} dimension(s){}\n",
            m.namespace,
            m.metrics_flush_interval,
            m.dimensions.len(),
            if m.exemplars.enabled {
                ", exemplars of kept traces"
            } else {
                ""
            }
        );
    }
    let detail = match &cfg.exporters[id] {
        ExporterConfig::Otlp(o) => format!("OTLP/gRPC to {}", o.endpoint),
        ExporterConfig::OtlpHttp(o) => {
            format!(
                "OTLP/HTTP to {}",
                o.traces_endpoint
                    .clone()
                    .or(o.endpoint.clone())
                    .unwrap_or_default()
            )
        }
        ExporterConfig::File(f) => format!("OTLP/JSON lines to {}", f.path),
        ExporterConfig::Debug(d) => format!("log summary ({:?})", d.verbosity).to_lowercase(),
        ExporterConfig::LoadBalancing(lb) => {
            let r = &lb.resolver;
            let resolver = if let Some(s) = &r.static_ {
                format!("static {}", s.hostnames.join(", "))
            } else if let Some(d) = &r.dns {
                format!("dns {}:{}", d.hostname, d.port)
            } else if let Some(k) = &r.k8s {
                format!("k8s service {}", k.service)
            } else {
                String::new()
            };
            format!("by trace ID to the owning gateway ({resolver})")
        }
        ExporterConfig::Prometheus(p) => format!(
            "Prometheus scrape endpoint on {}{}",
            p.endpoint,
            if p.enable_open_metrics {
                " (OpenMetrics with exemplars)"
            } else {
                ""
            }
        ),
    };
    format!("  exporter  {id}: {detail}\n")
}

/// The resolved pipelines, one stage per line.
pub fn describe(cfg: &Config) -> String {
    let mut out = format!("{}: valid\n", cfg.source);
    for p in &cfg.service.pipelines {
        out.push_str(&format!("pipeline {}\n", p.id));
        for r in &p.receivers {
            out.push_str(&format!("  receiver  {r}\n"));
        }
        for id in &p.processors {
            let detail = match &cfg.processors[id] {
                ProcessorConfig::MemoryLimiter(m) => describe_memory_limiter(m),
                ProcessorConfig::Batch(b) => {
                    format!("{} spans or {}", b.send_batch_size, b.timeout)
                }
                ProcessorConfig::Attributes(a) => format!("{} action(s)", a.actions.len()),
                ProcessorConfig::Resource(r) => format!("{} action(s)", r.attributes.len()),
                ProcessorConfig::TailSampling(t) => {
                    let policies: Vec<String> = t
                        .policies
                        .iter()
                        .map(|p| format!("{} ({})", p.name, p.kind.policy_type().name()))
                        .collect();
                    format!(
                        "decision_wait {}, policies: {}",
                        t.decision_wait,
                        policies.join(", ")
                    )
                }
                ProcessorConfig::Filter(f) => format!(
                    "{} span / {} spanevent condition(s)",
                    f.traces.span.len(),
                    f.traces.spanevent.len()
                ),
                ProcessorConfig::K8sAttributes(k) => {
                    let metadata = if k.extract.metadata.is_empty() {
                        tailgate_config::agent::K8S_METADATA_DEFAULT.len()
                    } else {
                        k.extract.metadata.len()
                    };
                    format!(
                        "{metadata} metadata, {} label(s), {} annotation(s), {} pod association(s){}",
                        k.extract.labels.len(),
                        k.extract.annotations.len(),
                        k.pod_association.len().max(1),
                        if k.passthrough { ", passthrough" } else { "" }
                    )
                }
            };
            out.push_str(&format!("  processor {id}: {detail}\n"));
        }
        for id in &p.exporters {
            out.push_str(&describe_exporter(cfg, id));
        }
    }
    if !cfg.service.extensions.is_empty() {
        let names: Vec<String> = cfg
            .service
            .extensions
            .iter()
            .map(ToString::to_string)
            .collect();
        out.push_str(&format!("extensions {}\n", names.join(", ")));
    }
    out
}
