//! Everything that listens: the receivers' OTLP/gRPC and OTLP/HTTP ports, the extensions and
//! the metrics endpoint, each a [`Server`] that stops when told.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::routing::get;
use axum::serve::IncomingStream;
use metrics::gauge;
use tailgate_config::components::GrpcServerConfig;
use tailgate_config::components::MetricsLevel;
use tailgate_config::{Config, ExtensionConfig, ReceiverConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::service::Routes;

use super::http_serve::serve_http;
use super::{BoundAddresses, Server, ServiceOptions};
use crate::connections::{ConnectionLimits, guard_connections};
use crate::consumer::Consumer;
use crate::extension::health::Health;
use crate::memory::MemorySource;
use crate::net::PeerAddr;
use crate::receiver::Ingest;
use crate::receiver::grpc::OtlpGrpcService;
use crate::stages::Tee;
use crate::telemetry::{PROCESS_UPTIME, recorder};
use crate::tls::{ALPN_GRPC, ALPN_HTTP, accept_tls, receiver_tls};

/// HTTP/2 flow-control windows and frame size of the OTLP/gRPC receiver.
const GRPC_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
const GRPC_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
const GRPC_FRAME_BYTES_MAX: u32 = 1024 * 1024;
/// A new OTLP/gRPC connection must send the HTTP/2 preface within this (see
/// `connections`): one that says nothing, or a byte a second, is closed.
const GRPC_PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Listeners started so far, and where they bound.
#[derive(Default)]
pub(super) struct Listeners {
    pub(super) addresses: BoundAddresses,
    /// Stopped first at shutdown, so no new spans come in.
    pub(super) receivers: Vec<Server>,
    /// Extensions and metrics: stopped last, so health and metrics answer while draining.
    pub(super) auxiliary: Vec<Server>,
}

impl Listeners {
    /// Starts every receiver some pipeline names, feeding the heads of those pipelines
    /// (`heads` in config order).
    pub(super) async fn start_receivers(
        &mut self,
        cfg: &Config,
        opts: &ServiceOptions,
        heads: &[Arc<dyn Consumer>],
    ) -> anyhow::Result<()> {
        for (id, rcfg) in &cfg.receivers {
            let mut pipelines: Vec<Arc<dyn Consumer>> = cfg
                .pipelines(tailgate_config::Signal::Traces)
                .zip(heads)
                .filter(|(p, _)| p.receivers.contains(id))
                .map(|(_, head)| Arc::clone(head))
                .collect();
            let consumer: Arc<dyn Consumer> = match pipelines.len() {
                0 => continue,
                1 => pipelines.swap_remove(0),
                _ => Arc::new(Tee { pipelines }),
            };
            let ingest = Arc::new(Ingest {
                receiver: id.to_string(),
                consumer,
            });
            let ReceiverConfig::Otlp(otlp) = rcfg;
            if let Some(grpc) = &otlp.protocols.grpc {
                self.start_grpc_receiver(&id.to_string(), grpc, &ingest, opts)
                    .await?;
            }
            if let Some(http) = &otlp.protocols.http {
                let what = format!("receivers.{id}.protocols.http");
                let router = crate::receiver::http::router(Arc::clone(&ingest), http);
                let (incoming, local) = opts
                    .network
                    .bind(&http.endpoint)
                    .await
                    .with_context(|| format!("{what}: cannot listen on {}", http.endpoint))?;
                self.addresses.otlp_http.insert(id.to_string(), local);
                let limits = ConnectionLimits {
                    max_connections: http.max_connections,
                    first_bytes_timeout: http.read_header_timeout.0,
                    idle_timeout: http.idle_timeout.0,
                };
                let incoming = guard_connections(incoming, limits, &what);
                let incoming = match &http.tls {
                    None => incoming,
                    Some(tls) => {
                        let tls = receiver_tls(tls, ALPN_HTTP, &what)
                            .with_context(|| format!("{what}.tls"))?;
                        accept_tls(tls, incoming, &what)
                    }
                };
                let server = serve_http(incoming, router, http.read_header_timeout.0);
                self.receivers.push(server);
            }
        }
        Ok(())
    }

    async fn start_grpc_receiver(
        &mut self,
        id: &str,
        grpc: &GrpcServerConfig,
        ingest: &Arc<Ingest>,
        opts: &ServiceOptions,
    ) -> anyhow::Result<()> {
        let (incoming, local) = opts.network.bind(&grpc.endpoint).await.with_context(|| {
            format!(
                "receivers.{id}.protocols.grpc: cannot listen on {}",
                grpc.endpoint
            )
        })?;
        self.addresses.otlp_grpc.insert(id.to_string(), local);
        let what = format!("receivers.{id}.protocols.grpc");
        let keepalive = &grpc.keepalive.server_parameters;
        let limits = ConnectionLimits {
            max_connections: grpc.max_connections,
            first_bytes_timeout: GRPC_PREFACE_TIMEOUT,
            idle_timeout: keepalive.max_connection_idle.0,
        };
        let incoming = guard_connections(incoming, limits, &what);
        let incoming = match &grpc.tls {
            None => incoming,
            Some(tls) => {
                let tls =
                    receiver_tls(tls, ALPN_GRPC, &what).with_context(|| format!("{what}.tls"))?;
                accept_tls(tls, incoming, &what)
            }
        };
        let svc = OtlpGrpcService::new(Arc::clone(ingest), grpc.max_recv_msg_size_mib);
        let mut routes = Routes::new(svc);
        if let Some(add) = &opts.grpc_services {
            routes = add(routes);
        }
        let max_concurrent_streams = grpc.max_concurrent_streams;
        let ping_every = keepalive.time.map(|d| d.0);
        let ping_timeout = keepalive.timeout.map(|d| d.0);
        let max_age = keepalive.max_connection_age.map(|d| d.0);
        let max_age_grace = keepalive.max_connection_age_grace.map(|d| d.0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Large requests (hundreds of spans) arrive in fewer frames and without waiting
            // on window updates; h2's 64 KiB defaults cost a third of the CPU at load.
            let mut server = tonic::transport::Server::builder()
                .initial_stream_window_size(GRPC_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(GRPC_CONNECTION_WINDOW_BYTES)
                .max_frame_size(GRPC_FRAME_BYTES_MAX)
                .max_concurrent_streams(max_concurrent_streams)
                .http2_keepalive_interval(ping_every)
                .http2_keepalive_timeout(ping_timeout);
            if let Some(age) = max_age {
                server = server.max_connection_age(age);
            }
            if let Some(grace) = max_age_grace {
                server = server.max_connection_age_grace(grace);
            }
            let result = server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "OTLP/gRPC server stopped");
            }
        });
        self.receivers.push(Server { stop, task });
        Ok(())
    }

    /// Starts the extensions `service.extensions` lists.
    pub(super) async fn start_extensions(
        &mut self,
        cfg: &Config,
        health: &Arc<Health>,
    ) -> anyhow::Result<()> {
        for id in &cfg.service.extensions {
            match &cfg.extensions[id] {
                ExtensionConfig::HealthCheck(h) => {
                    let listener = bind(&h.endpoint, &format!("extensions.{id}")).await?;
                    self.addresses.health = Some(listener.local_addr()?);
                    let state = Arc::clone(health);
                    let router =
                        Router::new().route(&h.path, get(move || async move { state.respond() }));
                    self.auxiliary.push(spawn_axum(listener, router));
                }
                ExtensionConfig::Pprof(p) => {
                    let listener = bind(&p.endpoint, &format!("extensions.{id}")).await?;
                    self.addresses.pprof = Some(listener.local_addr()?);
                    let router = Router::new().route(
                        "/debug/pprof/profile",
                        get(crate::extension::pprof::profile_handler),
                    );
                    self.auxiliary.push(spawn_axum(listener, router));
                }
            }
        }
        Ok(())
    }

    /// The Prometheus endpoint of `service.telemetry.metrics`, unless its level is `none`.
    /// Memory gauges and uptime are refreshed on each scrape.
    pub(super) async fn start_metrics(
        &mut self,
        cfg: &Config,
        memory_source: &Arc<dyn MemorySource>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let telemetry = &cfg.service.telemetry.metrics;
        if telemetry.level == MetricsLevel::None {
            return Ok(());
        }
        let listener = bind(&telemetry.address, "service.telemetry.metrics.address").await?;
        self.addresses.metrics = Some(listener.local_addr()?);
        let scrape_source = Arc::clone(memory_source);
        let router = Router::new().route(
            "/metrics",
            get(move || {
                let source = Arc::clone(&scrape_source);
                async move {
                    crate::memory::measure(source.as_ref());
                    gauge!(PROCESS_UPTIME).set(started.elapsed().as_secs_f64());
                    recorder().render()
                }
            }),
        );
        self.auxiliary.push(spawn_axum(listener, router));
        Ok(())
    }
}

async fn bind(endpoint: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(endpoint)
        .await
        .with_context(|| format!("{what}: cannot listen on {endpoint}"))
}

fn spawn_axum<L>(listener: L, router: Router) -> Server
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> PeerAddr: Connected<IncomingStream<'a, L>>,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<PeerAddr>();
        let _ = axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Server { stop, task }
}

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> PeerAddr {
        PeerAddr(Some(*stream.remote_addr()))
    }
}
