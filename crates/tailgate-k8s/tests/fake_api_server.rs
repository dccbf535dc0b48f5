//! Enrichment through the real `kube` client against the in-process fake API server: list,
//! watch, relist after 410 Gone, and the cluster events that break naive enrichment.

#![allow(clippy::unwrap_used, reason = "a test: a panic is the failure report")]

use std::net::IpAddr;
use std::time::Duration;

use prost::Message;
use serde_json::{Value, json};
use tailgate_config::agent::K8sAttributesConfig;
use tailgate_k8s::fake_api::FakeApiServer;
use tailgate_k8s::{Enricher, KubeMetadata};
use tailgate_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use tailgate_otlp::proto::resource::v1::Resource;

const NODE: &str = "node-a";

fn config(extra: &str) -> K8sAttributesConfig {
    let yaml = format!(
        "receivers:\n  otlp:\nprocessors:\n  k8sattributes:\n    auth_type: none\n    filter:\n      node: {NODE}\n    extract:\n      metadata: [k8s.pod.name, k8s.pod.uid, k8s.pod.start_time, k8s.namespace.name, k8s.node.name, k8s.deployment.name, k8s.replicaset.name, k8s.statefulset.name, k8s.container.name, container.image.name, container.image.tag]\n      labels:\n        - tag_name: app.version\n          key: app.kubernetes.io/version\n          from: pod\n        - tag_name: team\n          key: team\n          from: namespace\n        - key_regex: 'topology\\.kubernetes\\.io/(.*)'\n          tag_name: 'node.$1'\n          from: node\n{extra}exporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [k8sattributes]\n      exporters: [debug]\n"
    );
    let cfg =
        tailgate_config::load_str(&yaml, "t.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    match cfg.processors.values().next().unwrap() {
        tailgate_config::ProcessorConfig::K8sAttributes(k) => k.clone(),
        _ => unreachable!(),
    }
}

fn pod(name: &str, uid: &str, ip: &str, node: &str, owner: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "ghcr.io/acme/checkout:1.4.2"}],
        },
        "status": {"podIP": ip, "startTime": "2026-11-24T06:00:00Z", "phase": "Running"},
    })
}

fn owner(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true})
}

fn replica_set(name: &str, uid: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid,
            "ownerReferences": [owner("Deployment", deployment, &format!("{deployment}-uid"))],
        },
    })
}

fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "uid": "ns-uid", "labels": labels}})
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": "node-uid",
        "labels": {"topology.kubernetes.io/zone": "eu-west-1a", "kubernetes.io/os": "linux"}}})
}

fn resource(attrs: &[(&str, &str)]) -> Vec<u8> {
    Resource {
        attributes: attrs
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.to_string())),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The enriched resource's attributes, as a sorted map.
fn enrich(
    enricher: &Enricher,
    meta: &KubeMetadata,
    attrs: &[(&str, &str)],
    client: Option<IpAddr>,
) -> std::collections::BTreeMap<String, String> {
    let store = meta.store.read().unwrap();
    let input = resource(attrs);
    let (out, _) = enricher.enrich(&store, &input, client);
    let bytes = out.map(|b| b.to_vec()).unwrap_or(input);
    Resource::decode(&bytes[..])
        .expect("valid Resource")
        .attributes
        .into_iter()
        .map(|kv| {
            let v = match kv.value.and_then(|v| v.value) {
                Some(any_value::Value::StringValue(s)) => s,
                other => format!("{other:?}"),
            };
            (kv.key, v)
        })
        .collect()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn started(api: &FakeApiServer, cfg: &K8sAttributesConfig) -> KubeMetadata {
    let meta = KubeMetadata::start(api.client(), cfg, &|_| None).expect("watchers start");
    let mut synced = meta.synced.clone();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s))
        .await
        .expect("first listing within 10 s")
        .expect("synced");
    meta
}

fn seed(api: &FakeApiServer) {
    api.apply(namespace(json!({"team": "payments"})));
    api.apply(node());
    api.apply(replica_set("checkout-7d9f", "rs1-uid", "checkout"));
    api.apply(pod(
        "checkout-7d9f-abcde",
        "pod1-uid",
        "10.0.0.7",
        NODE,
        owner("ReplicaSet", "checkout-7d9f", "rs1-uid"),
        json!({"app.kubernetes.io/version": "1.4.2"}),
    ));
    // Another node's pod: the node filter must keep it out.
    api.apply(pod(
        "other-node-pod",
        "pod9-uid",
        "10.0.9.9",
        "node-b",
        owner("StatefulSet", "db", "db-uid"),
        json!({}),
    ));
}

#[tokio::test]
async fn a_pod_found_by_ip_gets_its_metadata_labels_namespace_and_node() {
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    let cfg = config("");
    let meta = started(&api, &cfg).await;
    let enricher = Enricher::new(&cfg);
    let got = enrich(
        &enricher,
        &meta,
        &[("k8s.pod.ip", "10.0.0.7"), ("service.name", "checkout")],
        None,
    );
    let want: Vec<(&str, &str)> = vec![
        ("app.version", "1.4.2"),
        ("container.image.name", "ghcr.io/acme/checkout"),
        ("container.image.tag", "1.4.2"),
        ("k8s.container.name", "app"),
        ("k8s.deployment.name", "checkout"),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", NODE),
        ("k8s.pod.ip", "10.0.0.7"),
        ("k8s.pod.name", "checkout-7d9f-abcde"),
        ("k8s.pod.start_time", "2026-11-24T06:00:00Z"),
        ("k8s.pod.uid", "pod1-uid"),
        ("k8s.replicaset.name", "checkout-7d9f"),
        ("node.zone", "eu-west-1a"),
        ("service.name", "checkout"),
        ("team", "payments"),
    ];
    let want: std::collections::BTreeMap<String, String> = want
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(got, want);
    // The other node's pod is not watched.
    let other = enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.9.9")], None);
    assert_eq!(other.len(), 1, "{other:?}");
    // The pod watch asked the server for this node only.
    assert_eq!(meta.store.read().unwrap().pod_count(), 1);
}

#[tokio::test]
async fn the_connection_address_finds_the_pod_and_existing_attributes_are_kept() {
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    let cfg = config(
        "    pod_association:\n      - sources:\n          - from: resource_attribute\n            name: k8s.pod.ip\n      - sources:\n          - from: connection\n",
    );
    let meta = started(&api, &cfg).await;
    let enricher = Enricher::new(&cfg);
    let got = enrich(
        &enricher,
        &meta,
        &[("k8s.namespace.name", "set-by-app")],
        Some("10.0.0.7".parse().unwrap()),
    );
    assert_eq!(got["k8s.pod.name"], "checkout-7d9f-abcde");
    assert_eq!(got["k8s.pod.ip"], "10.0.0.7", "tagged from the connection");
    assert_eq!(got["k8s.namespace.name"], "set-by-app", "never overwritten");
    // Unknown peer: the resource passes unchanged.
    let unknown = enrich(
        &enricher,
        &meta,
        &[("a", "b")],
        Some("10.1.1.1".parse().unwrap()),
    );
    assert_eq!(unknown.len(), 1);
}

#[tokio::test]
async fn a_reused_pod_ip_points_at_the_new_pod_and_the_old_pods_deletion_does_not_unmap_it() {
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    let cfg = config("");
    let meta = started(&api, &cfg).await;
    let enricher = Enricher::new(&cfg);
    // The old pod terminates; the CNI hands its IP to a new pod before the DELETE arrives.
    api.apply(pod(
        "worker-0",
        "pod2-uid",
        "10.0.0.7",
        NODE,
        owner("StatefulSet", "worker", "ss-uid"),
        json!({}),
    ));
    eventually("the new pod owns the IP", || {
        enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.0.7")], None)
            .get("k8s.pod.name")
            .is_some_and(|n| n == "worker-0")
    })
    .await;
    api.delete("v1", "Pod", "shop", "checkout-7d9f-abcde");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.0.7")], None);
    assert_eq!(got["k8s.pod.name"], "worker-0");
    assert_eq!(got["k8s.statefulset.name"], "worker");
    assert!(!got.contains_key("k8s.deployment.name"), "{got:?}");
    // The deleted pod is still known by uid during its grace period (late spans).
    let by_uid = enrich(&enricher, &meta, &[("k8s.pod.uid", "pod1-uid")], None);
    assert_eq!(by_uid["k8s.pod.name"], "checkout-7d9f-abcde");
}

#[tokio::test]
async fn a_deployment_rollout_labels_and_namespace_changes_show_up_without_restart() {
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    let cfg = config("");
    let meta = started(&api, &cfg).await;
    let enricher = Enricher::new(&cfg);
    // Rollout: a new ReplicaSet of the same Deployment, a new pod at a new IP.
    api.apply(replica_set("checkout-5c8b", "rs2-uid", "checkout"));
    api.apply(pod(
        "checkout-5c8b-xyz12",
        "pod3-uid",
        "10.0.0.8",
        NODE,
        owner("ReplicaSet", "checkout-5c8b", "rs2-uid"),
        json!({"app.kubernetes.io/version": "1.5.0"}),
    ));
    eventually("the new pod is enriched with its deployment", || {
        let got = enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.0.8")], None);
        got.get("k8s.deployment.name")
            .is_some_and(|d| d == "checkout")
            && got
                .get("k8s.replicaset.name")
                .is_some_and(|r| r == "checkout-5c8b")
            && got.get("app.version").is_some_and(|v| v == "1.5.0")
    })
    .await;
    // A label change on the running pod.
    api.apply(pod(
        "checkout-5c8b-xyz12",
        "pod3-uid",
        "10.0.0.8",
        NODE,
        owner("ReplicaSet", "checkout-5c8b", "rs2-uid"),
        json!({"app.kubernetes.io/version": "1.5.1"}),
    ));
    // A namespace label change.
    api.apply(namespace(json!({"team": "checkout-team"})));
    eventually("label changes applied", || {
        let got = enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.0.8")], None);
        got.get("app.version").is_some_and(|v| v == "1.5.1")
            && got.get("team").is_some_and(|t| t == "checkout-team")
    })
    .await;
}

#[tokio::test]
async fn after_410_gone_the_watcher_relists_and_notices_what_changed_meanwhile() {
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    let cfg = config("");
    let meta = started(&api, &cfg).await;
    let enricher = Enricher::new(&cfg);
    let (lists_before, _) = api.requests("/api/v1/pods");
    // etcd compacted: every watch ends with 410 and old versions are gone. A pod deleted and
    // another created "while the watch was down" are only visible through the relist.
    api.expire_watches();
    api.delete("v1", "Pod", "shop", "checkout-7d9f-abcde");
    api.apply(pod(
        "late-pod",
        "pod4-uid",
        "10.0.0.20",
        NODE,
        owner("DaemonSet", "node-exporter", "ds-uid"),
        json!({}),
    ));
    eventually("the relist brought the new pod", || {
        enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.0.20")], None)
            .get("k8s.pod.name")
            .is_some_and(|n| n == "late-pod")
    })
    .await;
    let (lists_after, _) = api.requests("/api/v1/pods");
    assert!(lists_after > lists_before, "the 410 forced a new list");
    // The pod deleted while the watch was down is gone from the IP index after its grace
    // period; during the grace period it still resolves (late spans), by uid.
    let by_uid = enrich(&enricher, &meta, &[("k8s.pod.uid", "pod1-uid")], None);
    assert_eq!(by_uid["k8s.pod.name"], "checkout-7d9f-abcde");
}

#[tokio::test]
async fn excluded_pods_and_host_network_pods_are_never_matched_by_ip() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(namespace(json!({})));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jaeger-agent", "namespace": "shop", "uid": "j-uid"},
        "spec": {"nodeName": NODE, "containers": [{"name": "a", "image": "jaeger"}]},
        "status": {"podIP": "10.0.0.30"},
    }));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kube-proxy", "namespace": "shop", "uid": "kp-uid"},
        "spec": {"nodeName": NODE, "hostNetwork": true, "containers": [{"name": "p", "image": "kp"}]},
        "status": {"podIP": "192.168.1.10"},
    }));
    let cfg = config("");
    let meta = started(&api, &cfg).await;
    let enricher = Enricher::new(&cfg);
    assert_eq!(
        enrich(&enricher, &meta, &[("k8s.pod.ip", "10.0.0.30")], None).len(),
        1
    );
    assert_eq!(
        enrich(&enricher, &meta, &[("k8s.pod.ip", "192.168.1.10")], None).len(),
        1
    );
    let by_uid = enrich(&enricher, &meta, &[("k8s.pod.uid", "kp-uid")], None);
    assert_eq!(by_uid["k8s.pod.name"], "kube-proxy");
}

/// Collects what the stage passes on.
#[derive(Default)]
struct Capture(std::sync::Mutex<Vec<tailgate_otlp::EncodedSpan>>);

impl tailgate_pipeline::consumer::Consumer for Capture {
    fn consume(
        &self,
        spans: Vec<tailgate_otlp::EncodedSpan>,
    ) -> tailgate_pipeline::consumer::BoxFuture<
        '_,
        Result<(), tailgate_pipeline::consumer::ConsumeError>,
    > {
        self.0.lock().unwrap().extend(spans);
        Box::pin(async { Ok(()) })
    }
    fn shutdown(&self, _: tokio::time::Instant) -> tailgate_pipeline::consumer::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One span from a pod at 10.0.0.7, as the receiver scans it.
fn request_spans() -> Vec<tailgate_otlp::EncodedSpan> {
    use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
    use tailgate_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::decode(&resource(&[("k8s.pod.ip", "10.0.0.7")])[..]).unwrap()),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "GET /checkout".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    tailgate_otlp::scan_export_request(&bytes::Bytes::from(req.encode_to_vec()))
        .unwrap()
        .spans
}

async fn first_span_after_start(wait_for_metadata: bool) -> Option<String> {
    use tailgate_pipeline::consumer::Consumer;
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    api.delay_lists(Duration::from_millis(700));
    let extra = if wait_for_metadata {
        "    wait_for_metadata: true\n    wait_for_metadata_timeout: 5s\n"
    } else {
        ""
    };
    let cfg = config(extra);
    let meta = KubeMetadata::start(api.client(), &cfg, &|_| None).unwrap();
    let capture = std::sync::Arc::new(Capture::default());
    let stage =
        tailgate_k8s::K8sAttributesStage::new("k8sattributes".into(), &cfg, meta, capture.clone());
    // The first request arrives right after the agent started, before the first listing.
    stage.consume(request_spans()).await.unwrap();
    let spans = capture.0.lock().unwrap();
    let span = spans.first().unwrap();
    Resource::decode(&span.context.resource[..])
        .unwrap()
        .attributes
        .into_iter()
        .find(|kv| kv.key == "k8s.pod.name")
        .and_then(|kv| match kv.value?.value? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        })
}

#[tokio::test]
async fn with_wait_for_metadata_the_first_spans_wait_for_the_listing_instead_of_leaving_bare() {
    assert_eq!(
        first_span_after_start(true).await.as_deref(),
        Some("checkout-7d9f-abcde")
    );
    // Without it, the startup race the reference article warns about: the span leaves bare.
    assert_eq!(first_span_after_start(false).await, None);
}

fn endpoint_slice(name: &str, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "observability",
            "labels": {"kubernetes.io/service-name": "gateways"}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "otlp-grpc", "port": 4317, "protocol": "TCP"}]})
}

#[tokio::test]
async fn the_service_resolver_follows_ready_endpoints_across_slices() {
    use tailgate_k8s::endpoints::ServiceEndpoints;
    let api = FakeApiServer::start().await.unwrap();
    api.apply(endpoint_slice(
        "gateways-a",
        json!([
            {"addresses": ["10.0.1.1"], "conditions": {"ready": true}, "hostname": "gw-0"},
            {"addresses": ["10.0.1.2"], "conditions": {"ready": false}, "hostname": "gw-1"},
        ]),
    ));
    // Another Service's slice in the same namespace is not ours.
    let mut other = endpoint_slice("other-x", json!([{"addresses": ["10.9.9.9"]}]));
    other["metadata"]["labels"]["kubernetes.io/service-name"] = json!("other");
    api.apply(other);
    let eps = ServiceEndpoints::start(api.client(), "gateways.observability", &[4317, 4318], false);
    let mut rx = eps.endpoints.clone();
    let want = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|e| *e == want(&["10.0.1.1:4317", "10.0.1.1:4318"])),
    )
    .await
    .expect("first endpoints")
    .unwrap();
    // gw-1 becomes ready and a second slice appears (a scale-up beyond one slice).
    api.apply(endpoint_slice(
        "gateways-a",
        json!([
            {"addresses": ["10.0.1.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.1.2"], "conditions": {"ready": true}},
        ]),
    ));
    api.apply(endpoint_slice(
        "gateways-b",
        json!([{"addresses": ["10.0.1.3"]}]),
    ));
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|e| e.len() == 6 && e.contains(&"10.0.1.3:4318".to_string())),
    )
    .await
    .expect("scaled endpoints")
    .unwrap();
    api.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "observability",
        "gateways-a",
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|e| *e == want(&["10.0.1.3:4317", "10.0.1.3:4318"])),
    )
    .await
    .expect("slice deleted")
    .unwrap();
}

/// Reads from a raw HTTP/1.1 response until `needle` has appeared; returns everything read.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 5 s; got:\n{seen}"))
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}; got:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn a_streaming_list_sends_every_object_then_the_end_bookmark_then_live_events() {
    use tokio::io::AsyncWriteExt;
    // What client-go's informers ask for since Kubernetes 1.32 (the collector's k8sattributes
    // among them): the list as watch events, ended by an annotated bookmark.
    let api = FakeApiServer::start().await.unwrap();
    seed(&api);
    let addr = api.url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/pods?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan HTTP/1.1\r\nHost: api\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "k8s.io/initial-events-end").await;
    let bookmark = seen.find("\"BOOKMARK\"").unwrap();
    let added = seen
        .find("\"ADDED\"")
        .expect("the existing pods come first");
    assert!(added < bookmark, "{seen}");
    assert!(
        seen.contains("\"kind\":\"Pod\""),
        "the bookmark names its kind: {seen}"
    );
    api.apply(pod(
        "late",
        "uid-late",
        "10.1.9.9",
        "node-a",
        owner("ReplicaSet", "shop-5d8f", "rs-1"),
        json!({}),
    ));
    read_until(&mut stream, &mut seen, "uid-late").await;
}
