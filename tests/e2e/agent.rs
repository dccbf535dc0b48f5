//! The agent as a process: the reference article's agent config unchanged (Kubernetes metadata
//! from an in-test fake API server, the gateways found through the `k8s` resolver's
//! EndpointSlices), the real OpenTelemetry Python SDK as the application, three gateways and a
//! sink. Plus routing through a ring change under load, and the plain-OTLP fallback.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::json;
use tailgate_k8s::fake_api::FakeApiServer;

use crate::cluster::{
    Cluster, KEEP_EVERYTHING, Load, assert_exactly_once_and_whole, config, settle, start_member,
};
use crate::python_sdk::python_send_args;
use crate::support::*;

/// A running `tailgate agent`; killed on drop.
pub(crate) struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    grpc: u16,
    metrics: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    pub(crate) async fn start(
        config: &str,
        grpc: u16,
        metrics: u16,
        env: &[(&str, String)],
    ) -> Agent {
        Self::start_with_args(config, grpc, metrics, env, &[]).await
    }

    /// `start` with more command-line arguments (`--set` overrides).
    async fn start_with_args(
        config: &str,
        grpc: u16,
        metrics: u16,
        env: &[(&str, String)],
        extra: &[String],
    ) -> Agent {
        tailgate_pipeline::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(BIN)
            .args(["agent", "--config", path.to_str().unwrap()])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info,tailgate_routing=debug")
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            dir,
            grpc,
            metrics,
        };
        for _ in 0..200 {
            if agent.log().contains("agent ready") {
                return agent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent did not start; log:\n{}", agent.log());
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        tailgate_pipeline_sum(&text, name, "")
    }

    /// Waits until the agent routes by a ring of `epoch` or newer.
    pub(crate) async fn wait_ring(&self, epoch_at_least: u64) {
        for _ in 0..200 {
            if self.metric("tailgate_routing_ring_mode").await == 1.0
                && self.metric("tailgate_routing_epoch").await >= epoch_at_least as f64
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent never routed by the ring; log:\n{}", self.log());
    }
}

fn string_attr(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn kube_objects(api: &FakeApiServer, gateway_port: u16) {
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "uid": "ns-shop"}}));
    api.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "checkout-6f7d8", "namespace": "shop", "uid": "rs-uid",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": "deploy-uid", "controller": true}]}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "checkout-6f7d8-x2x9k", "namespace": "shop", "uid": "pod-uid",
            "labels": {"app.kubernetes.io/version": "2.3.0", "team": "payments"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-6f7d8",
                "uid": "rs-uid", "controller": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "acme/checkout:2.3.0"}]},
        "status": {"podIP": "10.42.0.7", "startTime": "2026-11-24T05:00:00Z"}}));
    // The gateways' headless Service, as the EndpointSlice controller writes it: the agent
    // finds one gateway here and the rest through its ring.
    api.apply(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "otel-gateway-collector-headless-7xk2p", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "otel-gateway-collector-headless"}},
        "addressType": "IPv6",
        "endpoints": [{"addresses": ["::1"], "conditions": {"ready": true}, "hostname": "g0"}],
        "ports": [{"name": "otlp-grpc", "port": gateway_port, "protocol": "TCP"}]}),
    );
}

/// Three gateways; g0's OTLP/gRPC on `[::1]:{g0_port}`, where the resolver is told to look.
async fn cluster_with_g0_on(g0_port: u16) -> Cluster {
    let (sink, sink_addr) = Sink::start().await;
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let join = cluster_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let starts = cluster_ports.iter().enumerate().map(|(i, port)| {
        let name = format!("g{i}");
        let mut cfg = config(sink_addr, &name, KEEP_EVERYTHING);
        let join = join.clone();
        let port = *port;
        async move {
            let gw = if i == 0 {
                cfg = cfg.replace("127.0.0.1:{grpc}", &format!("\"[::1]:{g0_port}\""));
                let advertise = format!("[::1]:{g0_port}");
                let listen = format!("127.0.0.1:{port}");
                Gateway::start_on(
                    &cfg,
                    Ports::new(),
                    &[
                        "--node-id",
                        &name,
                        "--cluster-listen",
                        &listen,
                        "--join",
                        &join,
                        "--otlp-advertise",
                        &advertise,
                        "--member-timeout",
                        "3s",
                        "--shutdown-timeout",
                        "15s",
                    ],
                )
                .await
            } else {
                start_member(&cfg, Ports::new(), &name, port, &join, "3s").await
            };
            (name, (gw, port))
        }
    });
    let nodes: BTreeMap<_, _> = futures::future::join_all(starts)
        .await
        .into_iter()
        .collect();
    let c = Cluster {
        sink,
        sink_addr,
        join,
        nodes,
        member_config: crate::cluster::with_policies(KEEP_EVERYTHING),
    };
    c.wait_owners(3).await;
    c
}

/// SHA-256 of the reference article's two configs as published (`shared/reference/` on the
/// development machine): the repository's copies must stay byte for byte the article's.
const ARTICLE_CONFIG_SHA256: [(&str, &str); 2] = [
    (
        "collector-agent-config.yaml",
        "9b073af5586927d5187ea5e14e37361c33989321ef5c1226eb9965ef324bfba6",
    ),
    (
        "collector-gateway-config.yaml",
        "348127ed25c2675d052455a198ed4e1599b5c205880375bb369a4b386772a565",
    ),
];

#[test]
fn the_reference_configs_in_the_repository_are_the_articles_verbatim() {
    use sha2::Digest as _;
    // The tests' copies, and the Helm chart's defaults (files/<mode>.yaml).
    for ((name, expected), mode) in ARTICLE_CONFIG_SHA256.into_iter().zip(["agent", "gateway"]) {
        for copy in [
            format!("configs/{name}"),
            format!("../deploy/helm/tailgate/files/{mode}.yaml"),
        ] {
            let bytes = std::fs::read(tests_path(&copy)).unwrap();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                expected,
                "{copy} drifted from the article's {name}"
            );
        }
    }
}

/// The file unchanged; its fixed ports (4317, 4318, 8888, and 4317 where the resolver looks)
/// moved to free ones with `--set`, as an operator moves a collector's, so the test collides
/// with no local collector or `tailgate dev`.
#[tokio::test(flavor = "multi_thread")]
async fn the_reference_agent_config_runs_unchanged_enriching_filtering_and_routing_to_each_owner() {
    let api = FakeApiServer::start().await.unwrap();
    let g0_port = free_port();
    kube_objects(&api, g0_port);
    let c = cluster_with_g0_on(g0_port).await;
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), api.kubeconfig()).unwrap();
    let reference =
        std::fs::read_to_string(tests_path("configs/collector-agent-config.yaml")).unwrap();
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let agent = Agent::start_with_args(
        &reference,
        grpc,
        metrics,
        &[(
            "KUBECONFIG",
            kubeconfig.path().to_str().unwrap().to_string(),
        )],
        &[
            format!("--set=receivers::otlp::protocols::grpc::endpoint=127.0.0.1:{grpc}"),
            format!("--set=receivers::otlp::protocols::http::endpoint=127.0.0.1:{http}"),
            format!("--set=service::telemetry::metrics::address=127.0.0.1:{metrics}"),
            format!("--set=exporters::loadbalancing::resolver::k8s::ports=[{g0_port}]"),
        ],
    )
    .await;
    agent.wait_ring(1).await;

    let sent = python_send_args(
        "grpc",
        &agent.url(),
        40,
        &[
            "--children",
            "3",
            "--pod-ip",
            "10.42.0.7",
            "--health-checks",
            "9",
        ],
    );
    let traces = sent["traces"].as_array().unwrap();
    let probes: BTreeSet<String> = sent["health_checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(probes.len(), 9);
    let expected: u64 = traces
        .iter()
        .map(|t| t["span_ids"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(expected, 160);
    let r = settle(&c.sink, expected).await;

    // Every span exactly once, every trace whole at exactly one gateway, no probe.
    assert!(r.copies.values().all(|n| *n == 1), "duplicates");
    assert_eq!(r.copies.len() as u64, expected, "log:\n{}", agent.log());
    let traces_seen: BTreeSet<String> = r.copies.keys().map(|(t, _)| hex::encode(t)).collect();
    assert!(
        traces_seen.is_disjoint(&probes),
        "a health-check span left the node"
    );
    assert!(
        r.exporters.values().all(|by| by.len() == 1),
        "a trace split across gateways"
    );
    let gateways: BTreeSet<&String> = r.exporters.values().flatten().collect();
    assert_eq!(gateways.len(), 3, "40 traces spread over all three owners");

    // The agent sent each trace to its owner: no gateway had to forward anything.
    assert_eq!(
        c.sum_metric("tailgate_cluster_forwarded_spans_total").await,
        0.0
    );

    // Enriched from the fake API server (pod found by k8s.pod.ip; deployment via ReplicaSet).
    let want = [
        ("k8s.pod.name", "checkout-6f7d8-x2x9k"),
        ("k8s.pod.uid", "pod-uid"),
        ("k8s.deployment.name", "checkout"),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", "node-a"),
        ("app.version", "2.3.0"),
        ("team", "payments"),
        ("service.name", "py-shop"),
    ];
    let requests = c.sink.received.lock().unwrap().clone();
    let mut resources = 0;
    for rs in requests.iter().flat_map(|r| &r.resource_spans) {
        resources += 1;
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        for (k, v) in want {
            assert_eq!(
                string_attr(attrs, k).as_deref(),
                Some(v),
                "{k} in {attrs:?}"
            );
        }
    }
    assert!(resources > 0);
    // The filter's drops are counted by the agent.
    assert_eq!(
        agent
            .metric("otelcol_processor_filter_spans_filtered_total")
            .await,
        9.0
    );
}

/// A `loadbalancing` resolver listing every member's OTLP gRPC address.
pub(crate) fn static_resolver(c: &Cluster) -> String {
    let hostnames: Vec<String> = c
        .nodes
        .values()
        .map(|(g, _)| format!("127.0.0.1:{}", g.ports.grpc))
        .collect();
    format!(
        "      static:\n        hostnames: [{}]",
        hostnames.join(", ")
    )
}

pub(crate) fn routing_agent_config(resolver: &str, grpc: u16, metrics: u16) -> String {
    format!(
        r"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
processors:
  batch:
    send_batch_size: 200
    timeout: 100ms
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls:
          insecure: true
        timeout: 2s
        retry_on_failure:
          initial_interval: 100ms
          max_interval: 1s
    resolver:
{resolver}
service:
  telemetry:
    metrics:
      address: 127.0.0.1:{metrics}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [loadbalancing]
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ring_change_while_sending_keeps_every_trace_whole_at_one_gateway() {
    let mut c = Cluster::start(3, "3s").await;
    let resolver = static_resolver(&c);
    let (grpc, metrics) = (free_port(), free_port());
    let agent = Agent::start(
        &routing_agent_config(&resolver, grpc, metrics),
        grpc,
        metrics,
        &[],
    )
    .await;
    agent.wait_ring(1).await;
    let first_epoch = agent.metric("tailgate_routing_epoch").await as u64;

    let load = Load::start(&agent.url(), "8s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Scale up: g3 is not in the agent's static list; the agent learns it from the ring.
    c.add("g3", Ports::new(), free_port()).await;
    c.wait_owners(4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // And one gateway leaves (rolling restart / scale down).
    let (mut g1, _) = c.nodes.remove("g1").unwrap();
    assert!(g1.terminate().await.success(), "g1 log:\n{}", g1.log());
    c.wait_owners(3).await;
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "the agent refused nothing");
    let r = settle(&c.sink, sent).await;
    assert_exactly_once_and_whole(&r, sent);
    assert!(
        agent.metric("tailgate_routing_epoch").await as u64 >= first_epoch + 2,
        "the agent followed both ring changes; log:\n{}",
        agent.log()
    );
    let by_g3 = r.exporters.values().filter(|by| by.contains("g3")).count();
    assert!(by_g3 > 0, "the new gateway received traces");
}

#[tokio::test(flavor = "multi_thread")]
async fn pointed_at_plain_otlp_backends_it_hashes_traces_over_the_resolved_endpoints() {
    let (a, a_addr) = Sink::start().await;
    let (b, b_addr) = Sink::start().await;
    let resolver = format!("      static:\n        hostnames: [{a_addr}, {b_addr}]");
    let (grpc, metrics) = (free_port(), free_port());
    let agent = Agent::start(
        &routing_agent_config(&resolver, grpc, metrics),
        grpc,
        metrics,
        &[],
    )
    .await;
    let load = Load::start_args(
        &agent.url(),
        &["--duration", "2s", "--rate", "500", "--seed", "3"],
    );
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (a.spans().len() + b.spans().len()) < sent as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let traces =
        |s: &Sink| -> BTreeSet<Vec<u8>> { s.spans().into_iter().map(|s| s.trace_id).collect() };
    let (ta, tb) = (traces(&a), traces(&b));
    assert!(!ta.is_empty() && !tb.is_empty(), "both backends get traces");
    assert!(ta.is_disjoint(&tb), "every trace whole at one backend");
    assert_eq!(
        a.spans().len() + b.spans().len(),
        sent as usize,
        "nothing twice"
    );
    assert_eq!(agent.metric("tailgate_routing_ring_mode").await, 0.0);
}
