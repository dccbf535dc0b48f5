//! Orchestration: processes pinned with `taskset`, CPU from `/proc/PID/stat`, memory from
//! `/proc/PID/status`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::{secs, sibling_binary};

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

#[derive(Args, Clone)]
pub struct MemoryArgs {
    /// Traces to buffer (20 spans each).
    #[arg(long, default_value_t = 50_000)]
    pub traces: u64,
}

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
    let port = free_port();
    let args = ["sink".to_string(), "--port".to_string(), port.to_string()];
    let sink = pinned("1", &sibling_binary("tailgate-bench"), &args, "sink")?;
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
fn start_gateway(dir: &std::path::Path, config: &str) -> anyhow::Result<Proc> {
    start_gateway_binary(&sibling_binary("tailgate"), dir, config)
}

pub(crate) fn start_gateway_binary(
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
    pinned("0", binary, &args, "tailgate")
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

fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
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
    gzip: bool,
) -> anyhow::Result<u64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(sibling_binary("tailgate"))
        .args(["loadgen", "--endpoint", &endpoints(ports)])
        .args([
            "--duration",
            &format!("{seconds}s"),
            "--rate",
            &rate.to_string(),
        ])
        .args([
            "--traces",
            &traces.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ])
        .args([
            "--spans-per-trace",
            "20",
            "--attributes",
            "10",
            "--spans-per-request",
            "512",
        ])
        .args([
            "--error-percent",
            "1",
            "--slow-percent",
            "1",
            "--seed",
            &seed.to_string(),
        ])
        .args(["--gzip", if gzip { "true" } else { "false" }])
        .output()
        .context("cannot run tailgate loadgen")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("LOADGEN"))
        .with_context(|| format!("loadgen printed no summary: {text}"))?;
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(field("spans") - field("spans_failed"))
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

pub fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let (_sink, sink_port) = start_sink()?;
    let port = free_port();
    let metrics = free_port();
    let cfg = render_config(&GatewayParams {
        grpc_port: port,
        sink_port,
        metrics_port: metrics,
        limit_mib: "16384",
        decision_wait: "600s",
        num_traces: &(args.traces * 2).to_string(),
        extra_sampling: "    buffer_limit_mib: 8192\n    shards: 1\n",
        compression: "none",
    });
    let dir = std::env::temp_dir().join(format!("tailgate-bench-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let gw = start_gateway(&dir, &cfg)?;
    wait_port(port, "tailgate")?;
    let pid = gw.child.id();
    // Warm the allocator and the connection with a small load first.
    loadgen(&[port], 60, 0, 4, 1000, 7, false)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss0 = status_kib(pid, "VmRSS:")? * 1024;
    let bytes0 = metric(metrics, "tailgate_sampling_buffered_bytes");
    let spans0 = metric(metrics, "tailgate_sampling_buffered_spans");
    let sent = loadgen(&[port], 600, 0, 4, args.traces, 8, false)?;
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = status_kib(pid, "VmRSS:")? * 1024;
    let bytes = metric(metrics, "tailgate_sampling_buffered_bytes") - bytes0;
    let spans = metric(metrics, "tailgate_sampling_buffered_spans") - spans0;
    let grown = rss1.saturating_sub(rss0) as f64;
    println!(
        "P2: {} spans sent, {spans:.0} buffered ({:.0} encoded bytes, {:.0} bytes/span)",
        sent,
        bytes,
        bytes / spans.max(1.0)
    );
    println!(
        "P2: RSS grew {:.1} MiB for {:.1} MiB of encoded spans: {:.2}x encoded size (target <= 1.3x), {:.0} bytes per buffered span",
        grown / 1048576.0,
        bytes / 1048576.0,
        grown / bytes.max(1.0),
        grown / spans.max(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Args, Clone)]
pub struct LatencyArgs {
    /// Traces per second offered (steady, below saturation).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    #[arg(long, default_value = "20")]
    pub seconds: u64,
}

/// The `q` quantile from a Prometheus histogram's cumulative buckets (upper bound of the
/// first bucket holding it).
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&bucket))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
}

pub fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let (_sink, sink_port) = start_sink()?;
    let port = free_port();
    let metrics = free_port();
    let cfg = render_config(&GatewayParams {
        grpc_port: port,
        sink_port,
        metrics_port: metrics,
        limit_mib: "4096",
        decision_wait: "10s",
        num_traces: "200000",
        extra_sampling: "    decision_wait_after_root_received: 1s\n",
        compression: "none",
    });
    let dir = std::env::temp_dir().join(format!("tailgate-bench-lat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _gw = start_gateway(&dir, &cfg)?;
    wait_port(port, "tailgate")?;
    let sent = loadgen(&[port], args.seconds, args.rate, 4, 0, 9, false)?;
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(metrics, "/metrics")?;
    let name = "otelcol_processor_tail_sampling_sampling_decision_timer_latency";
    let p50 = histogram_quantile(&text, name, 0.50);
    let p99 = histogram_quantile(&text, name, 0.99);
    let fmt = |v: Option<f64>| {
        v.map(|v| format!("<= {v} ms"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "P4: {sent} spans at {} traces/s; quiet period 1s after the root span",
        args.rate
    );
    println!(
        "P4: decision lateness after root + quiet period: p50 {}, p99 {} (target p99 <= 50 ms)",
        fmt(p50),
        fmt(p99)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Args, Clone)]
pub struct HandoffArgs {
    /// Traces buffered across the two gateways (20 spans each); the leaving one holds about
    /// half of them.
    #[arg(long, default_value_t = 100_000)]
    pub traces: u64,
}

/// A cluster gateway process (unpinned: the handoff uses both cores), logging to `dir`.
fn start_member(
    dir: &std::path::Path,
    name: &str,
    config: &str,
    cluster_port: u16,
    join: &str,
) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(sibling_binary("tailgate"))
        .args(["gateway", "--config", &path.display().to_string()])
        .args([
            "--node-id",
            name,
            "--cluster-listen",
            &format!("127.0.0.1:{cluster_port}"),
        ])
        .args(["--join", join, "--shutdown-timeout", "60s"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc {
        child,
        name: name.to_string(),
    })
}

/// Seconds since the Unix epoch of a log line's RFC 3339 timestamp (UTC, `...Z`).
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// P3: a gateway leaving a 2-gateway cluster hands every buffered trace to the other.
pub fn handoff(args: HandoffArgs) -> anyhow::Result<()> {
    let (_sink, sink_port) = start_sink()?;
    let dir = std::env::temp_dir().join(format!("tailgate-bench-handoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let names = ["leaver", "stayer"];
    let grpc: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let metrics: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let cluster: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let join = cluster
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for i in 0..2 {
        // Nothing is decided while the benchmark runs: every trace stays buffered.
        let cfg = render_config(&GatewayParams {
            grpc_port: grpc[i],
            sink_port,
            metrics_port: metrics[i],
            limit_mib: "8192",
            decision_wait: "600s",
            num_traces: "1000000",
            extra_sampling: "",
            compression: "none",
        });
        procs.push(start_member(&dir, names[i], &cfg, cluster[i], &join)?);
    }
    for i in 0..2 {
        wait_port(grpc[i], names[i])?;
    }
    let owners = "tailgate_cluster_owners";
    for _ in 0..200 {
        if metric(metrics[0], owners) == 2.0 && metric(metrics[1], owners) == 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = loadgen(&grpc, 600, 0, 4, args.traces, 11, false)?;
    let on_memory = "otelcol_processor_tail_sampling_sampling_traces_on_memory";
    let spans_gauge = "tailgate_sampling_buffered_spans";
    std::thread::sleep(Duration::from_secs(1));
    let leaver_traces = metric(metrics[0], on_memory);
    let leaver_spans = metric(metrics[0], spans_gauge);
    let stayer_before = metric(metrics[1], on_memory);
    let leaver_pid = procs[0].child.id();
    let rss_kib = status_kib(leaver_pid, "VmRSS:").unwrap_or(0);
    let cpu0 = cpu_seconds(leaver_pid).unwrap_or(0.0);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &leaver_pid.to_string()])
        .status()?;
    let mut cpu1 = cpu0;
    let exited = loop {
        if let Ok(c) = cpu_seconds(leaver_pid) {
            cpu1 = c;
        }
        if procs[0].child.try_wait()?.is_some() {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the leaving gateway did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(dir.join("leaver.log"))?;
    let done_at = log
        .lines()
        .find(|l| l.contains("every buffered trace was handed off"))
        .and_then(log_time);
    let stayer_after = metric(metrics[1], on_memory);
    for l in log.lines().filter(|l| {
        l.contains("shutting down")
            || l.contains("left the ring")
            || l.contains("handed off")
            || l.contains("WARN")
    }) {
        println!("  leaver: {l}");
    }
    println!(
        "P3: {sent} spans sent; the leaving gateway held {leaver_traces} traces ({leaver_spans} spans, RSS {} MiB), the other {stayer_before}",
        rss_kib / 1024
    );
    match done_at {
        Some(at) => println!(
            "P3: SIGTERM -> every trace handed off: {:.2} s (target <= 5 s); -> process exit: {:.2} s; leaver CPU during shutdown {:.2} s",
            at - t0,
            secs(exited),
            cpu1 - cpu0
        ),
        None => println!(
            "P3: the leaving gateway never reported a completed handoff; exit after {:.2} s",
            secs(exited)
        ),
    }
    println!(
        "P3: the remaining gateway now buffers {stayer_after} traces (expected {})",
        stayer_before + leaver_traces
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
