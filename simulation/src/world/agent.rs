//! Agents in the simulation: the real `k8sattributes` (fed a fixed pod) and `loadbalancing`
//! routing by the ring they watch.

use std::sync::Arc;

use tailgate_config::{ComponentId, ExporterConfig, ProcessorConfig};
use tailgate_k8s::store::{MetadataStore, PodRecord};
use tailgate_k8s::{K8sAttributesStage, KubeMetadata};
use tailgate_pipeline::ServiceOptions;
use tailgate_pipeline::consumer::{BoxFuture, Consumer};
use tailgate_pipeline::service::ComponentFactory;
use tailgate_routing::LoadBalancer;
use tokio::sync::watch;

use crate::net::SimNetwork;

use super::{OTLP_PORT, Shared, name_hash};

/// The agents of scenarios that send through them; each names one gateway in its resolver
/// (where it subscribes to the ring) and learns the others from the ring.
pub const AGENTS: [(&str, &str); 2] = [("a0", "g0"), ("a1", "g1")];
/// The pod the simulated Kubernetes API says the driver runs in.
pub const DRIVER_POD: &str = "shop-driver-7d9f-x2x9k";

fn agent_config(ring_source: &str) -> String {
    format!(
        r"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:{OTLP_PORT}
processors:
  k8sattributes:
    extract:
      metadata: [k8s.pod.name, k8s.namespace.name]
    pod_association:
      - sources:
          - from: connection
  batch:
    send_batch_size: 200
    timeout: 100ms
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls:
          insecure: true
        timeout: 30s
        retry_on_failure:
          initial_interval: 100ms
          max_interval: 1s
          max_elapsed_time: 0s
    resolver:
      static:
        hostnames: [{ring_source}:{OTLP_PORT}]
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [k8sattributes, batch]
      exporters: [loadbalancing]
"
    )
}

/// Builds an agent's components for the simulation: enrichment from a simulated pod source
/// (the store filled as the Kubernetes watchers would), routing over the simulated network.
struct SimAgentComponents {
    shared: Arc<Shared>,
    name: String,
}

impl ComponentFactory for SimAgentComponents {
    fn processor<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ProcessorConfig,
        next: Arc<dyn Consumer>,
        _opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>> {
        Box::pin(async move {
            let ProcessorConfig::K8sAttributes(k) = cfg else {
                anyhow::bail!("{id}: not simulated");
            };
            let mut store = MetadataStore::new();
            store.upsert_pod(PodRecord {
                name: DRIVER_POD.into(),
                namespace: "shop".into(),
                uid: "driver-uid".into(),
                ip: Some(turmoil::lookup("driver")),
                ..Default::default()
            });
            let (_tx, synced) = watch::channel(true);
            let metadata = KubeMetadata::detached(Arc::new(std::sync::RwLock::new(store)), synced);
            Ok(
                Arc::new(K8sAttributesStage::new(id.to_string(), k, metadata, next))
                    as Arc<dyn Consumer>,
            )
        })
    }

    fn exporter<'a>(
        &'a self,
        id: &'a ComponentId,
        cfg: &'a ExporterConfig,
        opts: &'a ServiceOptions,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Consumer>>> {
        Box::pin(async move {
            let ExporterConfig::LoadBalancing(lb) = cfg else {
                anyhow::bail!("{id}: not simulated");
            };
            let balancer =
                LoadBalancer::start(id.to_string(), lb, Arc::clone(&opts.network), opts.seed)
                    .await?;
            self.shared
                .agent_routes
                .lock()
                .unwrap()
                .insert(self.name.clone(), balancer.watch_routes());
            Ok(Arc::new(balancer) as Arc<dyn Consumer>)
        })
    }
}

/// The software of an agent host: the real agent pipeline, forever (agents do not restart in
/// these scenarios).
pub async fn agent_host(
    shared: Arc<Shared>,
    name: String,
    ring_source: String,
    seed: u64,
) -> turmoil::Result {
    let cfg =
        tailgate_config::load_str(&agent_config(&ring_source), "(simulation agent)", &|_| None)
            .map_err(|e| format!("simulation agent config: {e}"))?;
    let opts = ServiceOptions {
        seed: seed ^ name_hash(&name),
        network: Arc::new(SimNetwork),
        components: Some(Arc::new(SimAgentComponents {
            shared: Arc::clone(&shared),
            name: name.clone(),
        })),
        ..Default::default()
    };
    let _service = tailgate_pipeline::start(&cfg, opts)
        .await
        .map_err(|e| format!("{name}: {e:#}"))?;
    shared.endpoints.lock().unwrap().insert(name.clone());
    shared.log(format!("{name} started (ring from {ring_source})"));
    std::future::pending::<()>().await;
    Ok(())
}
