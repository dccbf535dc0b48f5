//! A whole gateway: the pipeline service, and — in a cluster — its [`ClusterNode`], the
//! cluster gRPC server, and the graceful leave on shutdown. `tailgate gateway`, `tailgate dev`
//! and the simulator all start gateways through [`start_gateway`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tailgate_config::Config;
use tailgate_pipeline::net::{Incoming, Network};
use tailgate_pipeline::service::{RunningService, ServiceOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::network::Peers;
use crate::node::{ClusterNode, ClusterSettings, WallClock};
use crate::server::{cluster_service, ring_watch_service};

/// What a gateway needs to be a cluster member.
pub struct ClusterStart {
    pub settings: ClusterSettings,
    /// Connections to the cluster address (already bound).
    pub incoming: Incoming,
    pub local_addr: SocketAddr,
    /// What this gateway calls its peers over: the network `incoming` came from (with
    /// `cluster.tls`, mutual TLS on TCP).
    pub network: Arc<dyn Network>,
    pub wall_clock: WallClock,
}

pub struct RunningGateway {
    pub service: RunningService,
    pub node: Option<ClusterNode>,
    pub cluster_addr: Option<SocketAddr>,
    cluster_server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

pub async fn start_gateway(
    cfg: &Config,
    mut opts: ServiceOptions,
    cluster: Option<ClusterStart>,
) -> anyhow::Result<RunningGateway> {
    let Some(cluster) = cluster else {
        let service = tailgate_pipeline::start(cfg, opts).await?;
        return Ok(RunningGateway {
            service,
            node: None,
            cluster_addr: None,
            cluster_server: None,
        });
    };
    let samplers = cfg
        .processors
        .values()
        .filter(|p| matches!(p, tailgate_config::ProcessorConfig::TailSampling(_)))
        .count();
    if samplers != 1 {
        anyhow::bail!(
            "a cluster gateway needs exactly one tail_sampling processor in its config, found {samplers}"
        );
    }
    let node = ClusterNode::new(
        cluster.settings,
        Peers::new(cluster.network),
        cluster.wall_clock,
    )
    .await?;
    let cluster_addr = cluster.local_addr;
    let (stop, stopped) = oneshot::channel::<()>();
    let server_node = node.clone();
    let incoming = cluster.incoming;
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(cluster_service(server_node.clone()))
            .add_service(ring_watch_service(server_node))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cluster gRPC server stopped");
        }
    });
    opts.cluster = Some(node.link());
    let watch_node = node.clone();
    opts.grpc_services = Some(Arc::new(move |routes| {
        routes.add_service(ring_watch_service(watch_node.clone()))
    }));
    let service = tailgate_pipeline::start(cfg, opts)
        .await
        .context("cannot start the pipeline")?;
    let sampler = service
        .samplers()
        .first()
        .cloned()
        .context("the tail_sampling processor is in no pipeline")?;
    node.attach(sampler);
    node.run();
    Ok(RunningGateway {
        service,
        node: Some(node),
        cluster_addr: Some(cluster_addr),
        cluster_server: Some((stop, task)),
    })
}

impl RunningGateway {
    /// Graceful shutdown within `timeout`. In a cluster: Leaving → new epoch → hand every
    /// buffered trace off (up to three quarters of the timeout) → stop receivers and drain
    /// what could not be handed off (decided on partial data, counted) → remove this node.
    pub async fn shutdown(self, timeout: Duration) {
        let start = Instant::now();
        let deadline = start + timeout;
        if let Some(node) = &self.node {
            let handoff_deadline = start + timeout * 3 / 4;
            match node.start_leaving(handoff_deadline).await {
                Ok(()) => tracing::info!("left the ring; handing buffered traces off"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not leave the ring; deciding buffered traces here");
                }
            }
            for s in self.service.samplers() {
                if s.wait_handed_off(handoff_deadline).await {
                    tracing::info!("every buffered trace was handed off");
                }
            }
        }
        self.service
            .shutdown(deadline.saturating_duration_since(Instant::now()))
            .await;
        if let Some(node) = &self.node {
            if let Err(e) = node.finish_leaving(deadline).await {
                tracing::warn!(error = %e, "could not remove this node; the leader removes it after member_timeout");
            }
            if let Some((stop, task)) = self.cluster_server {
                let _ = stop.send(());
                let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
            }
            node.shutdown().await;
        }
    }
}
