//! Goal: the cluster on separate hosts, as pods are — every gateway its own network stack and
//! address, the same ports on each, names resolved as a headless Service resolves them —
//! replaces every gateway in turn (SIGTERM, then a new process on the same address) under load
//! without losing or duplicating a span, then survives a gateway cut off the network and healed
//! (what the partition costs is reported, not asserted: a partition is not graceful).
//!
//! Method: five network namespaces (`ip netns`: g0, g1, g2, agent, sink) on one bridge, each
//! with a veth and its own IP; each namespace's `/etc/hosts` (`/etc/netns/NAME/hosts`, which
//! `ip netns exec` mounts in place) names every host, `gateways` naming all three, as DNS does
//! for a headless Service. The processes run the local-cluster configs in `deploy/compose/`
//! unchanged but for the sink's output path. A cut is the host side of the gateway's veth
//! going down; healing brings it up. Where namespaces cannot be made (not root, no
//! CAP_NET_ADMIN), the test says so and skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::Load;
use crate::support::*;

/// The hosts of the cluster, in address order from `.2`.
const HOSTS: [&str; 5] = ["g0", "g1", "g2", "agent", "sink"];
const GATEWAYS: [&str; 3] = ["g0", "g1", "g2"];
/// Ports every host uses, as pods of one template do (deploy/compose/*.yaml).
const OTLP_GRPC_PORT: u16 = 4317;
const METRICS_PORT: u16 = 8888;
const HEALTH_PORT: u16 = 13133;

fn repo(rel: &str) -> PathBuf {
    tests_path(&format!("../{rel}"))
}

/// `ip ARGS`, its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One host: a network namespace with one veth on the bridge.
struct Host {
    name: &'static str,
    namespace: String,
    address: String,
    /// The veth's end on the bridge side: down cuts the host off.
    bridge_end: String,
}

/// A private network of hosts on one bridge; everything is removed on drop.
struct Network {
    bridge: String,
    hosts: Vec<Host>,
}

impl Network {
    /// Makes the hosts, or says why it cannot.
    fn create() -> Result<Network, String> {
        let id = std::process::id();
        // A /24 of 10/8 per test process, so runs side by side do not collide.
        let subnet = format!("10.{}.{}", 100 + id % 100, (id / 100) % 250);
        let mut net = Network {
            bridge: format!("tgb{id}"),
            hosts: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        let hosts_file: String = HOSTS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let aliases = if GATEWAYS.contains(name) {
                    " gateways"
                } else {
                    ""
                };
                format!("{subnet}.{} {name}{aliases}\n", i + 2)
            })
            .chain(["127.0.0.1 localhost\n".to_string()])
            .collect();
        for (i, name) in HOSTS.iter().enumerate() {
            let host = Host {
                name,
                namespace: format!("tg{id}-{name}"),
                address: format!("{subnet}.{}", i + 2),
                bridge_end: format!("tg{id}h{i}"),
            };
            let inner = format!("tg{id}n{i}");
            ip(&["netns", "add", &host.namespace])?;
            net.hosts.push(host);
            let host = net.hosts.last().unwrap();
            let etc = PathBuf::from("/etc/netns").join(&host.namespace);
            std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
            std::fs::write(etc.join("hosts"), &hosts_file)
                .map_err(|e| format!("{}: {e}", etc.display()))?;
            let ns = host.namespace.as_str();
            ip(&[
                "link",
                "add",
                &host.bridge_end,
                "type",
                "veth",
                "peer",
                "name",
                &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", ns])?;
            ip(&["link", "set", &host.bridge_end, "master", &net.bridge])?;
            ip(&["link", "set", &host.bridge_end, "up"])?;
            ip(&["-n", ns, "link", "set", &inner, "name", "eth0"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }

    fn address(&self, name: &str) -> &str {
        &self.host(name).address
    }

    /// Starts `tailgate ARGS` on a host, as `NODE_NAME=name`, logging to `dir/name.log`.
    fn start(&self, name: &str, args: &[&str], dir: &Path) -> HostProcess {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host(name).namespace, BIN])
            .args(args)
            .current_dir(repo("deploy/compose"))
            .env("NODE_NAME", name)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        HostProcess { child, log }
    }

    /// Cuts a host off the network (its veth's bridge end down), or heals it.
    fn set_connected(&self, name: &str, connected: bool) {
        let state = if connected { "up" } else { "down" };
        ip(&["link", "set", &self.host(name).bridge_end, state]).unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.namespace]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&h.namespace));
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A process on a host; killed on drop.
struct HostProcess {
    child: Child,
    log: PathBuf,
}

impl HostProcess {
    /// SIGTERM, then the exit status (a rolling upgrade's "stop").
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("did not exit within 30 s of SIGTERM:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster: its processes by host.
struct Cluster<'n> {
    net: &'n Network,
    dir: PathBuf,
    processes: BTreeMap<&'static str, HostProcess>,
}

impl Cluster<'_> {
    fn start_host(&mut self, name: &'static str) {
        let args: Vec<String> = match name {
            "agent" => vec!["agent".into(), "--config".into(), "agent.yaml".into()],
            "sink" => vec![
                "gateway".into(),
                "--config".into(),
                "sink.yaml".into(),
                format!(
                    "--set=exporters::file::path={}",
                    self.dir.join("sink.jsonl").display()
                ),
            ],
            _ => vec![
                "gateway".into(),
                "--config".into(),
                "gateway-keep-all.yaml".into(),
                "--shutdown-timeout".into(),
                "20s".into(),
            ],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = self.net.start(name, &args, &self.dir);
        self.processes.insert(name, p);
    }

    async fn wait_healthy(&self, name: &str) {
        let url = format!("http://{}:{HEALTH_PORT}/", self.net.address(name));
        for _ in 0..300 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{name} not healthy at {url}:\n{}",
            self.processes[name].log()
        );
    }

    async fn metric(&self, host: &str, name: &str) -> f64 {
        let url = format!("http://{}:{METRICS_PORT}/metrics", self.net.address(host));
        match reqwest::get(url).await {
            Ok(r) => tailgate_pipeline_sum(&r.text().await.unwrap_or_default(), name, ""),
            Err(_) => -1.0,
        }
    }

    /// Waits until every gateway reports three owners at one epoch and the agent routes by it.
    async fn wait_converged(&self) {
        for _ in 0..300 {
            let mut epochs = Vec::new();
            let mut ok = true;
            for g in GATEWAYS {
                ok &= self.metric(g, "tailgate_cluster_owners").await == GATEWAYS.len() as f64;
                epochs.push(self.metric(g, "tailgate_cluster_epoch").await);
            }
            let agent_epoch = self.metric("agent", "tailgate_routing_epoch").await;
            if ok && epochs.iter().all(|e| *e == epochs[0]) && agent_epoch == epochs[0] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the cluster did not converge; logs:\n{}", self.logs());
    }

    fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|(name, p)| {
                let log = p.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The agent's and gateways' own books, for a failure message.
    async fn accounting(&self) -> String {
        let mut out = String::from("books:");
        for name in [
            "otelcol_receiver_accepted_spans_total",
            "otelcol_exporter_sent_spans_total",
            "otelcol_exporter_send_failed_spans_total",
            "tailgate_routing_rerouted_spans_total",
        ] {
            out.push_str(&format!(
                " agent {name}={}",
                self.metric("agent", name).await
            ));
        }
        for g in GATEWAYS {
            for name in [
                "otelcol_receiver_accepted_spans_total",
                "otelcol_exporter_sent_spans_total",
                "otelcol_exporter_send_failed_spans_total",
                "tailgate_cluster_handoff_lost_traces_total",
                "tailgate_cluster_forward_failed_spans_total",
            ] {
                out.push_str(&format!(" {g} {name}={}", self.metric(g, name).await));
            }
        }
        out
    }
}

/// (trace, span) → copies, from the sink's OTLP/JSON lines.
fn sink_spans(dir: &Path) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    let text = std::fs::read_to_string(dir.join("sink.jsonl")).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("OTLP/JSON line");
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let key = (
                        s["traceId"].as_str().unwrap_or("").to_string(),
                        s["spanId"].as_str().unwrap_or("").to_string(),
                    );
                    *out.entry(key).or_default() += 1;
                }
            }
        }
    }
    out
}

/// Waits until the sink holds at least `n` distinct spans and has been quiet for 3 s.
async fn settle(dir: &Path, n: usize) -> BTreeMap<(String, String), usize> {
    let mut last = usize::MAX;
    let mut quiet = 0;
    for _ in 0..240 {
        let spans = sink_spans(dir);
        let total: usize = spans.values().sum();
        quiet = if total == last { quiet + 1 } else { 0 };
        if spans.len() >= n && quiet >= 6 {
            break;
        }
        last = total;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sink_spans(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_their_own_hosts_roll_without_loss_or_duplicates_and_survive_a_cut_off_member()
{
    tailgate_pipeline::install_crypto_provider();
    let net = match Network::create() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: cannot make network namespaces here ({why}); needs root");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster {
        net: &net,
        dir: dir.path().to_path_buf(),
        processes: BTreeMap::new(),
    };
    for host in HOSTS {
        c.start_host(host);
    }
    for host in HOSTS {
        c.wait_healthy(host).await;
    }
    c.wait_converged().await;
    let agent_url = format!("http://{}:{OTLP_GRPC_PORT}", net.address("agent"));

    // Phase 1: steady load while every gateway is stopped (SIGTERM) and started again on its
    // address, as a StatefulSet's rolling update does.
    let load = Load::start_args(
        &agent_url,
        &["--duration", "30s", "--rate", "200", "--seed", "11"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    for g in GATEWAYS {
        let mut old = c.processes.remove(g).unwrap();
        let status = old.terminate().await;
        assert!(status.success(), "{g} exited with {status}:\n{}", old.log());
        assert!(
            old.log().contains("left the ring"),
            "{g} did not leave gracefully:\n{}",
            old.log()
        );
        drop(old);
        c.start_host(g);
        c.wait_healthy(g).await;
        c.wait_converged().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "the agent refused nothing");
    let after_rolls = settle(dir.path(), sent as usize).await;
    let duplicates = after_rolls.values().filter(|n| **n > 1).count();
    let books = c.accounting().await;
    assert_eq!(
        duplicates, 0,
        "spans exported twice during the rolls; {books}"
    );
    assert_eq!(
        after_rolls.len() as u64,
        sent,
        "spans lost during the rolls; {books}\nlogs:\n{}",
        c.logs()
    );

    // Phase 2: one gateway cut off the network for 6 s under load, then healed.
    let load = Load::start_args(
        &agent_url,
        &["--duration", "15s", "--rate", "200", "--seed", "12"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    net.set_connected("g2", false);
    tokio::time::sleep(Duration::from_secs(6)).await;
    net.set_connected("g2", true);
    let (sent2, failed2) = load.finish().await;
    c.wait_converged().await;
    let all = settle(dir.path(), (sent + sent2) as usize).await;
    let new: Vec<usize> = all
        .iter()
        .filter(|(k, _)| !after_rolls.contains_key(*k))
        .map(|(_, n)| *n)
        .collect();
    let received = new.len() as u64;
    let dup = new.iter().filter(|n| **n > 1).count();
    eprintln!(
        "PARTITION (g2 cut off 6 s under load): sent {sent2} spans, refused {failed2}, \
         received {received} distinct, lost {}, duplicated {dup}",
        sent2.saturating_sub(received)
    );
    assert!(
        received > 0,
        "the cluster kept serving through the partition"
    );
    drop(c);
}
