//! `tailgate loadgen`: synthetic traces over OTLP/gRPC, with fresh random trace IDs, a chosen
//! shape (spans per trace, attributes) and mix (error, slow, flagged traces), at a rate or as
//! fast as the target takes them. Every random choice comes from `--seed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailgate_otlp::codec::{RawCodec, TRACE_EXPORT_PATH};
use tailgate_otlp::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tailgate_otlp::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use tailgate_otlp::proto::resource::v1::Resource;
use tailgate_otlp::proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, status::StatusCode,
};
use tokio::time::Instant;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

#[derive(Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// OTLP/gRPC endpoint of the target.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    /// Stop after this many traces (0 = no limit; then --duration applies).
    #[arg(long, default_value_t = 0)]
    pub traces: u64,
    /// Stop after this long.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Traces per second over all workers; 0 = as fast as the target accepts.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 20)]
    pub spans_per_trace: usize,
    /// String attributes per span (besides the few semantic ones).
    #[arg(long, default_value_t = 10)]
    pub attributes: usize,
    /// Spans per request (a request may hold spans of several traces).
    #[arg(long, default_value_t = 512)]
    pub spans_per_request: usize,
    /// Percent of traces with an ERROR span.
    #[arg(long, default_value_t = 1.0)]
    pub error_percent: f64,
    /// Percent of traces whose root lasts `--slow-ms`.
    #[arg(long, default_value_t = 1.0)]
    pub slow_percent: f64,
    #[arg(long, default_value_t = 2500)]
    pub slow_ms: u64,
    /// Percent of traces flagged `sampling.priority=always_on`.
    #[arg(long, default_value_t = 0.0)]
    pub flagged_percent: f64,
    /// gzip request bodies, as real senders do.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub gzip: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Service name on the resource.
    #[arg(long, default_value = "loadgen")]
    pub service_name: String,
}

/// What a run did, counted by the workers.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub traces: AtomicU64,
    pub spans: AtomicU64,
    pub error_traces: AtomicU64,
    pub slow_traces: AtomicU64,
    pub flagged_traces: AtomicU64,
    pub requests_ok: AtomicU64,
    /// Refused retryably by the target (then retried).
    pub requests_refused: AtomicU64,
    /// Failed for good (after retries or permanently).
    pub requests_failed: AtomicU64,
    pub spans_failed: AtomicU64,
    pub spans_rejected: AtomicU64,
}

impl LoadStats {
    pub fn line(&self, elapsed: Duration) -> String {
        let spans = self.spans.load(Ordering::Relaxed);
        format!(
            "LOADGEN traces={} spans={} error_traces={} slow_traces={} flagged_traces={} requests_ok={} requests_refused={} requests_failed={} spans_failed={} spans_rejected={} elapsed_s={:.2} spans_per_s={:.0}",
            self.traces.load(Ordering::Relaxed),
            spans,
            self.error_traces.load(Ordering::Relaxed),
            self.slow_traces.load(Ordering::Relaxed),
            self.flagged_traces.load(Ordering::Relaxed),
            self.requests_ok.load(Ordering::Relaxed),
            self.requests_refused.load(Ordering::Relaxed),
            self.requests_failed.load(Ordering::Relaxed),
            self.spans_failed.load(Ordering::Relaxed),
            self.spans_rejected.load(Ordering::Relaxed),
            elapsed.as_secs_f64(),
            spans as f64 / elapsed.as_secs_f64().max(1e-9),
        )
    }
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// Builds traces: a root span and children, timestamps from a fixed epoch plus an offset.
struct TraceGenerator {
    rng: StdRng,
    args: LoadgenArgs,
    clock_ns: u64,
}

struct GeneratedTrace {
    spans: Vec<Span>,
    error: bool,
    slow: bool,
    flagged: bool,
}

impl TraceGenerator {
    fn new(args: &LoadgenArgs, seed: u64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        TraceGenerator {
            rng: StdRng::seed_from_u64(seed),
            args: args.clone(),
            clock_ns: now,
        }
    }

    fn trace(&mut self) -> GeneratedTrace {
        let mut trace_id = [0u8; 16];
        self.rng.fill(&mut trace_id);
        trace_id[0] |= 1; // never all zeros
        let error = self
            .rng
            .random_bool((self.args.error_percent / 100.0).clamp(0.0, 1.0));
        let slow = self
            .rng
            .random_bool((self.args.slow_percent / 100.0).clamp(0.0, 1.0));
        let flagged = self
            .rng
            .random_bool((self.args.flagged_percent / 100.0).clamp(0.0, 1.0));
        let n = self.args.spans_per_trace.max(1);
        let root_ns = if slow {
            self.args.slow_ms * 1_000_000
        } else {
            self.rng.random_range(5_000_000..200_000_000)
        };
        let start = self.clock_ns;
        self.clock_ns += 1_000;
        let error_at = if error {
            self.rng.random_range(0..n)
        } else {
            usize::MAX
        };
        let mut ids: Vec<[u8; 8]> = Vec::with_capacity(n);
        let mut spans = Vec::with_capacity(n);
        for i in 0..n {
            let mut span_id = [0u8; 8];
            self.rng.fill(&mut span_id);
            span_id[0] |= 1;
            let parent = if i == 0 {
                Vec::new()
            } else {
                ids[self.rng.random_range(0..i)].to_vec()
            };
            ids.push(span_id);
            let (s, e) = if i == 0 {
                (start, start + root_ns)
            } else {
                let off = self.rng.random_range(0..root_ns / 2);
                (
                    start + off,
                    start + off + self.rng.random_range(1..root_ns / 2),
                )
            };
            let mut attributes = Vec::with_capacity(self.args.attributes + 4);
            for a in 0..self.args.attributes {
                let v: u64 = self.rng.random();
                attributes.push(kv(
                    &format!("attr.{a}"),
                    Value::StringValue(format!("value-{v:016x}")),
                ));
            }
            if i == 0 {
                attributes.push(kv("http.route", Value::StringValue("/checkout".into())));
                attributes.push(kv(
                    "http.request.header.authorization",
                    Value::StringValue("Bearer secret-token".into()),
                ));
                if flagged {
                    attributes.push(kv(
                        "sampling.priority",
                        Value::StringValue("always_on".into()),
                    ));
                }
            } else if i % 4 == 1 {
                attributes.push(kv(
                    "db.statement",
                    Value::StringValue("SELECT * FROM orders WHERE customer = 'alice'".into()),
                ));
            }
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent,
                name: if i == 0 {
                    "GET /checkout".into()
                } else {
                    format!("op-{}", i % 7)
                },
                kind: if i == 0 { 2 } else { 1 },
                start_time_unix_nano: s,
                end_time_unix_nano: e,
                attributes,
                status: Some(Status {
                    message: String::new(),
                    code: if i == error_at {
                        StatusCode::Error as i32
                    } else {
                        StatusCode::Unset as i32
                    },
                }),
                ..Default::default()
            });
        }
        GeneratedTrace {
            spans,
            error,
            slow,
            flagged,
        }
    }
}

fn request(service_name: &str, spans: Vec<Span>) -> Bytes {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(service_name.into())),
                    kv(
                        "deployment.environment",
                        Value::StringValue("loadgen".into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tailgate-loadgen".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
    .into()
}

/// Sends one request, retrying refusals (RESOURCE_EXHAUSTED / UNAVAILABLE) with a bounded backoff.
async fn send(
    channel: &Channel,
    body: Bytes,
    spans: u64,
    gzip: bool,
    stats: &LoadStats,
    stop_at: Instant,
) {
    const ATTEMPTS_MAX: u32 = 20;
    let mut wait = Duration::from_millis(50);
    for _attempt in 0..ATTEMPTS_MAX {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        let result = match grpc.ready().await {
            Ok(()) => grpc
                .unary::<Bytes, Bytes, _>(
                    tonic::Request::new(body.clone()),
                    http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
                    RawCodec::default(),
                )
                .await
                .map(|r| r.into_inner()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match result {
            Ok(resp) => {
                stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(r) = ExportTraceServiceResponse::decode(resp)
                    && let Some(p) = r.partial_success
                {
                    stats
                        .spans_rejected
                        .fetch_add(p.rejected_spans.max(0) as u64, Ordering::Relaxed);
                }
                return;
            }
            Err(s)
                if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable)
                    && Instant::now() < stop_at =>
            {
                stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                let hint = tailgate_pipeline::exporter::retry_info_delay(&s).unwrap_or(wait);
                tokio::time::sleep(hint.min(Duration::from_secs(2))).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "request failed");
                break;
            }
        }
    }
    stats.requests_failed.fetch_add(1, Ordering::Relaxed);
    stats.spans_failed.fetch_add(spans, Ordering::Relaxed);
}

/// Runs the load; `stats` is updated live so callers can print progress.
pub async fn run_load(args: LoadgenArgs, stats: Arc<LoadStats>) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())
        .map_err(|e| anyhow::anyhow!("invalid --endpoint `{}`: {e}", args.endpoint))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    let started = Instant::now();
    let stop_at = started + args.duration;
    let workers = args.concurrency.max(1);
    let per_worker_traces = if args.traces > 0 {
        Some(args.traces.div_ceil(workers as u64))
    } else {
        None
    };
    let mut handles = Vec::new();
    for w in 0..workers {
        let args = args.clone();
        let stats = Arc::clone(&stats);
        let channel = channel.clone();
        let limit = per_worker_traces.map(|n| n.min(args.traces.saturating_sub(n * w as u64)));
        handles.push(tokio::spawn(async move {
            let mut generator = TraceGenerator::new(
                &args,
                args.seed.wrapping_mul(1_000_003).wrapping_add(w as u64),
            );
            let interval =
                (args.rate > 0).then(|| Duration::from_secs_f64(workers as f64 / args.rate as f64));
            let mut next_at = Instant::now();
            let mut pending: Vec<Span> = Vec::with_capacity(args.spans_per_request);
            let mut made = 0u64;
            loop {
                let done = limit.is_some_and(|l| made >= l) || Instant::now() >= stop_at;
                if done {
                    break;
                }
                if let Some(iv) = interval {
                    tokio::time::sleep_until(next_at).await;
                    next_at += iv;
                }
                let t = generator.trace();
                made += 1;
                stats.traces.fetch_add(1, Ordering::Relaxed);
                stats
                    .spans
                    .fetch_add(t.spans.len() as u64, Ordering::Relaxed);
                stats
                    .error_traces
                    .fetch_add(u64::from(t.error), Ordering::Relaxed);
                stats
                    .slow_traces
                    .fetch_add(u64::from(t.slow), Ordering::Relaxed);
                stats
                    .flagged_traces
                    .fetch_add(u64::from(t.flagged), Ordering::Relaxed);
                pending.extend(t.spans);
                // With a rate, send every trace promptly; flat out, fill whole requests.
                if pending.len() >= args.spans_per_request || interval.is_some() {
                    let n = pending.len() as u64;
                    let body = request(&args.service_name, std::mem::take(&mut pending));
                    send(
                        &channel,
                        body,
                        n,
                        args.gzip,
                        &stats,
                        stop_at + Duration::from_secs(10),
                    )
                    .await;
                }
            }
            if !pending.is_empty() {
                let n = pending.len() as u64;
                let body = request(&args.service_name, pending);
                send(
                    &channel,
                    body,
                    n,
                    args.gzip,
                    &stats,
                    stop_at + Duration::from_secs(10),
                )
                .await;
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    Ok(())
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let stats = Arc::new(LoadStats::default());
    let started = Instant::now();
    run_load(args, Arc::clone(&stats)).await?;
    println!("{}", stats.line(started.elapsed()));
    if stats.requests_failed.load(Ordering::Relaxed) > 0 {
        anyhow::bail!(
            "{} request(s) failed",
            stats.requests_failed.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
