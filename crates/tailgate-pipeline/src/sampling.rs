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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tailgate_config::sampling::TailSamplingConfig;
use tailgate_otlp::{EncodedSpan, TraceId};
use tailgate_sampling::policy::PolicySet;
use tailgate_sampling::{BufferBudget, ShardConfig, ShardCounters, TraceShard};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::consumer::{BoxFuture, ConsumeError, Consumer, RefuseReason};
use crate::telemetry::*;

/// Default byte budget without a `memory_limiter` in the pipeline.
pub const BUFFER_LIMIT_MIB_DEFAULT: u64 = 512;
/// Longest pause between retries when the next stage refuses kept spans.
const DELIVER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);

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
    /// A deadline may have passed.
    Tick,
    /// Shutdown: decide (or drop) everything, deliver, reply.
    Drain(RpcReplyPort<()>),
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

    fn schedule(&mut self, myself: &ActorRef<ShardMsg>) {
        let Some(deadline) = self.shard.next_deadline() else {
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
            ShardMsg::Tick => {
                state.tick_at = None;
                let now = state.now();
                let released = state.shard.poll(now);
                state.deliver(released.kept).await;
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

/// The `tail_sampling` processor stage.
pub struct TailSamplingStage {
    name: String,
    shards: Vec<ActorRef<ShardMsg>>,
    handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    budget: Arc<BufferBudget>,
    traces_limit: u64,
    block_on_overflow: bool,
    next: Arc<dyn Consumer>,
}

impl TailSamplingStage {
    pub async fn start(setup: SamplingSetup, next: Arc<dyn Consumer>) -> anyhow::Result<Self> {
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
        let mut refs = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for index in 0..shards {
            // Each shard keeps its share of every rate limit (traces spread evenly by hash).
            let policies = PolicySet::compile(
                &cfg.policies,
                cfg.sample_on_first_match,
                1.0 / shards as f64,
            );
            let state = ShardState {
                budget: Arc::clone(&budget),
                metrics: ShardMetrics::new(&setup.name, index),
                processor: setup.name.clone(),
                shard: TraceShard::new(shard_cfg.clone(), policies, Arc::clone(&budget), shards),
                next: Arc::clone(&next),
                epoch,
                tick_at: None,
            };
            let (actor, handle) = Actor::spawn(None, ShardActor, state).await.map_err(|e| {
                anyhow::anyhow!("processors.{}: cannot start shard {index}: {e}", setup.name)
            })?;
            refs.push(actor);
            handles.push(handle);
        }
        gauge!(SAMPLING_BUFFER_LIMIT_BYTES, "processor" => setup.name.clone())
            .set(setup.buffer_limit_bytes as f64);
        Ok(TailSamplingStage {
            name: setup.name,
            shards: refs,
            handles: Mutex::new(handles),
            budget,
            traces_limit: cfg.num_traces,
            block_on_overflow: cfg.block_on_overflow,
            next,
        })
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
            let bytes: u64 = spans.iter().map(|s| s.bytes.len() as u64).sum();
            if !self.budget.try_reserve(bytes) {
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
                if let Err(e) = self.shards[i].cast(ShardMsg::Ingest(group)) {
                    // Only after shutdown stopped the actor; give the reservation back.
                    if let ractor::MessagingErr::SendErr(ShardMsg::Ingest(lost)) = e {
                        self.budget
                            .release(lost.iter().map(|s| s.bytes.len() as u64).sum());
                    }
                    return Err(ConsumeError::ShuttingDown);
                }
            }
            self.update_gauges();
            Ok(())
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
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
