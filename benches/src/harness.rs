//! The harness every benchmark shares: processes pinned with `taskset`, CPU from
//! `/proc/PID/stat`, memory from `/proc/PID/status`, the counting sink, the load generator,
//! and the systems under test (Tailgate, the reference collector, rotel) started alike.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sibling_binary;

/// The reference article's gateway policies and redaction; `decision_wait` and the ports are
/// the benchmark's (see `docs/performance.md`).
const GATEWAY_CONFIG: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
        max_recv_msg_size_mib: 16
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: {limit_mib}
    spike_limit_mib: 512
  tail_sampling:
    decision_wait: {decision_wait}
    num_traces: {num_traces}
    expected_new_traces_per_sec: 1000
{extra_sampling}    policies:
      - name: keep-errors
        type: status_code
        status_code:
          status_codes: [ERROR]
      - name: keep-slow
        type: latency
        latency:
          threshold_ms: 2000
      - name: keep-debug-flagged
        type: string_attribute
        string_attribute:
          key: sampling.priority
          values: ["always_on"]
      - name: sample-normal
        type: probabilistic
        probabilistic:
          sampling_percentage: 5
  attributes/redact:
    actions:
      - key: db.statement
        action: update
        value: "[redacted]"
      - key: http.request.header.authorization
        action: delete
      - key: http.request.header.cookie
        action: delete
  batch:
    send_batch_size: 1024
    timeout: 1s
exporters:
  otlp/sink:
    endpoint: 127.0.0.1:{sink}
    tls:
      insecure: true
    compression: {compression}
service:
  telemetry:
    metrics:
      address: 127.0.0.1:{metrics}
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, tail_sampling, attributes/redact, batch]
      exporters: [otlp/sink]
"#;

pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn pinned(
    core: &str,
    program: &PathBuf,
    args: &[String],
    name: &str,
) -> anyhow::Result<Proc> {
    let child = Command::new("taskset")
        .arg("-c")
        .arg(core)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", program.display()))?;
    Ok(Proc {
        child,
        name: name.to_string(),
    })
}

/// The counting sink on core 1; returns it and its gRPC port.
pub(crate) fn start_sink() -> anyhow::Result<(Proc, u16)> {
    start_sink_on("1")
}

/// The counting sink on `core`.
pub(crate) fn start_sink_on(core: &str) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let args = ["sink".to_string(), "--port".to_string(), port.to_string()];
    let sink = pinned(core, &sibling_binary("tailgate-bench"), &args, "sink")?;
    wait_port(port, "sink")?;
    Ok((sink, port))
}

/// What varies between benchmark gateway configs.
pub(crate) struct GatewayParams<'a> {
    pub(crate) grpc_port: u16,
    pub(crate) sink_port: u16,
    pub(crate) metrics_port: u16,
    pub(crate) limit_mib: &'a str,
    pub(crate) decision_wait: &'a str,
    pub(crate) num_traces: &'a str,
    pub(crate) extra_sampling: &'a str,
    pub(crate) compression: &'a str,
}

pub(crate) fn render_config(p: &GatewayParams<'_>) -> String {
    GATEWAY_CONFIG
        .replace("{grpc}", &p.grpc_port.to_string())
        .replace("{sink}", &p.sink_port.to_string())
        .replace("{metrics}", &p.metrics_port.to_string())
        .replace("{limit_mib}", p.limit_mib)
        .replace("{decision_wait}", p.decision_wait)
        .replace("{num_traces}", p.num_traces)
        .replace("{extra_sampling}", p.extra_sampling)
        .replace("{compression}", p.compression)
}

/// Writes `config` into `dir` and starts a gateway on it, pinned to core 0.
pub(crate) fn start_gateway(dir: &std::path::Path, config: &str) -> anyhow::Result<Proc> {
    start_gateway_binary(&sibling_binary("tailgate"), dir, config)
}

pub(crate) fn start_gateway_binary(
    binary: &PathBuf,
    dir: &std::path::Path,
    config: &str,
) -> anyhow::Result<Proc> {
    start_gateway_on("0", binary, dir, config)
}

/// A gateway on the cores `cores` names (a `taskset -c` list).
pub(crate) fn start_gateway_on(
    cores: &str,
    binary: &PathBuf,
    dir: &std::path::Path,
    config: &str,
) -> anyhow::Result<Proc> {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, config)?;
    let args = [
        "gateway".to_string(),
        "--config".to_string(),
        path.display().to_string(),
    ];
    pinned(cores, binary, &args, "tailgate")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not open port {port}")
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / clock_ticks())
}

pub(crate) fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} in status"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

pub(crate) fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

pub(crate) fn sink_count(sink_port: u16) -> u64 {
    sink_counts(sink_port).0
}

/// (spans received, spans whose resource carries `k8s.pod.name`) by the counting sink.
pub(crate) fn sink_counts(sink_port: u16) -> (u64, u64) {
    let body = http_get(sink_port + 1, "/count").unwrap_or_default();
    let mut fields = body.split_whitespace().map(|f| f.parse().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

pub(crate) fn metric(port: u16, name: &str) -> f64 {
    let text = http_get(port, "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn endpoints(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `tailgate loadgen` on core 1 and returns the spans the target accepted.
pub(crate) fn loadgen(
    ports: &[u16],
    seconds: u64,
    rate: u64,
    concurrency: usize,
    traces: u64,
    seed: u64,
    compression: &str,
) -> anyhow::Result<u64> {
    let line = loadgen_line(ports, seconds, rate, concurrency, traces, seed, compression)?;
    Ok((loadgen_field(&line, "spans") - loadgen_field(&line, "spans_failed")) as u64)
}

/// A numeric field of loadgen's `LOADGEN key=value ...` line (0 if absent).
pub(crate) fn loadgen_field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Runs `tailgate loadgen` on core 1 and returns its `LOADGEN` summary line.
pub(crate) fn loadgen_line(
    ports: &[u16],
    seconds: u64,
    rate: u64,
    concurrency: usize,
    traces: u64,
    seed: u64,
    compression: &str,
) -> anyhow::Result<String> {
    Loadgen {
        core: "1",
        ports,
        seconds,
        rate,
        concurrency,
        traces,
        seed,
        compression,
    }
    .run()
}

/// One `tailgate loadgen` process: the P1 shape (20 spans per trace, 10 attributes, 512
/// spans per request, 1% error and 1% slow traces) on `core`.
pub(crate) struct Loadgen<'a> {
    pub(crate) core: &'a str,
    pub(crate) ports: &'a [u16],
    pub(crate) seconds: u64,
    /// Traces per second; 0 = as fast as the target takes them.
    pub(crate) rate: u64,
    pub(crate) concurrency: usize,
    /// Stop after this many traces; 0 = no limit.
    pub(crate) traces: u64,
    pub(crate) seed: u64,
    pub(crate) compression: &'a str,
}

impl Loadgen<'_> {
    /// Runs it to the end and returns its `LOADGEN` summary line.
    pub(crate) fn run(&self) -> anyhow::Result<String> {
        let out = Command::new("taskset")
            .args(["-c", self.core])
            .arg(sibling_binary("tailgate"))
            .args(["loadgen", "--endpoint", &endpoints(self.ports)])
            .args(["--duration", &format!("{}s", self.seconds)])
            .args(["--rate", &self.rate.to_string()])
            .args(["--traces", &self.traces.to_string()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--spans-per-trace", "20", "--attributes", "10"])
            .args(["--spans-per-request", "512"])
            .args(["--error-percent", "1", "--slow-percent", "1"])
            .args(["--seed", &self.seed.to_string()])
            .args(["--compression", self.compression])
            .output()
            .context("cannot run tailgate loadgen")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.starts_with("LOADGEN"))
            .map(str::to_string)
            .with_context(|| format!("loadgen printed no summary: {text}"))
    }
}

/// Waits until the sink's count has not moved for `quiet`.
pub(crate) fn wait_drained(sink_port: u16, quiet: Duration, max: Duration) -> u64 {
    let started = Instant::now();
    let mut last = sink_count(sink_port);
    let mut since = Instant::now();
    while started.elapsed() < max {
        std::thread::sleep(Duration::from_millis(250));
        let now = sink_count(sink_port);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

/// The rotel-agent binary: `given`, else the one in the `rotel` Python package.
pub(crate) fn find_rotel(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .context("python3")?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !p.exists() {
        bail!(
            "rotel not found: pip install --pre rotel (needs Debian libpython3.11), or pass --rotel / --no-rotel"
        );
    }
    Ok(p)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// rotel forwarding OTLP/gRPC to one sink (no sampling, no Kubernetes enrichment, no trace
/// routing): the throughput ceiling of a Rust collector that does the least.
pub(crate) fn start_rotel(
    rotel: &PathBuf,
    port: u16,
    sink_port: u16,
    dir: &std::path::Path,
    compression: &str,
) -> anyhow::Result<Proc> {
    pinned(
        "0",
        rotel,
        &[
            "start".into(),
            "--otlp-grpc-endpoint".into(),
            format!("127.0.0.1:{port}"),
            "--otlp-http-endpoint".into(),
            format!("127.0.0.1:{}", free_port()),
            "--exporter".into(),
            "otlp".into(),
            "--otlp-exporter-endpoint".into(),
            format!("http://127.0.0.1:{sink_port}"),
            "--otlp-exporter-protocol".into(),
            "grpc".into(),
            "--otlp-exporter-compression".into(),
            compression.into(),
            "--pid-file".into(),
            dir.join("rotel.pid").display().to_string(),
        ],
        "rotel",
    )
}
