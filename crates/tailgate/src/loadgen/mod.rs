//! `tailgate loadgen`: synthetic traces over OTLP/gRPC, with fresh random trace IDs, a chosen
//! shape (spans per trace, attributes) and mix (error, slow, flagged traces), at a rate or as
//! fast as the target takes them. Every random choice comes from `--seed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tailgate_otlp::codec::{RawCodec, TRACE_EXPORT_PATH};
use tailgate_otlp::compression::Encoding;
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceResponse;
use tailgate_pipeline::grpc_compression::CompressingChannel;
mod generate;

use generate::{RequestTemplate, TraceGenerator};

use tokio::time::Instant;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

#[derive(Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// OTLP/gRPC endpoint(s) of the target, comma-separated: requests go round-robin, and a
    /// retry goes to the next one.
    #[arg(long, default_value = "http://127.0.0.1:4317", value_delimiter = ',')]
    pub endpoint: Vec<String>,
    /// Stop after this many traces (0 = no limit; then --duration applies).
    #[arg(long, default_value_t = 0)]
    pub traces: u64,
    /// Stop after this long.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
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
    /// Spans per request, filled with whole traces (so a little under this number).
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
    /// Request compression (`grpc-encoding`); gzip by default, as real senders do.
    #[arg(long, value_enum, default_value_t = LoadCompression::Gzip)]
    pub compression: LoadCompression,
    /// Seeds the trace shapes and IDs, the mix and the retry waits (timestamps come from the
    /// clock).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Service name on the resource.
    #[arg(long, default_value = "loadgen")]
    pub service_name: String,
}

/// How loadgen compresses its requests: an exporter's `compression`, by the same names.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadCompression {
    None,
    Gzip,
    Zstd,
    Snappy,
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
    /// Microseconds from each accepted request's first attempt to its acknowledgement.
    pub accepted_after_us: std::sync::Mutex<Vec<u64>>,
}

impl LoadStats {
    /// What was sent, for a person.
    pub fn sentence(&self, elapsed: Duration) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = format!(
            "sent {} traces ({} spans) in {:.1}s: {} with an error, {} slow, {} flagged",
            n(&self.traces),
            n(&self.spans),
            elapsed.as_secs_f64(),
            n(&self.error_traces),
            n(&self.slow_traces),
            n(&self.flagged_traces),
        );
        if n(&self.requests_refused) > 0 {
            out.push_str(&format!(
                "; {} requests were refused and sent again",
                n(&self.requests_refused)
            ));
        }
        if n(&self.requests_failed) > 0 {
            out.push_str(&format!(
                "; {} requests ({} spans) failed for good",
                n(&self.requests_failed),
                n(&self.spans_failed)
            ));
        }
        out
    }

    /// The `q` quantile of the accepted requests' latency (first attempt to ack), in ms.
    pub fn latency_ms(&self, q: f64) -> f64 {
        let mut v = self.accepted_after_us.lock().expect("not poisoned").clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v[i] as f64 / 1000.0
    }

    /// The machine-readable summary `tailgate loadgen` prints (`LOADGEN key=value ...`).
    pub fn line(&self, elapsed: Duration) -> String {
        let spans = self.spans.load(Ordering::Relaxed);
        format!(
            "LOADGEN traces={} spans={} error_traces={} slow_traces={} flagged_traces={} requests_ok={} requests_refused={} requests_failed={} spans_failed={} spans_rejected={} elapsed_s={:.2} spans_per_s={:.0} latency_p50_ms={:.2} latency_p99_ms={:.2}",
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
            self.latency_ms(0.50),
            self.latency_ms(0.99),
        )
    }
}

/// A connection-level failure (the server went away, e.g. GOAWAY on shutdown): tonic
/// reports it as CANCELLED, as UNKNOWN "transport error", or as INTERNAL for h2 errors. Retried, as the collector's
/// exporters retry CANCELLED.
fn is_transport_error(s: &tonic::Status) -> bool {
    s.code() == Code::Cancelled
        || (s.code() == Code::Internal && s.message().contains("h2 protocol error"))
        || (s.code() == Code::Unknown && s.message().contains("transport error"))
}

/// One `Export` call through `grpc`.
async fn export<T>(mut grpc: tonic::client::Grpc<T>, body: Bytes) -> Result<Bytes, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    // grpc-go servers (the collector) answer in the request's encoding, whatever the client
    // listed as accepted.
    grpc = grpc
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    grpc.unary::<Bytes, Bytes, _>(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Sends one request, retrying refusals (RESOURCE_EXHAUSTED / UNAVAILABLE) with a bounded backoff.
async fn send(
    channels: &[Channel],
    first: usize,
    body: Bytes,
    spans: u64,
    compression: LoadCompression,
    stats: &LoadStats,
    stop_at: Instant,
) {
    const ATTEMPTS_MAX: u32 = 20;
    let mut wait = Duration::from_millis(50);
    let started = Instant::now();
    for attempt in 0..ATTEMPTS_MAX {
        // A retry goes to the next endpoint, as an agent re-routes around a gateway that is
        // restarting.
        let channel = &channels[(first + attempt as usize) % channels.len()];
        let encoding = match compression {
            LoadCompression::None => Encoding::Identity,
            LoadCompression::Gzip => Encoding::Gzip,
            LoadCompression::Zstd => Encoding::Zstd,
            LoadCompression::Snappy => Encoding::Snappy,
        };
        let grpc = tonic::client::Grpc::new(CompressingChannel::new(channel.clone(), encoding));
        let result = export(grpc, body.clone()).await;
        match result {
            Ok(resp) => {
                stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros() as u64;
                stats
                    .accepted_after_us
                    .lock()
                    .expect("not poisoned")
                    .push(us);
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
                if (matches!(s.code(), Code::ResourceExhausted | Code::Unavailable)
                    || is_transport_error(&s))
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

/// Distinct templates per worker, so the mix of error/slow/flagged traces varies.
const TEMPLATES_PER_WORKER: usize = 8;

/// Runs the load; `stats` is updated live so callers can print progress.
pub async fn run_load(args: LoadgenArgs, stats: Arc<LoadStats>) -> anyhow::Result<()> {
    let channels = args
        .endpoint
        .iter()
        .map(|e| {
            Ok(tonic::transport::Endpoint::from_shared(e.clone())
                .map_err(|err| anyhow::anyhow!("invalid --endpoint `{e}`: {err}"))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .connect_lazy())
        })
        .collect::<anyhow::Result<Vec<Channel>>>()?;
    anyhow::ensure!(
        !channels.is_empty(),
        "--endpoint needs at least one address"
    );
    let started = Instant::now();
    let stop_at = started + args.duration;
    let workers = args.concurrency.max(1);
    let per_worker_traces = (args.traces > 0).then(|| args.traces.div_ceil(workers as u64));
    let mut handles = Vec::new();
    for w in 0..workers {
        let args = args.clone();
        let stats = Arc::clone(&stats);
        let channels = channels.clone();
        let limit = per_worker_traces.map(|n| n.min(args.traces.saturating_sub(n * w as u64)));
        handles.push(tokio::spawn(async move {
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(w as u64);
            let mut generator = TraceGenerator::new(&args, seed);
            let templates: Vec<RequestTemplate> = (0..TEMPLATES_PER_WORKER)
                .map(|_| {
                    RequestTemplate::build(
                        &mut generator,
                        args.spans_per_request,
                        &args.service_name,
                    )
                })
                .collect();
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut next_at = Instant::now();
            let mut made = 0u64;
            for round in 0.. {
                if limit.is_some_and(|l| made >= l) || Instant::now() >= stop_at {
                    break;
                }
                let template = &templates[round % templates.len()];
                if args.rate > 0 {
                    // This worker's share of the rate, one request of several traces at a time.
                    let per_request = Duration::from_secs_f64(
                        template.traces.len() as f64 * workers as f64 / args.rate as f64,
                    );
                    tokio::time::sleep_until(next_at).await;
                    next_at += per_request;
                }
                let body = template.instantiate(&mut rng);
                let n = template.spans.len() as u64;
                made += template.traces.len() as u64;
                stats
                    .traces
                    .fetch_add(template.traces.len() as u64, Ordering::Relaxed);
                stats.spans.fetch_add(n, Ordering::Relaxed);
                for (error, slow, flagged) in &template.traces {
                    stats
                        .error_traces
                        .fetch_add(u64::from(*error), Ordering::Relaxed);
                    stats
                        .slow_traces
                        .fetch_add(u64::from(*slow), Ordering::Relaxed);
                    stats
                        .flagged_traces
                        .fetch_add(u64::from(*flagged), Ordering::Relaxed);
                }
                send(
                    &channels,
                    w + round,
                    body,
                    n,
                    args.compression,
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
