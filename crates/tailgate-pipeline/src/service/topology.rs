//! The topology builder: exporters (shared by every pipeline naming them), then each
//! pipeline's processor stages, built back to front so each stage is handed its successor.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use tailgate_config::sampling::TailSamplingConfig;
use tailgate_config::{
    ComponentId, Config, ExporterConfig, PipelineConfig, ProcessorConfig, Signal,
};
use tailgate_processors::attributes::AttributesProcessor;
use tailgate_processors::batch::Batcher;
use tailgate_processors::filter::FilterProcessor;
use tailgate_processors::memory::MemoryLimits;
use tailgate_processors::resource::ResourceProcessor;

use super::ServiceOptions;
use crate::connector::Connectors;
use crate::consumer::Consumer;
use crate::exporter::{ExportFork, FanOut, ManagedExporter, build_exporter, queue_and_retry};
use crate::memory::{MemorySource, MemoryStage, total_memory_bytes};
use crate::sampling::{BUFFER_LIMIT_MIB_DEFAULT, SamplingSetup, TailSamplingStage};
use crate::stages::{BatchStage, SyncStage};

/// Exporters in use, by ID.
#[derive(Default)]
pub(super) struct Exporters {
    /// Built here: take encoded batches through a queue and retry.
    pub(super) managed: BTreeMap<ComponentId, Arc<ManagedExporter>>,
    /// Built by the [`super::ComponentFactory`] (`loadbalancing`): take spans.
    pub(super) routing: BTreeMap<ComponentId, Arc<dyn Consumer>>,
}

impl Exporters {
    /// Starts every exporter some traces pipeline names; unused ones are not started (a
    /// metrics pipeline's exporters are started with the connectors).
    pub(super) async fn start(cfg: &Config, opts: &ServiceOptions) -> anyhow::Result<Exporters> {
        let mut out = Exporters::default();
        for (i, (id, ecfg)) in cfg.exporters.iter().enumerate() {
            let used = cfg
                .pipelines(Signal::Traces)
                .any(|p| p.exporters.contains(id));
            if !used {
                continue;
            }
            if let ExporterConfig::LoadBalancing(_) = ecfg {
                let factory = opts.components.as_ref().with_context(|| {
                    format!("exporters.{id}: `loadbalancing` is not available in this embedding")
                })?;
                out.routing
                    .insert(id.clone(), factory.exporter(id, ecfg, opts).await?);
                continue;
            }
            let exporter = build_exporter(id, ecfg, opts.network.as_ref())?;
            let (queue, retry) = queue_and_retry(ecfg);
            let seed = opts
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64);
            out.managed.insert(
                id.clone(),
                ManagedExporter::start(id.to_string(), exporter, &queue, retry, seed),
            );
        }
        Ok(out)
    }

    /// The one consumer a pipeline's last stage hands its spans to.
    fn sink_for(
        &self,
        pipeline: &PipelineConfig,
        connectors: &Connectors,
        seed: u64,
    ) -> Arc<dyn Consumer> {
        let managed: Vec<Arc<ManagedExporter>> = pipeline
            .exporters
            .iter()
            .filter_map(|id| self.managed.get(id).cloned())
            .collect();
        let mut parts: Vec<Arc<dyn Consumer>> = Vec::new();
        if !managed.is_empty() {
            parts.push(Arc::new(FanOut::new(managed, seed)));
        }
        parts.extend(
            pipeline
                .exporters
                .iter()
                .filter_map(|id| self.routing.get(id).cloned()),
        );
        parts.extend(pipeline.exporters.iter().filter_map(|id| {
            connectors
                .by_id
                .get(id)
                .map(|c| Arc::clone(c) as Arc<dyn Consumer>)
        }));
        if parts.len() == 1 {
            parts.swap_remove(0)
        } else {
            Arc::new(ExportFork { parts })
        }
    }
}

/// Every pipeline's first stage, in config order, and the sampling stages within them.
pub(super) struct Pipelines {
    pub(super) heads: Vec<Arc<dyn Consumer>>,
    pub(super) samplers: Vec<Arc<TailSamplingStage>>,
}

/// Builds each pipeline back to front, ending in its exporters.
pub(super) async fn build_pipelines(
    cfg: &Config,
    opts: &ServiceOptions,
    exporters: &Exporters,
    connectors: &Connectors,
    memory_source: &Arc<dyn MemorySource>,
) -> anyhow::Result<Pipelines> {
    let mut out = Pipelines {
        heads: Vec::new(),
        samplers: Vec::new(),
    };
    let built = Built {
        opts,
        memory_source,
        connectors,
    };
    for pipeline in cfg.pipelines(Signal::Traces) {
        let mut next = exporters.sink_for(pipeline, connectors, opts.seed);
        for id in pipeline.processors.iter().rev() {
            next = processor_stage(cfg, pipeline, id, next, &built, &mut out).await?;
        }
        out.heads.push(next);
    }
    Ok(out)
}

/// What processor stages are built with.
struct Built<'a> {
    opts: &'a ServiceOptions,
    memory_source: &'a Arc<dyn MemorySource>,
    connectors: &'a Connectors,
}

/// One processor's stage in front of `next`.
async fn processor_stage(
    cfg: &Config,
    pipeline: &PipelineConfig,
    id: &ComponentId,
    next: Arc<dyn Consumer>,
    with: &Built<'_>,
    built: &mut Pipelines,
) -> anyhow::Result<Arc<dyn Consumer>> {
    let (opts, memory_source) = (with.opts, with.memory_source);
    let name = id.to_string();
    Ok(match &cfg.processors[id] {
        ProcessorConfig::MemoryLimiter(m) => {
            let limits = MemoryLimits::resolve(m, total_memory_bytes());
            Arc::new(MemoryStage::start(
                name,
                limits,
                m.check_interval.0,
                Arc::clone(memory_source),
                next,
            ))
        }
        ProcessorConfig::Batch(b) => {
            Arc::new(BatchStage::start(name, Batcher::new(b), b.timeout.0, next))
        }
        ProcessorConfig::Attributes(a) => Arc::new(SyncStage::new(
            name,
            Box::new(AttributesProcessor::new(a)),
            next,
        )),
        ProcessorConfig::Resource(r) => Arc::new(SyncStage::new(
            name,
            Box::new(ResourceProcessor::new(r)),
            next,
        )),
        ProcessorConfig::Filter(f) => Arc::new(SyncStage::new(
            name,
            Box::new(FilterProcessor::new(f)),
            next,
        )),
        ProcessorConfig::TailSampling(t) => {
            let setup = SamplingSetup {
                name,
                cfg: t.clone(),
                buffer_limit_bytes: sampling_budget_bytes(cfg, pipeline, t),
                shards: t.shards.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(std::num::NonZero::get)
                        .unwrap_or(2)
                }),
                kept_observer: with.connectors.board.clone().map(|b| b as _),
            };
            let stage =
                Arc::new(TailSamplingStage::start(setup, next, opts.cluster.clone()).await?);
            built.samplers.push(Arc::clone(&stage));
            stage
        }
        other @ ProcessorConfig::K8sAttributes(_) => {
            let factory = opts.components.as_ref().with_context(|| {
                format!("processors.{id}: `k8sattributes` is not available in this embedding")
            })?;
            factory.processor(id, other, next, opts).await?
        }
    })
}

/// `buffer_limit_mib`, else half the soft limit of the pipeline's `memory_limiter`, else the
/// default: buffered spans must leave room for everything else in the process.
fn sampling_budget_bytes(cfg: &Config, pipeline: &PipelineConfig, t: &TailSamplingConfig) -> u64 {
    const MIB: u64 = 1024 * 1024;
    if let Some(mib) = t.buffer_limit_mib {
        return mib * MIB;
    }
    let limiter = pipeline
        .processors
        .iter()
        .find_map(|id| match &cfg.processors[id] {
            ProcessorConfig::MemoryLimiter(m) => Some(m),
            _ => None,
        });
    match limiter {
        Some(m) => (MemoryLimits::resolve(m, total_memory_bytes()).soft_limit_bytes / 2).max(MIB),
        None => BUFFER_LIMIT_MIB_DEFAULT * MIB,
    }
}
