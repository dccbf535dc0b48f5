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
//! mailbox was reserved before it was sent. No lock is taken on the hot path (the budget is
//! atomics; each shard is owned by one actor).
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tailgate_config::sampling::TailSamplingConfig;
use tailgate_otlp::{EncodedSpan, TraceId};
use tailgate_ring::{Placement, Ring};
use tailgate_sampling::policy::PolicySet;
use tailgate_sampling::{
    BufferBudget, DecisionTransfer, ShardConfig, ShardCounters, TraceShard, TraceTransfer,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::cluster::{ClusterLink, FORWARD_HOPS_MAX, HandoffFailed};
use crate::consumer::{BoxFuture, ConsumeError, Consumer, RefuseReason};
use crate::telemetry::*;

/// Default byte budget without a `memory_limiter` in the pipeline.
pub const BUFFER_LIMIT_MIB_DEFAULT: u64 = 512;
/// Longest pause between retries when the next stage refuses kept spans.
const DELIVER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// How long a trace whose forward or handoff failed stays undecided here at least: enough
/// for a short partition to end and the owner's own decision to arrive (then it is settled
/// by that decision, not decided twice).
const STRAY_HOLD: Duration = Duration::from_secs(8);
/// Pause before a shard retries handing off traces whose handoff failed.
const HANDOFF_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Most traces in one handoff message (bounds message size and the work lost to a failure).
const HANDOFF_TRACES_PER_MESSAGE: usize = 2048;

/// Which shard owns a trace. Mixes both halves of the ID so shard choice is independent of
/// probabilistic sampling (which hashes the ID with FNV) and of ring placement.
pub fn shard_of(trace_id: &TraceId, shards: usize) -> usize {
    let hi = u64::from_le_bytes(trace_id.0[..8].try_into().expect("8 bytes"));
    let lo = u64::from_le_bytes(trace_id.0[8..].try_into().expect("8 bytes"));
    let mixed = (hi ^ lo.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize % shards
}

pub enum ShardMsg {
    /// Spans whose bytes were reserved in the budget.
    Ingest(Vec<EncodedSpan>),
    /// Spans of traces this node does not own, kept because their owner could not be
    /// reached; bytes reserved. Handed off again later.
    IngestStray(Vec<EncodedSpan>),
    /// A deadline may have passed.
    Tick,
    /// Shutdown: decide (or drop) everything, deliver, reply.
    Drain(RpcReplyPort<()>),
    /// A new ring: hand off what moved.
    Ring(Arc<Ring>),
    /// The runtime sampling override changed.
    Override(Option<f64>),
    /// Fenced or not (see `ClusterLink::fenced`).
    Fence(bool),
    /// Traces and decisions handed to this node by their previous owner.
    Accept {
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
        reply: RpcReplyPort<()>,
    },
    /// A handoff failed; the traces come back, `away` after they left. `in_flight` is what
    /// they counted in the stage's in-flight total until now.
    Returned {
        traces: Vec<TraceTransfer>,
        away: Duration,
        in_flight: u64,
        /// The failed message carried decisions: send them again.
        decisions_failed: bool,
    },
    /// Buffered (traces, spans, bytes).
    Status(RpcReplyPort<(u64, u64, u64)>),
}

/// A shard's view of the cluster.
struct ShardCluster {
    link: Arc<dyn ClusterLink>,
    ring: Arc<Ring>,
    local: String,
    /// Traces on their way to another node (shared by every shard of the stage).
    in_flight: Arc<AtomicU64>,
    /// When to retry handing off traces this shard holds but does not own.
    retry_at: Option<Duration>,
    /// A handoff carrying decisions failed: the retry sends the decisions of every trace this
    /// shard does not own again (without them the new owner decides its own copy of a trace
    /// already exported here — a duplicate the simulator found under asymmetric partitions).
    resend_decisions: bool,
    shards: usize,
}

struct ShardActor;

struct ShardState {
    budget: Arc<BufferBudget>,
    metrics: ShardMetrics,
    processor: String,
    shard: TraceShard,
    next: Arc<dyn Consumer>,
    epoch: Instant,
    tick_at: Option<Duration>,
    cluster: Option<ShardCluster>,
}

impl ShardState {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    async fn deliver(&self, kept: Vec<EncodedSpan>) {
        if kept.is_empty() {
            return;
        }
        loop {
            match self.next.consume(kept.clone()).await {
                Ok(()) | Err(ConsumeError::Failed(_)) => return,
                Err(ConsumeError::ShuttingDown) => {
                    counter!(SAMPLING_SPANS_DROPPED, "processor" => self.processor.clone(), "reason" => "downstream_closed")
                        .increment(kept.len() as u64);
                    return;
                }
                // Waiting here blocks the shard: the budget fills and senders are refused.
                Err(ConsumeError::Refused { retry_after, .. }) => {
                    tokio::time::sleep(retry_after.min(DELIVER_RETRY_PAUSE_MAX)).await
                }
            }
        }
    }

    /// Hands every trace this shard does not own at its ring to its owner (with the
    /// decisions of such traces when `with_decisions`, i.e. after a ring change).
    fn hand_off(&mut self, myself: &ActorRef<ShardMsg>, with_decisions: bool) {
        let Some(c) = &mut self.cluster else { return };
        c.retry_at = None;
        if c.ring.is_empty() {
            return;
        }
        let with_decisions = with_decisions || std::mem::take(&mut c.resend_decisions);
        let now = Instant::now().saturating_duration_since(self.epoch);
        let (ring, local) = (Arc::clone(&c.ring), c.local.clone());
        let moves = |id: &TraceId| !ring.owns(&local, id);
        let traces = self.shard.take_traces(now, &moves);
        let decisions = if with_decisions {
            self.shard.decisions_for(now, &moves)
        } else {
            Vec::new()
        };
        if traces.is_empty() && decisions.is_empty() {
            return;
        }
        let mut traces = Placement::split(&ring, &local, traces, |t| t.trace_id).remote;
        let mut decisions = Placement::split(&ring, &local, decisions, |d| d.trace_id).remote;
        let owners: std::collections::BTreeSet<String> =
            traces.keys().chain(decisions.keys()).cloned().collect();
        for owner in owners {
            let mut ts = traces.remove(&owner).unwrap_or_default();
            let mut ds = decisions.remove(&owner).unwrap_or_default();
            while !ts.is_empty() || !ds.is_empty() {
                let chunk: Vec<TraceTransfer> = ts
                    .drain(..ts.len().min(HANDOFF_TRACES_PER_MESSAGE))
                    .collect();
                let dchunk: Vec<DecisionTransfer> = std::mem::take(&mut ds);
                let carries_decisions = !dchunk.is_empty();
                let n = chunk.len() as u64;
                c.in_flight.fetch_add(n, Ordering::AcqRel);
                let send = c.link.hand_off(&owner, ring.epoch(), chunk, dchunk);
                let (in_flight, myself, owner) =
                    (Arc::clone(&c.in_flight), myself.clone(), owner.clone());
                let started = Instant::now();
                tokio::spawn(async move {
                    match send.await {
                        // Acknowledged: the receiver owns the traces now.
                        Ok(()) => {
                            in_flight.fetch_sub(n, Ordering::AcqRel);
                        }
                        Err(HandoffFailed { error, traces }) => {
                            tracing::warn!(%owner, traces = traces.len(), error = %error, "handoff failed; the traces stay here and are retried");
                            counter!(CLUSTER_HANDOFF_FAILED_TRACES).increment(traces.len() as u64);
                            let away = started.elapsed();
                            // They stay counted in flight until the shard has them back, so
                            // "nothing buffered, nothing in flight" never misses them.
                            let msg = ShardMsg::Returned {
                                traces,
                                away,
                                in_flight: n,
                                decisions_failed: carries_decisions,
                            };
                            if let Err(ractor::MessagingErr::SendErr(ShardMsg::Returned {
                                traces,
                                ..
                            })) = myself.cast(msg)
                            {
                                // Only after shutdown stopped the shard: counted, never silent.
                                counter!(CLUSTER_HANDOFF_LOST_TRACES)
                                    .increment(traces.len() as u64);
                                in_flight.fetch_sub(n, Ordering::AcqRel);
                            }
                        }
                    }
                });
            }
        }
    }

    fn schedule(&mut self, myself: &ActorRef<ShardMsg>) {
        let retry = self.cluster.as_ref().and_then(|c| c.retry_at);
        // Fenced: deadlines wait (the Fence(false) message polls); never spin on a past one.
        let due = if self.shard.is_fenced() {
            None
        } else {
            self.shard.next_deadline()
        };
        let Some(deadline) = [due, retry].into_iter().flatten().min() else {
            return;
        };
        if self.tick_at.is_some_and(|t| t <= deadline) {
            return;
        }
        self.tick_at = Some(deadline);
        let wait = deadline.saturating_sub(self.now());
        myself.send_after(wait, || ShardMsg::Tick);
    }

    fn flush_metrics(&mut self) {
        let c = self.shard.take_counters();
        self.metrics.record(self.shard.policy_names(), c);
        self.metrics
            .buffered_spans
            .set(self.shard.spans_buffered() as f64);
        self.metrics
            .traces_on_memory
            .set(self.budget.traces_live() as f64);
        self.metrics
            .buffered_bytes
            .set(self.budget.bytes_used() as f64);
    }
}

/// Metric handles registered once per shard, so recording on the hot path allocates no
/// label strings.
struct ShardMetrics {
    processor: String,
    received: Counter,
    kept: Counter,
    new_traces: Counter,
    after_forget: Counter,
    handed_off: Counter,
    received_by_handoff: Counter,
    dropped: [Counter; 4],
    late: [Counter; 2],
    late_age: Histogram,
    timer_latency: Histogram,
    buffered_spans: Gauge,
    traces_on_memory: Gauge,
    buffered_bytes: Gauge,
    votes: HashMap<(usize, &'static str), Counter>,
    decisions: HashMap<&'static str, Counter>,
    early: HashMap<&'static str, Counter>,
    orphans: HashMap<String, Counter>,
}

impl ShardMetrics {
    fn new(processor: &str, shard: usize) -> Self {
        let p = || processor.to_string();
        let dropped = |reason: &'static str| counter!(SAMPLING_SPANS_DROPPED, "processor" => p(), "reason" => reason);
        ShardMetrics {
            processor: p(),
            received: counter!(SAMPLING_SPANS_RECEIVED, "processor" => p()),
            kept: counter!(SAMPLING_SPANS_KEPT, "processor" => p()),
            new_traces: counter!(TAIL_SAMPLING_NEW_TRACE_ID_RECEIVED, "processor" => p()),
            after_forget: counter!(SAMPLING_LATE_SPANS_AFTER_FORGET, "processor" => p()),
            handed_off: counter!(SAMPLING_TRACES_HANDED_OFF, "processor" => p()),
            received_by_handoff: counter!(SAMPLING_TRACES_RECEIVED_BY_HANDOFF, "processor" => p()),
            dropped: [
                dropped("policy"),
                dropped("late_dropped_trace"),
                dropped("shutdown"),
                dropped("duplicate"),
            ],
            late: [
                counter!(TAIL_SAMPLING_EARLY_RELEASES_FROM_CACHE, "processor" => p(), "sampled" => "true"),
                counter!(TAIL_SAMPLING_EARLY_RELEASES_FROM_CACHE, "processor" => p(), "sampled" => "false"),
            ],
            late_age: histogram!(TAIL_SAMPLING_LATE_SPAN_AGE, "processor" => p()),
            timer_latency: histogram!(TAIL_SAMPLING_DECISION_TIMER_LATENCY, "processor" => p()),
            buffered_spans: gauge!(SAMPLING_BUFFERED_SPANS, "processor" => p(), "shard" => shard.to_string()),
            traces_on_memory: gauge!(TAIL_SAMPLING_TRACES_ON_MEMORY, "processor" => p()),
            buffered_bytes: gauge!(SAMPLING_BUFFERED_BYTES, "processor" => p()),
            votes: HashMap::new(),
            decisions: HashMap::new(),
            early: HashMap::new(),
            orphans: HashMap::new(),
        }
    }

    fn record(&mut self, policies: &[String], c: ShardCounters) {
        self.received.increment(c.spans_received);
        self.kept.increment(c.spans_kept);
        self.new_traces.increment(c.traces_new);
        self.after_forget.increment(c.late_spans_after_forget);
        self.handed_off.increment(c.traces_handed_off);
        self.received_by_handoff
            .increment(c.traces_received_by_handoff);
        let dropped = [
            c.spans_dropped_policy,
            c.spans_dropped_late,
            c.spans_dropped_shutdown,
            c.spans_duplicate,
        ];
        for (counter, v) in self.dropped.iter().zip(dropped) {
            counter.increment(v);
        }
        self.late[0].increment(c.late_spans_kept);
        self.late[1].increment(c.late_spans_dropped);
        for age in c.late_span_ages {
            self.late_age.record(age.as_secs_f64());
        }
        for late in c.decision_lateness {
            self.timer_latency.record(late.as_secs_f64() * 1000.0);
        }
        let processor = &self.processor;
        for ((policy, decision), v) in c.votes {
            let sampled = if decision == "sampled" {
                "true"
            } else {
                "false"
            };
            self.votes
                .entry((policy, decision))
                .or_insert_with(|| {
                    counter!(TAIL_SAMPLING_COUNT_TRACES_SAMPLED, "processor" => processor.clone(), "policy" => policies[policy].clone(), "decision" => decision, "sampled" => sampled)
                })
                .increment(v);
        }
        for (decision, v) in c.decisions {
            let sampled = if decision == "sampled" {
                "true"
            } else {
                "false"
            };
            self.decisions
                .entry(decision)
                .or_insert_with(|| {
                    counter!(TAIL_SAMPLING_GLOBAL_COUNT_TRACES_SAMPLED, "processor" => processor.clone(), "decision" => decision, "sampled" => sampled)
                })
                .increment(v);
        }
        for (reason, v) in c.early_decisions {
            self.early
                .entry(reason.label())
                .or_insert_with(|| counter!(SAMPLING_EARLY_DECISIONS, "processor" => processor.clone(), "reason" => reason.label()))
                .increment(v);
        }
        for (service, v) in c.orphan_spans {
            if let Some(counter) = self.orphans.get(&service) {
                counter.increment(v);
            } else {
                let counter = counter!(ORPHAN_SPANS, "processor" => processor.clone(), "service_name" => service.clone());
                counter.increment(v);
                self.orphans.insert(service, counter);
            }
        }
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardState;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: ShardState,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Ingest(spans) => {
                let now = state.now();
                let released = state.shard.ingest(spans, now);
                state.deliver(released.kept).await;
            }
            ShardMsg::IngestStray(spans) => {
                let now = state.now();
                let released = state.shard.ingest_held(spans, now, STRAY_HOLD);
                state.deliver(released.kept).await;
                if let Some(c) = &mut state.cluster {
                    c.retry_at.get_or_insert(now + HANDOFF_RETRY_PAUSE);
                }
            }
            ShardMsg::Tick => {
                state.tick_at = None;
                let now = state.now();
                let released = state.shard.poll(now);
                state.deliver(released.kept).await;
                if state
                    .cluster
                    .as_ref()
                    .and_then(|c| c.retry_at)
                    .is_some_and(|at| at <= now)
                {
                    state.hand_off(&myself, false);
                }
            }
            ShardMsg::Ring(ring) => {
                if let Some(c) = &mut state.cluster {
                    let owners = ring.owners().len().max(1);
                    // Rate limits are cluster-wide: each owner takes its share.
                    state.shard.set_rate_share(1.0 / (c.shards * owners) as f64);
                    c.ring = ring;
                }
                state.hand_off(&myself, true);
            }
            ShardMsg::Override(percent) => state.shard.set_override(percent),
            ShardMsg::Fence(fenced) => {
                if fenced != state.shard.is_fenced() {
                    tracing::info!(
                        fenced,
                        "sampling decisions {}",
                        if fenced {
                            "paused: no contact with the cluster"
                        } else {
                            "resumed"
                        }
                    );
                }
                state.shard.set_fenced(fenced);
                if !fenced {
                    let now = state.now();
                    let released = state.shard.poll(now);
                    state.deliver(released.kept).await;
                }
            }
            ShardMsg::Accept {
                traces,
                decisions,
                reply,
            } => {
                let now = state.now();
                for d in decisions {
                    let released = state.shard.accept_decision(d, now);
                    state.deliver(released.kept).await;
                }
                let mut stray = false;
                for t in traces {
                    if let Some(c) = &state.cluster {
                        stray |= !c.ring.owns(&c.local, &t.trace_id);
                    }
                    let released = state.shard.accept_trace(t, now);
                    state.deliver(released.kept).await;
                }
                let _ = reply.send(());
                if stray && let Some(c) = &mut state.cluster {
                    // Sent for an older epoch: passed on to the newest owner.
                    c.retry_at = Some(now);
                }
            }
            ShardMsg::Returned {
                traces,
                away,
                in_flight,
                decisions_failed,
            } => {
                let now = state.now();
                let mut kept = Vec::new();
                for mut t in traces {
                    t.remaining = t.remaining.saturating_sub(away);
                    t.age += away;
                    kept.extend(state.shard.restore_trace(t, now, STRAY_HOLD).kept);
                }
                if let Some(c) = &mut state.cluster {
                    c.in_flight.fetch_sub(in_flight, Ordering::AcqRel);
                    c.retry_at = Some(now + HANDOFF_RETRY_PAUSE);
                    c.resend_decisions |= decisions_failed;
                }
                state.deliver(kept).await;
            }
            ShardMsg::Status(reply) => {
                let _ = reply.send((
                    state.shard.traces_buffered() as u64,
                    state.shard.spans_buffered() as u64,
                    state.shard.bytes_buffered(),
                ));
                return Ok(());
            }
            ShardMsg::Drain(reply) => {
                let now = state.now();
                let released = state.shard.drain(now);
                state.deliver(released.kept).await;
                state.flush_metrics();
                let _ = reply.send(());
                return Ok(());
            }
        }
        state.flush_metrics();
        state.schedule(&myself);
        Ok(())
    }
}

/// Settings the service derives from the config and the rest of the pipeline.
pub struct SamplingSetup {
    pub name: String,
    pub cfg: TailSamplingConfig,
    /// Resolved byte budget (config, or derived from `memory_limiter`).
    pub buffer_limit_bytes: u64,
    pub shards: usize,
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
                    shards,
                }
            });
            let state = ShardState {
                budget: Arc::clone(&budget),
                metrics: ShardMetrics::new(&setup.name, index),
                processor: setup.name.clone(),
                shard: TraceShard::new(shard_cfg.clone(), policies, Arc::clone(&budget), shards),
                next: Arc::clone(&next),
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
            ));
            StageCluster {
                link,
                ring,
                in_flight,
                watcher,
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
            if let Ok(ractor::rpc::CallResult::Success((t, s, b))) = shard
                .call(ShardMsg::Status, Some(Duration::from_secs(2)))
                .await
            {
                status.traces += t;
                status.spans += s;
                status.bytes += b;
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reserves budget for spans and sends them to their shards (`stray`: not owned here).
    fn enqueue(&self, spans: Vec<EncodedSpan>, stray: bool) -> Result<(), ConsumeError> {
        let n = spans.len() as u64;
        let bytes: u64 = spans.iter().map(|s| s.bytes.len() as u64).sum();
        if stray {
            // Spans are never lost for want of a reachable owner: over budget, early
            // decisions bring memory back down.
            self.budget.force_reserve(bytes);
        } else if !self.budget.try_reserve(bytes) {
            self.update_gauges();
            return Err(self.refuse(n, "buffer_full"));
        }
        let shards = self.shards.len();
        let mut per_shard: Vec<Vec<EncodedSpan>> = (0..shards).map(|_| Vec::new()).collect();
        for s in spans {
            per_shard[shard_of(&s.meta.trace_id, shards)].push(s);
        }
        for (i, group) in per_shard.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let msg = if stray {
                ShardMsg::IngestStray(group)
            } else {
                ShardMsg::Ingest(group)
            };
            if let Err(e) = self.shards[i].cast(msg) {
                // Only after shutdown stopped the actor; give the reservation back.
                if let ractor::MessagingErr::SendErr(
                    ShardMsg::Ingest(lost) | ShardMsg::IngestStray(lost),
                ) = e
                {
                    self.budget
                        .release(lost.iter().map(|s| s.bytes.len() as u64).sum());
                }
                return Err(ConsumeError::ShuttingDown);
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// Buffers what this node owns, forwards the rest to its owners.
    async fn route(&self, spans: Vec<EncodedSpan>, hops: u32) -> Result<(), ConsumeError> {
        let Some(c) = &self.cluster else {
            return self.enqueue(spans, false);
        };
        let ring = Arc::clone(&c.ring.borrow());
        if ring.is_empty() {
            // Not in the cluster yet (no ring learned): another gateway may own these traces
            // and hold their other spans. Deciding here would split them (a slow-joining
            // gateway decided children without their root, found by the simulator under
            // latency). Hold them undecided, like spans whose owner is unreachable; the first
            // ring hands them to their owners.
            return self.enqueue(spans, true);
        }
        let local = c.link.local_name();
        let placement = Placement::split(&ring, local, spans, |s| s.meta.trace_id);
        if placement.is_all_local() {
            return self.enqueue(placement.local, false);
        }
        if !placement.local.is_empty() {
            self.enqueue(placement.local, false)?;
        }
        let mut strays = Vec::new();
        for (owner, spans) in placement.remote {
            let n = spans.len() as u64;
            if hops >= FORWARD_HOPS_MAX {
                counter!(CLUSTER_FORWARD_HOP_LIMIT_SPANS).increment(n);
                strays.extend(spans);
                continue;
            }
            match c.link.forward(&owner, ring.epoch(), hops + 1, &spans).await {
                Ok(()) => counter!(CLUSTER_FORWARDED_OUT_SPANS).increment(n),
                Err(e) => {
                    tracing::debug!(%owner, error = %e, "forward failed; keeping the spans here until the owner is back or replaced");
                    counter!(CLUSTER_FORWARD_FAILED_SPANS).increment(n);
                    strays.extend(spans);
                }
            }
        }
        if strays.is_empty() {
            Ok(())
        } else {
            self.enqueue(strays, true)
        }
    }

    fn refuse(&self, n: u64, reason: &'static str) -> ConsumeError {
        counter!(SAMPLING_SPANS_REFUSED, "processor" => self.name.clone(), "reason" => reason)
            .increment(n);
        counter!(PROCESSOR_REFUSED_SPANS, "processor" => self.name.clone()).increment(n);
        ConsumeError::Refused {
            reason: RefuseReason::SamplingBufferFull,
            retry_after: Duration::from_secs(1),
        }
    }

    fn update_gauges(&self) {
        gauge!(TAIL_SAMPLING_TRACES_ON_MEMORY, "processor" => self.name.clone())
            .set(self.budget.traces_live() as f64);
        gauge!(SAMPLING_BUFFERED_BYTES, "processor" => self.name.clone())
            .set(self.budget.bytes_used() as f64);
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
) {
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
