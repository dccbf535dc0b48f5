//! Shared harness: a `tailgate` process per test, an in-test OTLP sink, metric scraping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;

pub const BIN: &str = env!("CARGO_BIN_EXE_tailgate");

/// A free loopback port, below the kernel's ephemeral range (32768+): the many outgoing
/// connections of concurrently running tests can never take it between this check and the
/// gateway binding it, as they can take a port the kernel handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() * 97 % SPAN + 1,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Ports of one gateway process.
#[derive(Clone, Copy)]
pub struct Ports {
    pub grpc: u16,
    pub http: u16,
    pub metrics: u16,
    pub health: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            grpc: free_port(),
            http: free_port(),
            metrics: free_port(),
            health: free_port(),
        }
    }
}

/// A running `tailgate gateway`; killed on drop if still running.
pub struct Gateway {
    pub child: Child,
    pub ports: Ports,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Writes `config` (with `{grpc}`, `{http}`, `{metrics}`, `{health}`, `{dir}` filled in)
    /// and starts a gateway on it, waiting until its health check answers.
    pub async fn start(config: &str) -> Gateway {
        Self::start_with_args(config, &[]).await
    }

    pub async fn start_with_args(config: &str, extra: &[&str]) -> Gateway {
        Self::start_on(config, Ports::new(), extra).await
    }

    /// Like `start_with_args`, on given ports (a restarted gateway keeps its addresses, as
    /// a StatefulSet pod does).
    pub async fn start_on(config: &str, ports: Ports, extra: &[&str]) -> Gateway {
        // reqwest (used by the tests too) needs the process-wide rustls provider.
        tailgate_pipeline::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let text = config
            .replace("{grpc}", &ports.grpc.to_string())
            .replace("{http}", &ports.http.to_string())
            .replace("{metrics}", &ports.metrics.to_string())
            .replace("{health}", &ports.health.to_string())
            .replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(BIN)
            .args(["gateway", "--config", path.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info,tailgate_pipeline=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let gw = Gateway { child, ports, dir };
        gw.wait_healthy().await;
        gw
    }

    pub async fn wait_healthy(&self) {
        let url = format!("http://127.0.0.1:{}/", self.ports.health);
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "gateway did not become healthy at {url}; log:\n{}",
            self.log()
        );
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.ports.http)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.ports.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sum of a metric's series whose labels contain `filter`.
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        tailgate_pipeline_sum(&self.metrics().await, name, filter)
    }

    /// SIGKILL: no goodbye, no handoff.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit. Async so in-test sinks on this runtime keep
    /// serving while the gateway drains into them.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "gateway did not exit within 20s of SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mirrors `tailgate_pipeline::telemetry::sum_metric` without depending on it, so the tests
/// read metrics the way any scraper would.
pub fn tailgate_pipeline_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the sink does with the next requests.
#[derive(Default)]
pub struct SinkBehaviour {
    /// Answer this many requests with UNAVAILABLE before accepting.
    pub fail_next: usize,
    /// Delay every answer by this much.
    pub delay: Duration,
    /// While true, every request waits (a backend that stopped answering).
    pub stalled: bool,
    /// Record only the resource spans of this `service.name` (count every span): for loads
    /// too large to keep.
    pub keep_service: Option<String>,
}

/// An OTLP/gRPC backend built on the generated server types (independent of Tailgate's
/// raw-bytes path), recording every request it accepts.
#[derive(Clone, Default)]
pub struct Sink {
    pub received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub behaviour: Arc<Mutex<SinkBehaviour>>,
    pub attempts: Arc<Mutex<usize>>,
    /// Every span accepted, recorded or not.
    pub spans_seen: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.attempts.lock().unwrap() += 1;
        let delay = self.behaviour.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        while self.behaviour.lock().unwrap().stalled {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keep_service = {
            let mut b = self.behaviour.lock().unwrap();
            if b.fail_next > 0 {
                b.fail_next -= 1;
                return Err(tonic::Status::unavailable("sink is failing on purpose"));
            }
            b.keep_service.clone()
        };
        let mut request = request.into_inner();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans_seen
            .fetch_add(spans as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(service) = keep_service {
            request
                .resource_spans
                .retain(|rs| service_name(rs).as_deref() == Some(service.as_str()));
        }
        self.received.lock().unwrap().push(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves `service` as an OTLP/gRPC trace backend (gzip accepted, 64 MiB messages) on a free
/// loopback port, for as long as the test runtime lives.
pub async fn serve_trace_service<T: TraceService>(service: T) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(service)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(64 * 1024 * 1024);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

impl Sink {
    /// Starts the sink on a free loopback port.
    pub async fn start() -> (Sink, SocketAddr) {
        let sink = Sink::default();
        let addr = serve_trace_service(sink.clone()).await;
        (sink, addr)
    }

    /// Starts the sink serving TLS with `cert_pem` / `key_pem` (for `localhost`).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> (Sink, SocketAddr) {
        let sink = Sink::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(sink.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        let server = tonic::transport::Server::builder().tls_config(tls).unwrap();
        tokio::spawn(async move {
            let mut server = server;
            server
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (sink, addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter().cloned())
            .collect()
    }

    /// Waits until at least `n` spans arrived (or panics after `timeout`).
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("sink got {} spans, expected {n}", spans.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Header value → trace ID → what was seen of it.
pub type ByTag<T> = std::collections::BTreeMap<String, std::collections::BTreeMap<Vec<u8>, T>>;

/// An OTLP/gRPC backend that records, per value of one request header (`x-parity-case`,
/// `x-agent`), the trace IDs it received and their spans' scope attributes: for tests that
/// compare who sent what where.
#[derive(Clone)]
pub struct TaggedSink {
    header: &'static str,
    /// Header value → trace IDs.
    pub traces: Arc<Mutex<std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<u8>>>>>,
    /// Header value → trace ID → `key=value` of every scope attribute its spans came under.
    pub scope_attributes: Arc<Mutex<ByTag<std::collections::BTreeSet<String>>>>,
    pub spans: Arc<Mutex<u64>>,
}

#[tonic::async_trait]
impl TraceService for TaggedSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let tag = request
            .metadata()
            .get(self.header)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_string();
        let mut traces = self.traces.lock().unwrap();
        let mut scope_attributes = self.scope_attributes.lock().unwrap();
        let set = traces.entry(tag.clone()).or_default();
        let attributes = scope_attributes.entry(tag).or_default();
        for ss in request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
        {
            let scope: Vec<String> = ss
                .scope
                .iter()
                .flat_map(|s| &s.attributes)
                .map(|kv| {
                    format!(
                        "{}={:?}",
                        kv.key,
                        kv.value.as_ref().and_then(|v| v.value.as_ref())
                    )
                })
                .collect();
            for span in &ss.spans {
                set.insert(span.trace_id.clone());
                attributes
                    .entry(span.trace_id.clone())
                    .or_default()
                    .extend(scope.iter().cloned());
                *self.spans.lock().unwrap() += 1;
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl TaggedSink {
    /// Starts a sink tagging by `header` on a free loopback port.
    pub async fn start(header: &'static str) -> (TaggedSink, u16) {
        let sink = TaggedSink {
            header,
            traces: Arc::default(),
            scope_attributes: Arc::default(),
            spans: Arc::default(),
        };
        let port = serve_trace_service(sink.clone()).await.port();
        (sink, port)
    }

    /// Waits until no span arrived for `quiet`.
    pub async fn settle(&self, quiet: Duration) {
        let mut last = *self.spans.lock().unwrap();
        loop {
            tokio::time::sleep(quiet).await;
            let now = *self.spans.lock().unwrap();
            if now == last {
                return;
            }
            last = now;
        }
    }
}

/// The reference article's gateway config (the repository's verbatim copy) on loopback: OTLP
/// over gRPC and HTTP on `{grpc}`/`{http}`, health on `{health}`, metrics on `{metrics}`, pprof
/// on a free port, exporting to `sink_port`. Policies, limits and timings as the article has them.
pub fn article_gateway_config(sink_port: u16) -> String {
    let text = std::fs::read_to_string(tests_path("configs/collector-gateway-config.yaml"))
        .expect("tests/configs holds the article's gateway config");
    text.replace(
        "endpoint: 0.0.0.0:4317",
        "endpoint: 127.0.0.1:{grpc}\n      http:\n        endpoint: 127.0.0.1:{http}",
    )
    .replace("tempo:4317", &format!("127.0.0.1:{sink_port}"))
    .replace("0.0.0.0:13133", "127.0.0.1:{health}")
    .replace("0.0.0.0:1777", &format!("127.0.0.1:{}", free_port()))
    .replace(
        "service:\n",
        "service:\n  telemetry:\n    metrics:\n      address: 127.0.0.1:{metrics}\n",
    )
}

/// The `service.name` resource attribute of `rs`.
pub fn service_name(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    rs.resource.as_ref()?.attributes.iter().find_map(|kv| {
        match (kv.key.as_str(), kv.value.as_ref()?.value.as_ref()?) {
            ("service.name", Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    })
}

/// The standard gateway config of these tests: OTLP in, optional processors, the sink out.
pub fn gateway_config(
    sink: SocketAddr,
    processors: &str,
    pipeline_processors: &str,
    exporter_extra: &str,
) -> String {
    format!(
        r"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{{grpc}}
      http:
        endpoint: 127.0.0.1:{{http}}
processors:
  batch:
    send_batch_size: 100
    timeout: 100ms
{processors}
exporters:
  otlp/sink:
    endpoint: 127.0.0.1:{port}
    tls:
      insecure: true
{exporter_extra}
extensions:
  health_check:
    endpoint: 127.0.0.1:{{health}}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: 127.0.0.1:{{metrics}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [{pipeline_processors}]
      exporters: [otlp/sink]
",
        port = sink.port()
    )
}

/// A test peer (the reference collector, Jaeger) built by its script under `tests/peers/`, whose
/// last line of output is the binary's path; built once per test run, on first use.
pub fn peer_binary(script: &str) -> PathBuf {
    static BUILT: Mutex<std::collections::BTreeMap<String, PathBuf>> =
        Mutex::new(std::collections::BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = built.get(script) {
        return path.clone();
    }
    let out = Command::new("bash")
        .arg(tests_path(&format!("peers/{script}")))
        .output()
        .expect("bash runs the build script");
    assert!(
        out.status.success(),
        "tests/peers/{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the binary's path"),
    );
    built.insert(script.to_string(), path.clone());
    path
}

/// Path of a file under the repository's `tests/` folder.
pub fn tests_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(rel)
}

/// A Prometheus scrape of `127.0.0.1:{port}`, as OpenMetrics when `open_metrics`.
pub async fn scrape(port: u16, open_metrics: bool) -> String {
    tailgate_pipeline::install_crypto_provider();
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/metrics"));
    if open_metrics {
        req = req.header("Accept", "application/openmetrics-text; version=1.0.0");
    }
    req.send().await.unwrap().text().await.unwrap()
}
