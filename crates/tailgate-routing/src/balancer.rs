//! [`LoadBalancer`]: the `loadbalancing` exporter. Splits each batch by owner, sends every
//! part to its endpoint over OTLP/gRPC, and on a retryable failure waits (backoff from
//! `retry_on_failure`), asks the resolver to refresh, and routes the part again by the newest
//! routes — so spans follow the ring through gateway restarts instead of retrying a dead
//! address.
//!
//! **Accounting (nothing silent):** a batch is taken only after its bytes fit in
//! `queue_limit_mib` (else refused retryably: the receiver answers RESOURCE_EXHAUSTED and the
//! application's SDK retries). Every taken span ends as sent
//! (`otelcol_exporter_sent_spans_total`) or failed (`otelcol_exporter_send_failed_spans_total`
//! with `reason`: `permanent`, `retries_exhausted`, `shutdown`). Bytes held are released when
//! a part ends either way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge};
use tailgate_config::ExporterConfig;
use tailgate_config::agent::LoadBalancingConfig;
use tailgate_config::components::RetryConfig;
use tailgate_otlp::EncodedSpan;
use tailgate_pipeline::consumer::{BoxFuture, ConsumeError, Consumer, RefuseReason};
use tailgate_pipeline::exporter::{Backoff, ExportBatch, ExportError, Exporter, build_exporter};
use tailgate_pipeline::net::Network;
use tailgate_pipeline::telemetry::{
    EXPORTER_ENQUEUE_FAILED_SPANS, EXPORTER_SEND_FAILED_SPANS, EXPORTER_SENT_SPANS,
};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::resolver::Resolver;
use crate::ring_watch::{RingState, RingWatcher};
use crate::routes::Routes;
use crate::telemetry::*;

/// How long a refused batch should wait before the sender retries.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Wait between routing attempts while no endpoint is known at all.
const NO_ROUTE_WAIT: Duration = Duration::from_millis(500);
/// Bytes charged per span besides its encoding (its share of resource, scope, bookkeeping).
const SPAN_OVERHEAD_BYTES: u64 = 64;

/// One endpoint's client.
struct Target {
    exporter: Arc<dyn Exporter>,
    /// `sending_queue.num_consumers` requests in flight per endpoint.
    permits: Arc<Semaphore>,
}

struct Shared {
    name: String,
    cfg: LoadBalancingConfig,
    network: Arc<dyn Network>,
    routes: watch::Receiver<Routes>,
    resolver: Resolver,
    targets: Mutex<BTreeMap<String, Arc<Target>>>,
    limit_bytes: u64,
    held_bytes: AtomicU64,
    held_spans: AtomicU64,
    closed: AtomicBool,
    /// Set at the shutdown deadline: what is still held was counted as failed then.
    abandoned: AtomicBool,
    seed: u64,
    attempts: AtomicU64,
    idle: tokio::sync::Notify,
}

/// The `loadbalancing` exporter.
pub struct LoadBalancer {
    shared: Arc<Shared>,
    _ring: Option<RingWatcher>,
    routes_task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.routes_task.abort();
    }
}

/// A part of a batch on its way to one endpoint.
struct Part {
    spans: Vec<EncodedSpan>,
    bytes: u64,
    first_try: Instant,
    backoff: Backoff,
}

fn size_of(spans: &[EncodedSpan]) -> u64 {
    spans
        .iter()
        .map(|s| s.bytes().len() as u64 + SPAN_OVERHEAD_BYTES)
        .sum()
}

impl LoadBalancer {
    /// Resolves endpoints, follows the ring, and is ready to take spans. `seed` drives retry
    /// jitter and which gateway serves the ring first.
    pub async fn start(
        name: String,
        cfg: &LoadBalancingConfig,
        network: Arc<dyn Network>,
        seed: u64,
    ) -> anyhow::Result<LoadBalancer> {
        let resolver = Resolver::start(&cfg.resolver)
            .await
            .map_err(|e| anyhow::anyhow!("exporters.{name}.{e}"))?;
        // The ring is watched with the exporter's own TLS settings: a gateway that asks
        // agents for client certificates asks on its WatchRing stream too.
        let tls = if cfg.protocol.otlp.tls.insecure {
            None
        } else {
            let tls = tailgate_pipeline::exporter::client_tls(&cfg.protocol.otlp.tls)
                .map_err(|e| anyhow::anyhow!("exporters.{name}.protocol.otlp.tls: {e}"))?;
            Some(tls)
        };
        let ring = RingWatcher::start(Arc::clone(&network), resolver.endpoints.clone(), tls, seed);
        let (routes_tx, routes) = watch::channel(Routes::Nothing);
        let mut ring_state = ring.state.clone();
        let mut endpoints = resolver.endpoints.clone();
        let routes_task = tokio::spawn(async move {
            loop {
                let r: RingState = ring_state.borrow_and_update().clone();
                let eps = endpoints.borrow_and_update().clone();
                let routes = Routes::choose(r.ring.as_ref(), &eps);
                gauge!(ROUTING_MODE_RING).set(if routes.mode() == "ring" { 1.0 } else { 0.0 });
                routes_tx.send_replace(routes);
                tokio::select! {
                    r = ring_state.changed() => if r.is_err() { return },
                    r = endpoints.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(LoadBalancer {
            shared: Arc::new(Shared {
                name,
                limit_bytes: cfg.queue_limit_mib * 1024 * 1024,
                cfg: cfg.clone(),
                network,
                routes,
                resolver,
                targets: Mutex::new(BTreeMap::new()),
                held_bytes: AtomicU64::new(0),
                held_spans: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                seed,
                attempts: AtomicU64::new(0),
                idle: tokio::sync::Notify::new(),
            }),
            _ring: Some(ring),
            routes_task,
        })
    }

    /// The routes in use now (for tests and `tailgate status`).
    pub fn routes(&self) -> Routes {
        self.shared.routes.borrow().clone()
    }

    /// A receiver of route changes.
    pub fn watch_routes(&self) -> watch::Receiver<Routes> {
        self.shared.routes.clone()
    }

    /// Bytes and spans taken and not yet sent or failed.
    pub fn held(&self) -> (u64, u64) {
        (
            self.shared.held_bytes.load(Ordering::Acquire),
            self.shared.held_spans.load(Ordering::Acquire),
        )
    }
}

impl Shared {
    fn retry_config(&self) -> &RetryConfig {
        &self.cfg.protocol.otlp.retry_on_failure
    }

    fn target(&self, endpoint: &str) -> anyhow::Result<Arc<Target>> {
        let mut targets = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = targets.get(endpoint) {
            return Ok(Arc::clone(t));
        }
        let address = crate::resolver::with_default_port(endpoint, crate::OTLP_GRPC_PORT);
        let ecfg = ExporterConfig::Otlp(self.cfg.protocol.otlp.for_endpoint(&address));
        let id = tailgate_config::ComponentId::parse(&self.name).map_err(|e| anyhow::anyhow!(e))?;
        let exporter = build_exporter(&id, &ecfg, self.network.as_ref())?;
        let permits = self.cfg.protocol.otlp.sending_queue.num_consumers.max(1);
        let t = Arc::new(Target {
            exporter,
            permits: Arc::new(Semaphore::new(permits)),
        });
        // Forget clients of endpoints no longer resolved (their connections close).
        let live: Vec<String> = self.resolver.endpoints.borrow().clone();
        let routes = self.routes.borrow().clone();
        targets.retain(|ep, _| {
            live.contains(ep)
                || matches!(&routes, Routes::Cluster(r) if r.addrs.values().any(|a| a == ep))
        });
        targets.insert(endpoint.to_string(), Arc::clone(&t));
        Ok(t)
    }

    fn release(&self, spans: u64, bytes: u64) {
        self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
        let left = self.held_spans.fetch_sub(spans, Ordering::AcqRel) - spans;
        gauge!(ROUTING_QUEUE_BYTES, "exporter" => self.name.clone())
            .set(self.held_bytes.load(Ordering::Acquire) as f64);
        if left == 0 {
            self.idle.notify_waiters();
        }
    }

    fn failed(&self, spans: u64, reason: &'static str) {
        if !self.abandoned.load(Ordering::Acquire) {
            counter!(EXPORTER_SEND_FAILED_SPANS, "exporter" => self.name.clone(), "reason" => reason)
                .increment(spans);
        }
    }

    fn new_backoff(&self) -> Backoff {
        let n = self.attempts.fetch_add(1, Ordering::Relaxed);
        Backoff::new(
            self.retry_config(),
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(n),
        )
    }
}

/// Routes `part` by the current routes and sends each piece; pieces that fail retryably come
/// back here after their backoff.
fn dispatch(shared: Arc<Shared>, part: Part) {
    // Split under the borrow: cloning the routes (the owners' address map) per batch is waste.
    let (groups, unroutable) = shared.routes.borrow().split(part.spans);
    let total: u64 = groups.values().map(|g| g.len() as u64).sum::<u64>() + unroutable.len() as u64;
    let mut bytes_left = part.bytes;
    let mut pieces: Vec<(Option<String>, Vec<EncodedSpan>)> =
        groups.into_iter().map(|(ep, s)| (Some(ep), s)).collect();
    if !unroutable.is_empty() {
        pieces.push((None, unroutable));
    }
    let n = pieces.len();
    // The first piece keeps the batch's backoff state; the rest start their own.
    let mut kept_backoff = Some(part.backoff);
    for (i, (endpoint, spans)) in pieces.into_iter().enumerate() {
        // Split the held bytes in proportion; the last piece takes the remainder.
        let bytes = if i + 1 == n {
            bytes_left
        } else {
            (part.bytes * spans.len() as u64 / total.max(1)).min(bytes_left)
        };
        bytes_left -= bytes;
        let piece = Part {
            spans,
            bytes,
            first_try: part.first_try,
            backoff: kept_backoff.take().unwrap_or_else(|| shared.new_backoff()),
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(send(shared, endpoint, piece));
    }
}

async fn send(shared: Arc<Shared>, endpoint: Option<String>, mut part: Part) {
    let n = part.spans.len() as u64;
    let Some(endpoint) = endpoint else {
        // Nothing resolved yet: wait and route again.
        counter!(ROUTING_NO_ROUTE_WAITS, "exporter" => shared.name.clone()).increment(n);
        if part.first_try.elapsed() > shared.retry_config().max_elapsed_time.0
            && !shared.retry_config().max_elapsed_time.is_zero()
        {
            shared.failed(n, "retries_exhausted");
            shared.release(n, part.bytes);
            return;
        }
        tokio::time::sleep(NO_ROUTE_WAIT).await;
        shared.resolver.refresh();
        dispatch(shared, part);
        return;
    };
    let target = match shared.target(&endpoint) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "cannot build a client for a resolved endpoint");
            shared.failed(n, "permanent");
            shared.release(n, part.bytes);
            return;
        }
    };
    let outcome = {
        let _permit = target.permits.acquire().await.expect("never closed");
        let batch = ExportBatch::from_spans(&part.spans);
        target.exporter.export(&batch).await
    };
    match outcome {
        Ok(o) => {
            if !shared.abandoned.load(Ordering::Acquire) {
                counter!(EXPORTER_SENT_SPANS, "exporter" => shared.name.clone())
                    .increment(n - o.rejected_spans.min(n));
                if o.rejected_spans > 0 {
                    shared.failed(o.rejected_spans.min(n), "rejected");
                }
            }
            shared.release(n, part.bytes);
        }
        Err(ExportError::Permanent { message }) => {
            tracing::warn!(endpoint, %message, spans = n, "gateway refused spans permanently");
            shared.failed(n, "permanent");
            shared.release(n, part.bytes);
        }
        Err(ExportError::Retryable {
            message,
            retry_after,
        }) => {
            let elapsed = part.first_try.elapsed();
            match part.backoff.next_wait(elapsed, retry_after) {
                Some(wait) if !shared.abandoned.load(Ordering::Acquire) => {
                    tracing::debug!(endpoint, %message, ?wait, "send failed; routing again after backoff");
                    counter!(ROUTING_REROUTED_SPANS, "exporter" => shared.name.clone())
                        .increment(n);
                    shared.resolver.refresh();
                    tokio::time::sleep(wait).await;
                    dispatch(shared, part);
                }
                _ => {
                    tracing::warn!(endpoint, %message, spans = n, "giving up on spans after retries");
                    shared.failed(n, "retries_exhausted");
                    shared.release(n, part.bytes);
                }
            }
        }
    }
}

impl Consumer for LoadBalancer {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let s = &self.shared;
            let n = spans.len() as u64;
            if s.closed.load(Ordering::Acquire) {
                return Err(ConsumeError::ShuttingDown);
            }
            let bytes = size_of(&spans);
            let mut held = s.held_bytes.load(Ordering::Acquire);
            loop {
                if held + bytes > s.limit_bytes && held > 0 {
                    counter!(EXPORTER_ENQUEUE_FAILED_SPANS, "exporter" => s.name.clone())
                        .increment(n);
                    return Err(ConsumeError::Refused {
                        reason: RefuseReason::ExporterQueueFull,
                        retry_after: REFUSED_RETRY_AFTER,
                    });
                }
                match s.held_bytes.compare_exchange(
                    held,
                    held + bytes,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => held = now,
                }
            }
            s.held_spans.fetch_add(n, Ordering::AcqRel);
            gauge!(ROUTING_QUEUE_BYTES, "exporter" => s.name.clone())
                .set(s.held_bytes.load(Ordering::Acquire) as f64);
            let part = Part {
                spans,
                bytes,
                first_try: Instant::now(),
                backoff: s.new_backoff(),
            };
            dispatch(Arc::clone(s), part);
            Ok(())
        })
    }

    /// Takes nothing more, waits until everything held was sent or failed, or the deadline;
    /// what is still held then is counted as failed (`reason="shutdown"`).
    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &self.shared;
            s.closed.store(true, Ordering::Release);
            loop {
                let idle = s.idle.notified();
                if s.held_spans.load(Ordering::Acquire) == 0 {
                    return;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    break;
                }
            }
            if !s.abandoned.swap(true, Ordering::AcqRel) {
                let left = s.held_spans.load(Ordering::Acquire);
                if left > 0 {
                    tracing::warn!(spans = left, "shutdown deadline: spans not delivered");
                    counter!(EXPORTER_SEND_FAILED_SPANS, "exporter" => s.name.clone(), "reason" => "shutdown")
                        .increment(left);
                }
            }
        })
    }
}
