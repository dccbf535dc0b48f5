//! The gateway cluster with real processes on loopback: 3 gateways under steady load from
//! `tailgate loadgen` (round-robin over every gateway, retrying on the next one as an agent
//! re-routes), an in-test OTLP sink recording every span. Every trace is kept
//! (`always_sample`), so the sink must receive every span the load generator sent.
//!
//! Each gateway stamps what it exports with `tailgate.exported_by`, so the sink can tell
//! whether one trace was exported in pieces by two gateways.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tailgate_otlp::TraceId;
use tailgate_ring::Ring;

use crate::support::*;

pub(crate) const SPANS_PER_TRACE: u64 = 5;

pub(crate) struct Cluster {
    pub(crate) sink: Sink,
    pub(crate) sink_addr: std::net::SocketAddr,
    /// Cluster ports of the initial members: every gateway's `--join` list.
    pub(crate) join: String,
    pub(crate) nodes: BTreeMap<String, (Gateway, u16)>,
    /// Each member's config from the sink's address and its name.
    pub(crate) member_config: MemberConfig,
}

/// A member's config text from the sink's address and the member's name.
pub(crate) type MemberConfig =
    std::sync::Arc<dyn Fn(std::net::SocketAddr, &str) -> String + Send + Sync>;

/// Members on [`config`] with `policies`.
pub(crate) fn with_policies(policies: &'static str) -> MemberConfig {
    std::sync::Arc::new(move |sink, name| config(sink, name, policies))
}

pub(crate) const KEEP_EVERYTHING: &str = r"
      - name: everything
        type: always_sample";

const KEEP_ERRORS: &str = r"
      - name: errors
        type: status_code
        status_code:
          status_codes: [ERROR]";

pub(crate) fn config(sink: std::net::SocketAddr, name: &str, policies: &str) -> String {
    gateway_config(
        sink,
        &format!(
            r"
  tail_sampling:
    decision_wait: 2s
    decision_wait_after_root_received: 500ms
    policies:{policies}
  attributes/node:
    actions:
      - key: tailgate.exported_by
        value: {name}
        action: insert
"
        ),
        "tail_sampling, attributes/node, batch",
        "",
    )
}

impl Cluster {
    pub(crate) async fn start(n: usize, member_timeout: &str) -> Cluster {
        Self::start_with(n, member_timeout, with_policies(KEEP_EVERYTHING)).await
    }

    pub(crate) async fn start_with(
        n: usize,
        member_timeout: &str,
        member_config: MemberConfig,
    ) -> Cluster {
        let (sink, sink_addr) = Sink::start().await;
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let join = cluster_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            sink,
            sink_addr,
            join,
            nodes: BTreeMap::new(),
            member_config,
        };
        // Started together, as a StatefulSet with parallel pod management does.
        let starts = cluster_ports.iter().enumerate().map(|(i, port)| {
            let name = format!("g{i}");
            let cfg = (c.member_config)(sink_addr, &name);
            let join = c.join.clone();
            let port = *port;
            let timeout = member_timeout.to_string();
            async move {
                let gw = start_member(&cfg, Ports::new(), &name, port, &join, &timeout).await;
                (name, (gw, port))
            }
        });
        for (name, node) in futures::future::join_all(starts).await {
            c.nodes.insert(name, node);
        }
        c.wait_owners(n).await;
        c
    }

    pub(crate) async fn add(&mut self, name: &str, ports: Ports, cluster_port: u16) {
        let cfg = (self.member_config)(self.sink_addr, name);
        let gw = start_member(&cfg, ports, name, cluster_port, &self.join, "3s").await;
        self.nodes.insert(name.to_string(), (gw, cluster_port));
    }

    /// A rolling-restart step, as a StatefulSet does it: SIGTERM (the member leaves the ring
    /// and hands its traces off), a clean exit, the same member back on the same addresses,
    /// and every member routing by the full ring again. Returns the traces the survivors
    /// received by handoff up to the moment the old process was gone.
    pub(crate) async fn restart(&mut self, name: &str) -> f64 {
        let (mut gw, port) = self.nodes.remove(name).unwrap();
        let ports = gw.ports;
        let status = gw.terminate().await;
        assert!(
            status.success(),
            "{name} exited with {status}; log:\n{}",
            gw.log()
        );
        let log = gw.log();
        assert!(
            log.contains("left the ring"),
            "{name} did not leave gracefully:\n{log}"
        );
        // Its metrics went with it; the survivors counted what they received.
        let handed_off = self
            .sum_metric("tailgate_cluster_handoff_received_traces_total")
            .await;
        drop(gw);
        let members = self.nodes.len() + 1;
        self.add(name, ports, port).await;
        self.wait_owners(members).await;
        handed_off
    }

    /// Waits until every running gateway routes by a ring of `n` owners at one epoch.
    pub(crate) async fn wait_owners(&self, n: usize) {
        for _ in 0..300 {
            let mut seen = BTreeSet::new();
            let mut ok = true;
            for (gw, _) in self.nodes.values() {
                let text = gw.metrics().await;
                let owners = tailgate_pipeline_sum(&text, "tailgate_cluster_owners", "");
                let epoch = tailgate_pipeline_sum(&text, "tailgate_cluster_epoch", "");
                ok &= owners == n as f64;
                seen.insert(epoch as u64);
            }
            if ok && seen.len() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = self.nodes.values().map(|(g, _)| g.log()).collect();
        panic!(
            "the cluster did not converge to {n} owners; logs:\n{}",
            logs.join("\n----\n")
        );
    }

    pub(crate) fn endpoints(&self) -> String {
        self.nodes
            .values()
            .map(|(g, _)| g.grpc_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) async fn sum_metric(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for (gw, _) in self.nodes.values() {
            total += gw.metric(name, "").await;
        }
        total
    }
}

pub(crate) async fn start_member(
    cfg: &str,
    ports: Ports,
    name: &str,
    cluster_port: u16,
    join: &str,
    member_timeout: &str,
) -> Gateway {
    let listen = format!("127.0.0.1:{cluster_port}");
    Gateway::start_on(
        cfg,
        ports,
        &[
            "--node-id",
            name,
            "--cluster-listen",
            &listen,
            "--join",
            join,
            "--member-timeout",
            member_timeout,
            "--shutdown-timeout",
            "15s",
        ],
    )
    .await
}

pub(crate) struct Load {
    child: Child,
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
}

impl Load {
    pub(crate) fn start(endpoints: &str, duration: &str) -> Load {
        Self::start_args(
            endpoints,
            &["--duration", duration, "--rate", "1500", "--seed", "7"],
        )
    }

    pub(crate) fn start_args(endpoints: &str, extra: &[&str]) -> Load {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(BIN)
            .args([
                "loadgen",
                "--endpoint",
                endpoints,
                "--concurrency",
                "4",
                "--spans-per-trace",
                &SPANS_PER_TRACE.to_string(),
                "--spans-per-request",
                "100",
            ])
            .args(extra)
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .spawn()
            .unwrap();
        Load { child, out, err }
    }

    /// Waits for the load to finish; returns (spans sent, spans whose requests failed).
    pub(crate) async fn finish(mut self) -> (u64, u64) {
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = std::fs::read_to_string(self.out.path()).unwrap();
        let log = std::fs::read_to_string(self.err.path()).unwrap();
        eprintln!("loadgen: {text}{log}");
        let line = text
            .lines()
            .find(|l| l.starts_with("LOADGEN"))
            .unwrap_or_else(|| panic!("no LOADGEN line in {text:?}"));
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("spans"), field("spans_failed"))
    }
}

/// What the sink holds: span counts by (trace, span), and exporters by trace.
pub(crate) struct Received {
    pub(crate) copies: BTreeMap<(Vec<u8>, Vec<u8>), usize>,
    pub(crate) exporters: BTreeMap<Vec<u8>, BTreeSet<String>>,
}

pub(crate) fn received(sink: &Sink) -> Received {
    let mut r = Received {
        copies: BTreeMap::new(),
        exporters: BTreeMap::new(),
    };
    for s in sink.spans() {
        *r.copies
            .entry((s.trace_id.clone(), s.span_id.clone()))
            .or_default() += 1;
        let by = s
            .attributes
            .iter()
            .find(|kv| kv.key == "tailgate.exported_by")
            .and_then(|kv| kv.value.as_ref()?.value.clone());
        if let Some(Value::StringValue(by)) = by {
            r.exporters
                .entry(s.trace_id.clone())
                .or_default()
                .insert(by);
        }
    }
    r
}

/// Waits until the sink holds `expected` distinct spans and nothing more arrives.
pub(crate) async fn settle(sink: &Sink, expected: u64) -> Received {
    let mut last = usize::MAX;
    for _ in 0..300 {
        let n = sink.spans().len();
        if n as u64 >= expected && n == last {
            break;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    received(sink)
}

/// I1/I2 of the design: every span exactly once, no trace exported by two gateways.
pub(crate) fn assert_exactly_once_and_whole(r: &Received, sent: u64) {
    let duplicates: Vec<_> = r.copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "{} spans exported more than once",
        duplicates.len()
    );
    assert_eq!(
        r.copies.len() as u64,
        sent,
        "spans lost: sent {sent}, sink has {}",
        r.copies.len()
    );
    let split: Vec<_> = r.exporters.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(
        split.is_empty(),
        "{} traces exported in pieces by two gateways, e.g. {:?}",
        split.len(),
        split.first()
    );
    let mut per_trace: BTreeMap<&Vec<u8>, u64> = BTreeMap::new();
    for (t, _) in r.copies.keys() {
        *per_trace.entry(t).or_default() += 1;
    }
    assert!(
        per_trace.values().all(|n| *n == SPANS_PER_TRACE),
        "a trace is incomplete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_and_duplicates_nothing() {
    let mut c = Cluster::start(3, "3s").await;
    let load = Load::start(&c.endpoints(), "14s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut handed_off = 0.0;
    for name in ["g0", "g1", "g2"] {
        handed_off += c.restart(name).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "requests failed although every retry could go elsewhere"
    );
    let r = settle(&c.sink, sent).await;
    assert_exactly_once_and_whole(&r, sent);
    assert!(
        handed_off > 0.0,
        "no trace was handed off during the restarts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_to_three_under_load_loses_and_duplicates_nothing() {
    let mut c = Cluster::start(3, "3s").await;
    let load = Load::start(&c.endpoints(), "12s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.add("g3", Ports::new(), free_port()).await;
    c.add("g4", Ports::new(), free_port()).await;
    c.wait_owners(5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received_by_new = {
        let mut n = 0.0;
        for name in ["g3", "g4"] {
            n += c.nodes[name]
                .0
                .metric("tailgate_cluster_handoff_received_traces_total", "")
                .await;
        }
        n
    };
    for name in ["g4", "g3"] {
        let (mut gw, _) = c.nodes.remove(name).unwrap();
        assert!(gw.terminate().await.success(), "{name} log:\n{}", gw.log());
    }
    c.wait_owners(3).await;
    let (sent, failed) = load.finish().await;
    // Requests sent to g3/g4 before they started are not in the load's endpoint list, so
    // only the original three received load directly; g3/g4 took theirs by forwarding.
    assert_eq!(failed, 0);
    let r = settle(&c.sink, sent).await;
    assert_exactly_once_and_whole(&r, sent);
    assert!(
        received_by_new > 0.0,
        "joining gateways received no traces by handoff"
    );
}

fn trace_id(bytes: &[u8]) -> TraceId {
    TraceId(bytes.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_only_the_killed_gateways_buffer_and_the_rest_goes_on() {
    let mut c = Cluster::start(3, "2s").await;
    let load = Load::start(&c.endpoints(), "10s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ring_before = Ring::new(0, ["g0".to_string(), "g1".to_string(), "g2".to_string()]);
    let (mut victim, _) = c.nodes.remove("g1").unwrap();
    victim.kill();
    let killed_at = std::time::Instant::now();
    c.wait_owners(2).await;
    let recovered_in = killed_at.elapsed();
    assert!(
        recovered_in < Duration::from_secs(5),
        "the dead gateway was removed from the ring after {recovered_in:?}"
    );
    let (sent, _failed) = load.finish().await;
    let r = settle(&c.sink, 0).await;
    let duplicates = r.copies.values().filter(|n| **n > 1).count();
    assert_eq!(duplicates, 0);
    // Every trace that is missing spans must have been owned by the killed gateway.
    let mut per_trace: BTreeMap<&Vec<u8>, u64> = BTreeMap::new();
    for (t, _) in r.copies.keys() {
        *per_trace.entry(t).or_default() += 1;
    }
    let partial: Vec<_> = per_trace
        .iter()
        .filter(|(_, n)| **n != SPANS_PER_TRACE)
        .collect();
    for (t, _) in &partial {
        assert_eq!(
            ring_before.owner(&trace_id(t)),
            Some("g1"),
            "a trace owned by a survivor is incomplete"
        );
    }
    let lost = sent - r.copies.len() as u64;
    assert!(
        lost > 0,
        "killing a gateway with a 2 s buffer lost nothing? (check the test)"
    );
    // The loss is bounded by one gateway's share of a decision window of load.
    assert!(lost < sent / 3, "lost {lost} of {sent} spans");
}

fn admin(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tailgate {args:?} failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_override_reaches_every_gateway_and_expires_and_status_shows_the_cluster() {
    let c = Cluster::start_with(3, "3s", with_policies(KEEP_ERRORS)).await;
    let some = format!("127.0.0.1:{}", c.nodes["g2"].1);
    let status = admin(&["status", "--admin", &some]);
    for name in ["g0", "g1", "g2"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{status}"));
        assert!(line.contains("active"), "{status}");
    }
    assert!(status.contains("leader g"), "{status}");
    assert!(status.contains("sampling override: none"), "{status}");

    // Healthy traces only: the policies keep none of them. Each load has its own seed, so
    // its trace IDs are new (a cached "drop" would otherwise decide them).
    let healthy = |seed: &'static str| {
        [
            "--traces",
            "200",
            "--error-percent",
            "0",
            "--slow-percent",
            "0",
            "--seed",
            seed,
        ]
    };
    let load = Load::start_args(&c.endpoints(), &healthy("11"));
    let (sent, _) = load.finish().await;
    assert!(sent > 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.sink.spans().len(),
        0,
        "healthy traces kept without an override"
    );

    // Raised through any gateway, it takes effect everywhere (the load goes to all three).
    let out = admin(&[
        "sampling",
        "set",
        "--probabilistic",
        "100",
        "--for",
        "30s",
        "--admin",
        &some,
    ]);
    assert!(out.contains("sampling override set"), "{out}");
    let status = admin(&[
        "status",
        "--admin",
        &format!("127.0.0.1:{}", c.nodes["g0"].1),
    ]);
    assert!(status.contains("sampling override: 100%"), "{status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, _) = Load::start_args(&c.endpoints(), &healthy("12"))
        .finish()
        .await;
    let r = settle(&c.sink, sent).await;
    assert_eq!(
        r.copies.len() as u64,
        sent,
        "with a 100% override every trace is kept"
    );
    let exporters: BTreeSet<&String> = r.exporters.values().flatten().collect();
    assert_eq!(
        exporters.len(),
        3,
        "every gateway applied the override: {exporters:?}"
    );

    admin(&["sampling", "clear", "--admin", &some]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = c.sink.spans().len();
    Load::start_args(&c.endpoints(), &healthy("13"))
        .finish()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.sink.spans().len(),
        before,
        "kept after the override was cleared"
    );

    // An override expires on its own.
    admin(&[
        "sampling",
        "set",
        "--probabilistic",
        "100",
        "--for",
        "1s",
        "--admin",
        &some,
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Load::start_args(&c.endpoints(), &healthy("14"))
        .finish()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.sink.spans().len(),
        before,
        "kept after the override expired"
    );

    // Bad input: a clear error, nothing changed.
    let out = Command::new(BIN)
        .args([
            "sampling",
            "set",
            "--probabilistic",
            "150",
            "--for",
            "1m",
            "--admin",
            &some,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("within 0..=100"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_places_each_trace_on_the_same_owner_and_serves_the_ring() {
    use tailgate_cluster::proto::WatchRingRequest;
    use tailgate_cluster::proto::ring_watch_client::RingWatchClient;

    let c = Cluster::start(3, "3s").await;
    // Agents subscribe on the OTLP port their resolver found.
    let mut watch = RingWatchClient::connect(c.nodes["g1"].0.grpc_url())
        .await
        .unwrap();
    let mut updates = watch
        .watch_ring(WatchRingRequest { known_epoch: 0 })
        .await
        .unwrap()
        .into_inner();
    let update = updates.message().await.unwrap().unwrap();
    let owners: Vec<&str> = update.owners.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(owners, ["g0", "g1", "g2"]);
    assert_eq!(update.placement, "tailgate-ring-v1");
    for o in &update.owners {
        assert_eq!(
            o.otlp_addr,
            format!("127.0.0.1:{}", c.nodes[&o.name].0.ports.grpc)
        );
    }
    let ring = Ring::new(update.epoch, owners.iter().map(ToString::to_string));

    // Span k of every trace goes to gateway k: each trace reaches all three processes.
    let traces = 300u32;
    let urls: Vec<String> = c.nodes.values().map(|(g, _)| g.grpc_url()).collect();
    for (k, url) in urls.iter().enumerate() {
        let spans = (0..traces)
            .map(|t| crate::otlp::span(t, t * 3 + k as u32, vec![]))
            .collect();
        crate::otlp::send_grpc(url, crate::otlp::request(spans))
            .await
            .unwrap();
    }
    let r = settle(&c.sink, u64::from(traces) * 3).await;
    assert_eq!(r.copies.len() as u64, u64::from(traces) * 3);
    for (t, by) in &r.exporters {
        let owner = ring.owner(&trace_id(t)).unwrap();
        assert_eq!(
            by.iter().collect::<Vec<_>>(),
            [owner],
            "trace {t:?} exported by {by:?}, owner is {owner}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gateway_cluster_serves_and_on_sigterm_decides_what_no_peer_can_take() {
    let mut c = Cluster::start(1, "3s").await;
    let (sent, failed) = Load::start_args(&c.endpoints(), &["--traces", "300", "--seed", "21"])
        .finish()
        .await;
    assert_eq!(failed, 0);
    // Traces are buffered (2 s wait); SIGTERM before their deadline.
    let (mut gw, _) = c.nodes.remove("g0").unwrap();
    let early = gw
        .metric("tailgate_sampling_early_decisions_total", "shutdown")
        .await;
    assert_eq!(early, 0.0);
    assert!(gw.terminate().await.success(), "{}", gw.log());
    let r = settle(&c.sink, sent).await;
    assert_eq!(
        r.copies.len() as u64,
        sent,
        "decided on partial data and exported, not dropped"
    );
}
