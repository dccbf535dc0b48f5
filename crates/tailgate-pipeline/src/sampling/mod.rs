//! `tail_sampling` in the running pipeline: [`TailSamplingStage`] spreads spans over a fixed
//! set of `ractor` shard actors by trace ID; each actor owns one pure
//! [`tailgate_sampling::TraceShard`] (the per-trace state machines — "virtual actors", one per
//! trace, without a real actor's memory and start-up cost per trace).
//!
//! ```text
//! consume ─ reserve bytes in BufferBudget (refuse retryably if full)
//!         ─ group by shard (hash of trace ID) ─► cast Ingest ─► ShardActor ─► TraceShard::ingest
//!                                                 Tick (at the next deadline) ─► TraceShard::poll
//!                                                 kept spans ─► next stage (waits out refusals)
//! ```
//!
//! Ractor mailboxes are unbounded; what bounds them is the byte budget: every span in a
//! mailbox was reserved before it was sent (see [`shard`]). No lock is taken on the hot path
//! (the budget is atomics; each shard is owned by one actor).
//!
//! Rooms: this file is the stage (start, handoff intake, status, shutdown); `routing.rs`
//! splits batches by owner and shard under the budget; `shard.rs` is the actor, one handler
//! per message; `handoff.rs` sends what a shard no longer owns; `metrics.rs` holds each
//! shard's metric handles.
//!
//! ## In a cluster
//!
//! With a [`ClusterLink`], `consume` splits each batch by owner on the newest ring: spans
//! this node owns go to the shards, the rest are forwarded to their owner (one call per
//! owner). When the ring changes, every shard takes out the traces it no longer owns
//! (`TraceShard::take_traces`) with the decisions of those traces and hands them to their new
//! owners; a trace whose handoff fails comes back (`restore_trace`) and is retried, so the
//! sender holds its copy until the receiver acknowledged it. A shard decides what it
//! holds at the deadline; traces it does not own are there only while no owner could take
//! them.

mod handoff;
mod metrics;
mod replication;
mod routing;
mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::metrics::{counter, gauge};
use ractor::{Actor, ActorRef};
use tailgate_config::sampling::TailSamplingConfig;
use tailgate_otlp::{EncodedSpan, TraceId};
use tailgate_ring::Ring;
use tailgate_sampling::policy::PolicySet;
use tailgate_sampling::{BufferBudget, DecisionTransfer, ShardConfig, TraceShard, TraceTransfer};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use self::metrics::ShardMetrics;
use self::shard::{ShardActor, ShardCluster, ShardMsg, ShardState};
use crate::cluster::ClusterLink;
use crate::consumer::{BoxFuture, ConsumeError, Consumer};
use crate::telemetry::*;

pub use self::shard::ShardBuffered;

/// Default byte budget of buffered spans when neither `buffer_limit_mib` nor a memory limiter
/// sets one.
pub const BUFFER_LIMIT_MIB_DEFAULT: u64 = 512;
/// How long a status call waits for one shard.
const SHARD_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a leaving node checks whether its handoff is done.
const HANDED_OFF_POLL: Duration = Duration::from_millis(50);

/// Which shard owns a trace. Mixes both halves of the ID so shard choice is independent of
/// probabilistic sampling (which hashes the ID with FNV) and of ring placement.
pub fn shard_of(trace_id: &TraceId, shards: usize) -> usize {
    let hi = u64::from_le_bytes(trace_id.0[..8].try_into().expect("8 bytes"));
    let lo = u64::from_le_bytes(trace_id.0[8..].try_into().expect("8 bytes"));
    let mixed = (hi ^ lo.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize % shards
}

/// Settings the service derives from the config and the rest of the pipeline.
pub struct SamplingSetup {
    pub name: String,
    pub cfg: TailSamplingConfig,
    /// Resolved byte budget (config, or derived from `memory_limiter`).
    pub buffer_limit_bytes: u64,
    pub shards: usize,
    /// Told which traces were kept, once their spans are handed to the exporters (the
    /// span-metrics connectors' exemplars link only to such traces).
    pub kept_observer: Option<Arc<dyn KeptTraces>>,
}

/// Learns which traces a sampling stage kept.
pub trait KeptTraces: Send + Sync {
    /// `ids` were kept and their spans accepted by the next stage (an ID may repeat: late
    /// spans of a kept trace are reported again).
    fn kept(&self, ids: &mut dyn Iterator<Item = TraceId>);
}

/// What a node buffers, for `tailgate status` and for waiting out a handoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferedStatus {
    pub traces: u64,
    pub spans: u64,
    pub bytes: u64,
    /// Traces sent to another node and not acknowledged yet.
    pub in_flight: u64,
}

/// The stage's view of the cluster.
struct StageCluster {
    link: Arc<dyn ClusterLink>,
    ring: watch::Receiver<Arc<Ring>>,
    in_flight: Arc<AtomicU64>,
    watcher: tokio::task::JoinHandle<()>,
    /// `replication_factor: 2`: owned spans are copied to their replica before the ack.
    replicating: bool,
}

/// The `tail_sampling` processor stage.
pub struct TailSamplingStage {
    name: String,
    shards: Vec<ActorRef<ShardMsg>>,
    handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    budget: Arc<BufferBudget>,
    traces_limit: u64,
    block_on_overflow: bool,
    next: Arc<dyn Consumer>,
    cluster: Option<StageCluster>,
}

impl TailSamplingStage {
    /// Starts the shards. With `cluster`, the stage routes by its ring (see the module docs).
    pub async fn start(
        setup: SamplingSetup,
        next: Arc<dyn Consumer>,
        cluster: Option<Arc<dyn ClusterLink>>,
    ) -> anyhow::Result<Self> {
        let cfg = &setup.cfg;
        let shards = setup.shards.max(1);
        let replicating = cluster
            .as_ref()
            .is_some_and(|link| link.replication_factor() >= 2);
        let budget = Arc::new(BufferBudget::new(setup.buffer_limit_bytes));
        let cache_size = |v: Option<usize>| v.unwrap_or(cfg.num_traces as usize).div_ceil(shards);
        let shard_cfg = ShardConfig {
            decision_wait: cfg.decision_wait.0,
            decision_wait_after_root: (!cfg.decision_wait_after_root_received.is_zero())
                .then_some(cfg.decision_wait_after_root_received.0),
            traces_max: (cfg.num_traces as usize).div_ceil(shards),
            trace_bytes_max: cfg.maximum_trace_size_bytes,
            sampled_cache_size: cache_size(cfg.decision_cache.sampled_cache_size),
            non_sampled_cache_size: cache_size(cfg.decision_cache.non_sampled_cache_size),
            cache_ttl: cfg.decision_cache_ttl.0,
            record_policy: cfg.record_policy,
            drop_pending_on_shutdown: cfg.drop_pending_traces_on_shutdown,
            report_decisions: replicating,
            replica_grace: replication::replica_grace(cfg.decision_wait.0),
        };
        let epoch = Instant::now();
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut refs = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for index in 0..shards {
            // Each shard keeps its share of every rate limit (traces spread evenly by hash).
            let mut policies = PolicySet::compile(
                &cfg.policies,
                cfg.sample_on_first_match,
                1.0 / shards as f64,
            );
            policies.set_use_tracestate(cfg.use_tracestate);
            let shard_cluster = cluster.as_ref().map(|link| {
                let ring = Arc::clone(&link.ring().borrow());
                policies.set_rate_share(1.0 / (shards * ring.owners().len().max(1)) as f64);
                policies.set_override(*link.sampling_override().borrow());
                ShardCluster {
                    link: Arc::clone(link),
                    ring,
                    local: link.local_name().to_string(),
                    in_flight: Arc::clone(&in_flight),
                    retry_at: None,
                    resend_decisions: false,
                    replication: replicating.then(shard::Replication::default),
                }
            });
            let state = ShardState {
                budget: Arc::clone(&budget),
                metrics: ShardMetrics::new(&setup.name, index, policies.names()),
                processor: setup.name.clone(),
                shard: TraceShard::new(shard_cfg.clone(), policies, Arc::clone(&budget), shards),
                next: Arc::clone(&next),
                kept_observer: setup.kept_observer.clone(),
                epoch,
                tick_at: None,
                cluster: shard_cluster,
            };
            let (actor, handle) = Actor::spawn(None, ShardActor, state).await.map_err(|e| {
                anyhow::anyhow!("processors.{}: cannot start shard {index}: {e}", setup.name)
            })?;
            refs.push(actor);
            handles.push(handle);
        }
        gauge!(SAMPLING_BUFFER_LIMIT_BYTES, "processor" => setup.name.clone())
            .set(setup.buffer_limit_bytes as f64);
        let cluster = cluster.map(|link| {
            let ring = link.ring();
            let watcher = tokio::spawn(watch_cluster(
                link.ring(),
                link.sampling_override(),
                link.fenced(),
                refs.clone(),
                replicating,
            ));
            StageCluster {
                link,
                ring,
                in_flight,
                watcher,
                replicating,
            }
        });
        Ok(TailSamplingStage {
            name: setup.name,
            shards: refs,
            handles: Mutex::new(handles),
            budget,
            traces_limit: cfg.num_traces,
            block_on_overflow: cfg.block_on_overflow,
            next,
            cluster,
        })
    }

    /// Takes spans another gateway forwarded (they passed `hops` gateways): buffered here
    /// when this node owns them at its ring, passed on otherwise.
    pub async fn ingest_forwarded(
        &self,
        spans: Vec<EncodedSpan>,
        hops: u32,
    ) -> Result<(), ConsumeError> {
        counter!(CLUSTER_FORWARDED_IN_SPANS).increment(spans.len() as u64);
        self.route(spans, hops).await
    }

    /// Takes traces and decisions handed off by their previous owner; returns once every
    /// shard applied them (this is the ack the sender waits for).
    pub async fn accept_handoff(
        &self,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) -> Result<(), ConsumeError> {
        let shards = self.shards.len();
        let mut per_shard: Vec<(Vec<TraceTransfer>, Vec<DecisionTransfer>)> =
            (0..shards).map(|_| Default::default()).collect();
        for t in traces {
            per_shard[shard_of(&t.trace_id, shards)].0.push(t);
        }
        for d in decisions {
            per_shard[shard_of(&d.trace_id, shards)].1.push(d);
        }
        for (i, (traces, decisions)) in per_shard.into_iter().enumerate() {
            if traces.is_empty() && decisions.is_empty() {
                continue;
            }
            self.shards[i]
                .call(
                    |reply| ShardMsg::Accept {
                        traces,
                        decisions,
                        reply,
                    },
                    None,
                )
                .await
                .map_err(|_| ConsumeError::ShuttingDown)?;
        }
        Ok(())
    }

    /// (bytes reserved in the byte budget, its limit).
    pub fn budget_bytes(&self) -> (u64, u64) {
        (self.budget.bytes_used(), self.budget.bytes_limit())
    }

    /// What this node buffers now.
    pub async fn status(&self) -> BufferedStatus {
        let mut status = BufferedStatus::default();
        // Shards first, then the in-flight total: a trace leaves a shard only after it was
        // counted in flight, and stops counting only once acknowledged or back in a shard,
        // so this order never misses one.
        for shard in &self.shards {
            if let Ok(ractor::rpc::CallResult::Success(b)) = shard
                .call(ShardMsg::Status, Some(SHARD_STATUS_TIMEOUT))
                .await
            {
                status.traces += b.traces;
                status.spans += b.spans;
                status.bytes += b.bytes;
            }
        }
        status.in_flight = self
            .cluster
            .as_ref()
            .map_or(0, |c| c.in_flight.load(Ordering::Acquire));
        status
    }

    /// Waits until nothing is buffered or in flight (a leaving node's handoff is done), or
    /// `deadline`. Returns whether everything left.
    pub async fn wait_handed_off(&self, deadline: Instant) -> bool {
        loop {
            let s = self.status().await;
            if s.traces == 0 && s.in_flight == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    buffered = s.traces,
                    in_flight = s.in_flight,
                    "handoff did not finish before the deadline"
                );
                return false;
            }
            tokio::time::sleep(HANDED_OFF_POLL).await;
        }
    }
}

impl Consumer for TailSamplingStage {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let n = spans.len() as u64;
            counter!(PROCESSOR_INCOMING_ITEMS, "processor" => self.name.clone()).increment(n);
            if self.block_on_overflow && self.budget.traces_live() >= self.traces_limit {
                return Err(self.refuse(n, "num_traces"));
            }
            self.route(spans, 0).await
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(c) = &self.cluster {
                c.watcher.abort();
            }
            for shard in &self.shards {
                let wait = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = shard.call(ShardMsg::Drain, Some(wait)).await {
                    tracing::error!(processor = %self.name, error = %e, "shard did not drain before the shutdown deadline");
                }
                shard.stop(None);
            }
            for h in self.handles.lock().await.drain(..) {
                let _ = h.await;
            }
            self.update_gauges();
            self.next.shutdown(deadline).await;
        })
    }
}

/// Tells every shard about new rings and overrides, newest value first (a shard that misses
/// an intermediate epoch plans against the latest one, never chains moves).
async fn watch_cluster(
    mut ring: watch::Receiver<Arc<Ring>>,
    mut sampling: watch::Receiver<Option<f64>>,
    mut fenced: watch::Receiver<bool>,
    shards: Vec<ActorRef<ShardMsg>>,
    replicating: bool,
) {
    let mut degraded = false;
    if replicating {
        replication::report_degraded(&ring.borrow(), &mut degraded);
    }
    ring.mark_unchanged();
    sampling.mark_unchanged();
    fenced.mark_unchanged();
    loop {
        tokio::select! {
            changed = fenced.changed() => {
                if changed.is_err() { return; }
                let f = *fenced.borrow_and_update();
                for s in &shards {
                    let _ = s.cast(ShardMsg::Fence(f));
                }
            }
            changed = ring.changed() => {
                if changed.is_err() { return; }
                let r = Arc::clone(&ring.borrow_and_update());
                if replicating {
                    replication::report_degraded(&r, &mut degraded);
                }
                for s in &shards {
                    let _ = s.cast(ShardMsg::Ring(Arc::clone(&r)));
                }
            }
            changed = sampling.changed() => {
                if changed.is_err() { return; }
                let p = *sampling.borrow_and_update();
                for s in &shards {
                    let _ = s.cast(ShardMsg::Override(p));
                }
            }
        }
    }
}
