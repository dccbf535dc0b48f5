//! The deploy artifacts, tested: the Kubernetes manifests render (`kubectl kustomize`) and
//! validate against the Kubernetes schemas (`kubernetes-validate`), and the compose cluster —
//! 3 gateways, 1 agent, a sink, each its own container with its own address — replaces every
//! gateway container in turn (SIGTERM, then a new container) under load without losing or duplicating a span, then survives a gateway cut off
//! the network (what that costs is reported, not asserted: a partition is not graceful).
//! The two that need outside tools are `#[ignore]`d, with the tool named: the test summary
//! counts them as ignored, and `.ci/run` runs them where the tools exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::cluster::Load;
use crate::support::*;

fn repo(rel: &str) -> PathBuf {
    tests_path(&format!("../{rel}"))
}

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn checked(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kustomize build DIR`, or `kubectl kustomize DIR` where only kubectl is installed.
fn kustomize(dir: &std::path::Path) -> Command {
    let dir = dir.to_str().unwrap();
    if have("kustomize", &["version"]) {
        let mut c = Command::new("kustomize");
        c.args(["build", dir]);
        c
    } else {
        let mut c = Command::new("kubectl");
        c.args(["kustomize", dir]);
        c
    }
}

#[test]
#[ignore = "needs helm; .ci/run installs it with `go install` and runs it"]
fn the_helm_chart_lints_and_renders_schema_valid_manifests_for_both_modes() {
    let chart = repo("deploy/helm/tailgate");
    let chart = chart.to_str().unwrap();
    let mut rendered_modes = Vec::new();
    for mode in ["gateway", "agent"] {
        let set = format!("mode={mode}");
        checked(
            Command::new("helm")
                .args(["lint", "--strict", chart, "--set", &set])
                .output()
                .unwrap(),
            &format!("helm lint ({mode})"),
        );
        let rendered = checked(
            Command::new("helm")
                .args(["template", &format!("tailgate-{mode}"), chart])
                .args(["--namespace", "observability", "--set", &set])
                .output()
                .unwrap(),
            &format!("helm template ({mode})"),
        );
        validate_manifests(&rendered, &format!("the chart in mode {mode}"));
        rendered_modes.push(rendered);
    }
    let (gateway, agent) = (&rendered_modes[0], &rendered_modes[1]);
    for kind in [
        "kind: StatefulSet",
        "kind: PodDisruptionBudget",
        "kind: NetworkPolicy",
        "kind: ConfigMap",
    ] {
        assert!(gateway.contains(kind), "gateway mode renders no {kind}");
    }
    for kind in [
        "kind: DaemonSet",
        "kind: ClusterRole",
        "kind: ServiceAccount",
    ] {
        assert!(agent.contains(kind), "agent mode renders no {kind}");
    }
    // The defaults are the article's configs, and the agent's resolver finds the gateways.
    assert!(gateway.contains("decision_wait: 10s"), "{gateway}");
    assert!(
        agent.contains("service: otel-gateway-collector-headless"),
        "{agent}"
    );
    assert!(gateway.contains("name: otel-gateway-collector-headless"));
    assert!(gateway.contains("--join=tailgate-gateway-0.otel-gateway-collector-headless.observability.svc.cluster.local:4320,"));
    // A mode the chart does not know fails the render, naming it.
    let out = Command::new("helm")
        .args(["template", "x", chart, "--set", "mode=deployment"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode must be agent or gateway"));
}

/// Schema-checks rendered manifests with `kubernetes-validate --strict`.
fn validate_manifests(rendered: &str, what: &str) {
    assert!(
        have("python3", &["-c", "import kubernetes_validate"]),
        "kubernetes-validate is missing: pip install -r tests/python/requirements.txt"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rendered).unwrap();
    checked(
        Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--kubernetes-version",
                "1.33",
                file.path().to_str().unwrap(),
            ])
            .output()
            .unwrap(),
        &format!("kubernetes-validate of {what}"),
    );
}

#[test]
#[ignore = "needs kustomize or kubectl to render the overlays; .ci/run runs it where one exists"]
fn the_kubernetes_manifests_render_and_validate_against_the_schemas() {
    for overlay in ["base", "overlays/production", "overlays/small"] {
        let dir = repo(&format!("deploy/kubernetes/{overlay}"));
        let rendered = checked(
            kustomize(&dir).output().unwrap(),
            &format!("kustomize {overlay}"),
        );
        for kind in [
            "kind: DaemonSet",
            "kind: StatefulSet",
            "kind: PodDisruptionBudget",
            "kind: NetworkPolicy",
            "kind: ClusterRole",
            "kind: ConfigMap",
        ] {
            assert!(rendered.contains(kind), "{overlay} renders no {kind}");
        }
        validate_manifests(&rendered, overlay);
    }
}

/// `docker-compose -p PROJECT -f deploy/compose/docker-compose.yaml ...` with the test's env;
/// `down` on drop.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .current_dir(repo("deploy/compose"))
            .args(["-p", &self.project, "-f", "docker-compose.yaml"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        checked(
            self.cmd(args),
            &format!("docker-compose {}", args.join(" ")),
        )
    }

    /// The host port Docker published for a service's container port.
    fn port(&self, service: &str, port: u16) -> u16 {
        let out = self.run(&["port", service, &port.to_string()]);
        out.trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no published port {port} of {service}: {out:?}"))
    }

    fn container(&self, service: &str) -> String {
        self.run(&["ps", "-q", service]).trim().to_string()
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["logs", "--no-color", "--tail", "60"]).stdout)
            .into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.cmd(&["down", "-v", "-t", "5"]);
        // The per-run image too: runs must not pile images up on the machine.
        if let Some((_, image)) = self.env.iter().find(|(k, _)| k == "TAILGATE_IMAGE") {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

async fn metric(port: u16, name: &str) -> f64 {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => tailgate_pipeline_sum(&r.text().await.unwrap_or_default(), name, ""),
        Err(_) => -1.0,
    }
}

/// Every gateway's published metrics port (Docker picks a new one when a container restarts).
fn metrics_ports(c: &Compose, gateways: &[&str]) -> Vec<u16> {
    gateways.iter().map(|g| c.port(g, 8888)).collect()
}

/// Waits until every gateway reports `n` owners at one epoch and the agent routes by it.
async fn wait_converged(c: &Compose, gateways: &[&str], agent_metrics: u16) {
    let ports = metrics_ports(c, gateways);
    for _ in 0..300 {
        let mut epochs = Vec::new();
        let mut ok = true;
        for port in ports.iter().copied() {
            ok &= metric(port, "tailgate_cluster_owners").await == gateways.len() as f64;
            epochs.push(metric(port, "tailgate_cluster_epoch").await);
        }
        let agent_epoch = metric(agent_metrics, "tailgate_routing_epoch").await;
        if ok && epochs.iter().all(|e| *e == epochs[0]) && agent_epoch == epochs[0] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the compose cluster did not converge; logs:\n{}", c.logs());
}

/// The agent's and gateways' own books, for a failure message.
async fn accounting(c: &Compose, gateways: &[&str], agent_metrics: u16) -> String {
    let mut out = String::from("books:");
    for name in [
        "otelcol_receiver_accepted_spans_total",
        "otelcol_exporter_sent_spans_total",
        "otelcol_exporter_send_failed_spans_total",
        "tailgate_routing_rerouted_spans_total",
    ] {
        out.push_str(&format!(
            " agent {name}={}",
            metric(agent_metrics, name).await
        ));
    }
    for (g, port) in gateways.iter().zip(metrics_ports(c, gateways)) {
        for name in [
            "otelcol_receiver_accepted_spans_total",
            "otelcol_exporter_sent_spans_total",
            "otelcol_exporter_send_failed_spans_total",
            "tailgate_cluster_handoff_lost_traces_total",
            "tailgate_cluster_forward_failed_spans_total",
        ] {
            out.push_str(&format!(" {g} {name}={}", metric(port, name).await));
        }
    }
    out
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
        if total == last {
            quiet += 1;
        } else {
            quiet = 0;
        }
        if spans.len() >= n && quiet >= 6 {
            break;
        }
        last = total;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sink_spans(dir)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Docker engine and docker-compose; .ci/run runs it where both exist"]
async fn compose_cluster_rolls_every_gateway_container_without_loss_or_duplicates_and_reports_a_partition()
 {
    tailgate_pipeline::install_crypto_provider();
    // The image of this build's binary (no registry: FROM scratch, see deploy/build-image.sh).
    let tag = format!("tailgate:e2e-{}", std::process::id());
    checked(
        Command::new(repo("deploy/build-image.sh"))
            .args(["--tag", &tag, "--binary", BIN])
            .output()
            .unwrap(),
        "deploy/build-image.sh",
    );
    let sink_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        sink_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let agent_port = free_port();
    let c = Compose {
        project: format!("tailgate-e2e-{}", std::process::id()),
        env: vec![
            ("TAILGATE_IMAGE".into(), tag.clone()),
            ("SINK_DIR".into(), sink_dir.path().display().to_string()),
            ("AGENT_GRPC_PORT".into(), agent_port.to_string()),
            ("AGENT_HTTP_PORT".into(), free_port().to_string()),
            ("GATEWAY_CONFIG".into(), "gateway-keep-all.yaml".into()),
        ],
    };
    c.run(&["up", "-d"]);
    let agent_metrics = c.port("agent", 8888);
    let gateways = ["g0", "g1", "g2"];
    wait_converged(&c, &gateways, agent_metrics).await;
    let agent_url = format!("http://127.0.0.1:{agent_port}");

    // Phase 1: steady load while every gateway container is stopped (SIGTERM) and started.
    let load = Load::start_args(
        &agent_url,
        &["--duration", "30s", "--rate", "200", "--seed", "11"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    for g in gateways {
        // A rolling upgrade: SIGTERM the old container, then a new container in its place.
        c.run(&["stop", "-t", "30", g]);
        c.run(&["up", "-d", "--no-deps", "--force-recreate", g]);
        wait_converged(&c, &gateways, agent_metrics).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "the agent refused nothing");
    let after_rolls = settle(sink_dir.path(), sent as usize).await;
    let duplicates = after_rolls.values().filter(|n| **n > 1).count();
    let books = accounting(&c, &gateways, agent_metrics).await;
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

    // Phase 2: one gateway cut off the network for 6 s under load, then reconnected.
    let network = format!("{}_tailgate", c.project.replace('-', ""));
    let network = if have("docker", &["network", "inspect", &network]) {
        network
    } else {
        format!("{}_tailgate", c.project)
    };
    let g2 = c.container("g2");
    let load = Load::start_args(
        &agent_url,
        &["--duration", "15s", "--rate", "200", "--seed", "12"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    checked(
        Command::new("docker")
            .args(["network", "disconnect", &network, &g2])
            .output()
            .unwrap(),
        "docker network disconnect",
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    checked(
        Command::new("docker")
            .args([
                "network", "connect", "--alias", "g2", "--alias", "gateways", &network, &g2,
            ])
            .output()
            .unwrap(),
        "docker network connect",
    );
    let (sent2, failed2) = load.finish().await;
    wait_converged(&c, &gateways, agent_metrics).await;
    let all = settle(sink_dir.path(), (sent + sent2) as usize).await;
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
}

#[test]
fn the_grafana_dashboard_queries_only_documented_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/tailgate-dashboard.json")).unwrap(),
    )
    .expect("valid dashboard JSON");
    let documented = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for name in metric_names(target["expr"].as_str().unwrap()) {
                queried += 1;
                let base = name.trim_end_matches("_bucket");
                assert!(
                    documented.contains(&format!("`{base}`")),
                    "panel {:?} queries `{name}`, which docs/metrics.md does not list",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "{queried}");
}

/// Metric names in a PromQL expression: identifiers starting with `otelcol_` or `tailgate_`.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("otelcol_") || w.starts_with("tailgate_"))
        .map(str::to_string)
        .collect()
}
