//! The deploy artifacts, tested: the Kubernetes manifests render (`kubectl kustomize`) and
//! validate against the Kubernetes schemas (`kubernetes-validate`), the Helm chart lints and
//! renders, and the Grafana dashboard queries only documented metrics. (The local-cluster
//! configs of `deploy/compose/` run across network namespaces in `hosts.rs`.) The two that
//! need outside tools are `#[ignore]`d, with the tool named: the test summary counts them as
//! ignored, and `.ci/run` runs them where the tools exist.

use std::path::PathBuf;
use std::process::{Command, Output};

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
    // With TLS on, both modes mount the Secret and speak mTLS: OTLP, the cluster plane, and
    // the agent's exports; without a Secret the render fails, naming the value.
    for (mode, expected) in [
        (
            "gateway",
            &[
                "--set=cluster::tls::ca_file=/etc/tailgate-tls/ca.crt",
                "--set=cluster::tls::allowed_peer_names=[tailgate-gateway.observability.svc]",
                "--set=receivers::otlp::protocols::grpc::tls::client_ca_file=/etc/tailgate-tls/ca.crt",
                "secretName: tailgate-tls",
            ][..],
        ),
        (
            "agent",
            &[
                "--set=exporters::loadbalancing::protocol::otlp::tls::cert_file=/etc/tailgate-tls/tls.crt",
                "--set=exporters::loadbalancing::protocol::otlp::tls::server_name_override=tailgate-gateway.observability.svc",
                "secretName: tailgate-tls",
            ][..],
        ),
    ] {
        let rendered = checked(
            Command::new("helm")
                .args(["template", &format!("tailgate-{mode}"), chart])
                .args([
                    "--namespace",
                    "observability",
                    "--set",
                    &format!("mode={mode}"),
                ])
                .args(["--set", "tls.enabled=true,tls.secretName=tailgate-tls"])
                .args([
                    "--set",
                    "tls.clusterPeerNames={tailgate-gateway.observability.svc}",
                ])
                .args([
                    "--set",
                    "tls.gatewayServerName=tailgate-gateway.observability.svc",
                ])
                .output()
                .unwrap(),
            &format!("helm template ({mode}, TLS)"),
        );
        validate_manifests(&rendered, &format!("the chart in mode {mode} with TLS"));
        for line in expected {
            assert!(
                rendered.contains(line),
                "{mode} with TLS lacks {line}:\n{rendered}"
            );
        }
    }
    let out = Command::new("helm")
        .args(["template", "x", chart, "--set", "tls.enabled=true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.secretName is required"));
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
        if overlay == "overlays/production" {
            // Every hop inside the cluster on mTLS: the cluster plane, OTLP into the
            // gateways, the agents' exports.
            for line in [
                "--set=cluster::tls::cert_file=/etc/tailgate-tls/tls.crt",
                "--set=receivers::otlp::protocols::grpc::tls::client_ca_file=/etc/tailgate-tls/ca.crt",
                "--set=exporters::loadbalancing::protocol::otlp::tls::key_file=/etc/tailgate-tls/tls.key",
                "secretName: tailgate-gateway-tls",
                "secretName: tailgate-agent-tls",
            ] {
                assert!(rendered.contains(line), "production lacks {line}");
            }
        }
    }
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

/// The `--set=` overrides the production overlay adds to `workload`'s args.
fn overlay_overrides(workload: &str) -> Vec<String> {
    let overlay = std::fs::read_to_string(repo(
        "deploy/kubernetes/overlays/production/kustomization.yaml",
    ))
    .unwrap();
    let section = overlay
        .split("  - target:")
        .skip(1)
        .find(|s| s.contains(&format!("name: {workload}\n")))
        .unwrap_or_else(|| panic!("no patch of {workload}"));
    section
        .lines()
        .filter_map(|l| l.split("value: \"").nth(1))
        .map(|v| v.trim_end_matches("\"}").to_string())
        .filter(|v| v.starts_with("--set="))
        .collect()
}

#[test]
fn the_production_overlays_tls_settings_make_valid_configs() {
    for (workload, config, expected) in [
        ("tailgate-gateway", "gateway.yaml", 7),
        ("tailgate-agent", "agent.yaml", 5),
    ] {
        let sets = overlay_overrides(workload);
        assert_eq!(sets.len(), expected, "{sets:?}");
        let config = repo(&format!("deploy/kubernetes/base/config/{config}"));
        let out = Command::new(BIN)
            .args(["validate", "--config", config.to_str().unwrap()])
            .args(&sets)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{workload}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
