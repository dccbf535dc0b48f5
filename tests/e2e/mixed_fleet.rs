//! Goal: a fleet that migrates agent by agent — some nodes still run the collector, some run
//! Tailgate — in front of gateways that serve no ring (collector gateways, or any plain OTLP
//! backend) never splits a trace: both kinds of agent send every trace to the same gateway.
//! Method: the reference collector (`tests/peers/`) and `tailgate agent` run the same config
//! file (`loadbalancing` with a `static` resolver over three plain OTLP sinks, each agent
//! naming itself in an `x-agent` header); every trace of a seeded corpus is sent half through
//! one agent and half through the other; each trace must arrive whole at exactly one sink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::parity::{corpus, reference_collector, start};
use crate::support::{BIN, TaggedSink, free_port};

/// The agent config both run: OTLP in, `loadbalancing` by trace ID over the three gateways.
fn agent_config(gateway_ports: &[u16]) -> String {
    let hostnames: Vec<String> = gateway_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:${{env:PARITY_OTLP_PORT}}\nexporters:\n  loadbalancing:\n    protocol:\n      otlp:\n        tls:\n          insecure: true\n        headers:\n          x-agent: ${{env:AGENT_NAME}}\n    resolver:\n      static:\n        hostnames: [{}]\nservice:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [loadbalancing]\n",
        hostnames.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn collector_and_tailgate_agents_send_every_trace_to_the_same_plain_otlp_gateway() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (gw, port) = TaggedSink::start("x-agent").await;
        gateways.push(gw);
        ports.push(port);
    }
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, agent_config(&ports)).unwrap();
    let config_arg = config.to_str().unwrap().to_string();

    let mut agents = Vec::new();
    for (name, program, args) in [
        (
            "collector",
            collector.clone(),
            vec!["--config".to_string(), config_arg.clone()],
        ),
        (
            "tailgate",
            PathBuf::from(BIN),
            vec![
                "agent".to_string(),
                "--config".to_string(),
                config_arg.clone(),
            ],
        ),
    ] {
        let otlp = free_port();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("AGENT_NAME", name)];
        let running = start(&program, &args, otlp, 0, &env, dir.path(), name).await;
        let client = TraceServiceClient::connect(format!("http://127.0.0.1:{otlp}"))
            .await
            .unwrap();
        agents.push((name, running, client));
    }

    // Every trace: its first half of spans through the collector, the rest through Tailgate.
    let requests = corpus(77, 600);
    for request in &requests {
        let mut halves = [request.clone(), request.clone()];
        for (part, half) in halves.iter_mut().enumerate() {
            for rs in &mut half.resource_spans {
                for ss in &mut rs.scope_spans {
                    let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
                    ss.spans.retain(|s| {
                        let n = seen.entry(s.trace_id.clone()).or_default();
                        *n += 1;
                        (*n % 2) == part
                    });
                }
            }
        }
        for ((name, running, client), half) in agents.iter_mut().zip(halves) {
            client
                .export(half)
                .await
                .unwrap_or_else(|e| panic!("{name} refused: {e}\n{}", running.log()));
        }
    }
    let sent: BTreeSet<Vec<u8>> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.trace_id.clone())
        .collect();
    let total_spans: u64 = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while gateways
        .iter()
        .map(|g| *g.spans.lock().unwrap())
        .sum::<u64>()
        < total_spans
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans missing; logs:\n{}\n{}",
            agents[0].1.log(),
            agents[1].1.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each trace at exactly one gateway, with spans from both agents where it had two spans.
    let mut at: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
    let mut both = 0;
    for (i, gw) in gateways.iter().enumerate() {
        let by_agent = gw.traces.lock().unwrap();
        let empty = BTreeSet::new();
        let (from_collector, from_tailgate) = (
            by_agent.get("collector").unwrap_or(&empty),
            by_agent.get("tailgate").unwrap_or(&empty),
        );
        both += from_collector.intersection(from_tailgate).count();
        for id in from_collector.union(from_tailgate) {
            at.entry(id.clone()).or_default().insert(i);
        }
    }
    assert_eq!(at.keys().cloned().collect::<BTreeSet<_>>(), sent);
    let split: Vec<_> = at.values().filter(|g| g.len() > 1).collect();
    assert!(
        split.is_empty(),
        "{} of {} traces split across gateways",
        split.len(),
        sent.len()
    );
    assert!(
        both > sent.len() / 2,
        "most traces came through both agents: {both}"
    );
    let used: BTreeSet<usize> = at.values().flatten().copied().collect();
    assert_eq!(used.len(), 3, "traces spread over all three gateways");
}

/// The reference collector as a gateway on the article's gateway config, unchanged but for
/// addresses and a 1 s batch timeout (moved with `--set`, as an operator would).
async fn collector_gateway(
    collector: &std::path::Path,
    sink_port: u16,
    dir: &std::path::Path,
    name: &str,
) -> (crate::parity::Running, u16) {
    let config = crate::support::tests_path("configs/collector-gateway-config.yaml");
    let otlp = free_port();
    let sets = [
        format!("--set=receivers::otlp::protocols::grpc::endpoint=127.0.0.1:{otlp}"),
        format!("--set=exporters::otlp/tempo::endpoint=127.0.0.1:{sink_port}"),
        format!(
            "--set=extensions::health_check::endpoint=127.0.0.1:{}",
            free_port()
        ),
        format!(
            "--set=extensions::pprof::endpoint=127.0.0.1:{}",
            free_port()
        ),
        "--set=service::telemetry::metrics::level=none".to_string(),
        "--set=processors::batch::timeout=1s".to_string(),
    ];
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(sets.iter().map(String::as_str));
    let running = start(collector, &args, otlp, sink_port, &[], dir, name).await;
    (running, otlp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn a_tailgate_agent_in_front_of_collector_gateways_passes_the_articles_sampling_check() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, sink_addr) = crate::support::Sink::start().await;
    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let (g, port) =
            collector_gateway(&collector, sink_addr.port(), dir.path(), &format!("gw{i}")).await;
        gateways.push(g);
        ports.push(port);
    }
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, agent_config(&ports)).unwrap();
    let otlp = free_port();
    let agent = start(
        &PathBuf::from(BIN),
        &["agent", "--config", config.to_str().unwrap()],
        otlp,
        0,
        &[("AGENT_NAME", "tailgate")],
        dir.path(),
        "agent",
    )
    .await;

    let endpoint = format!("http://127.0.0.1:{otlp}");
    let sent = tokio::task::spawn_blocking(move || {
        crate::python_sdk::python_send_args(
            "grpc",
            &endpoint,
            300,
            crate::sampling::ARTICLE_TRAFFIC,
        )
    })
    .await
    .unwrap();
    assert_eq!(sent["export_failures"], 0, "{}", agent.log());
    // The collectors decide 10 s (the article's decision_wait) after a trace's first span.
    crate::sampling::wait_for_article_sampling(&sent, || sink.spans().len()).await;
    crate::sampling::check_article_sampling(&sent, sink.spans());
}

/// Traces the Python SDK sends through the collector agent while the gateways roll, one
/// every [`ROLLING_PACE_MS`]: about 24 s of traffic, longer than three restarts take (~3 s
/// each on loopback, starting 3 s in).
const ROLLING_TRACES: u32 = 600;
const ROLLING_PACE_MS: &str = "40";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn a_collector_agent_on_the_articles_config_feeds_rolling_tailgate_gateways_whole_and_once() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Three Tailgate gateways on the article's gateway config, one Raft-agreed ring.
    let mut cluster = crate::cluster::Cluster::start_with(
        3,
        "3s",
        std::sync::Arc::new(|sink, _name| crate::support::article_gateway_config(sink.port())),
    )
    .await;
    let hostnames: Vec<String> = cluster
        .nodes
        .values()
        .map(|(g, _)| format!("127.0.0.1:{}", g.ports.grpc))
        .collect();
    // The article's agent config, unchanged but for what an operator outside Kubernetes
    // moves with `--set`: addresses, a static resolver over the gateways' stable addresses
    // (a StatefulSet's pod names), k8sattributes in passthrough (no API server here).
    let config = crate::support::tests_path("configs/collector-agent-config.yaml");
    let otlp = free_port();
    let sets = [
        format!("--set=receivers::otlp::protocols::grpc::endpoint=127.0.0.1:{otlp}"),
        format!(
            "--set=receivers::otlp::protocols::http::endpoint=127.0.0.1:{}",
            free_port()
        ),
        "--set=exporters::loadbalancing::resolver::k8s=null".to_string(),
        format!(
            "--set=exporters::loadbalancing::resolver::static::hostnames=[{}]",
            hostnames.join(",")
        ),
        "--set=processors::k8sattributes::passthrough=true".to_string(),
        "--set=service::telemetry::metrics::level=none".to_string(),
    ];
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(sets.iter().map(String::as_str));
    let agent = start(&collector, &args, otlp, 0, &[], dir.path(), "agent").await;

    let endpoint = format!("http://127.0.0.1:{otlp}");
    let sender = tokio::task::spawn_blocking(move || {
        let mut extra = crate::sampling::ARTICLE_TRAFFIC.to_vec();
        extra.extend(["--pace-ms", ROLLING_PACE_MS]);
        crate::python_sdk::python_send_args("grpc", &endpoint, ROLLING_TRACES, &extra)
    });
    // Roll every gateway while the SDK sends; each comes back on its address.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut handed_off = 0.0;
    for name in ["g0", "g1", "g2"] {
        handed_off += cluster.restart(name).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        !sender.is_finished(),
        "the SDK traffic must span the restarts; make it longer"
    );
    let sent = sender.await.unwrap();
    assert_eq!(sent["export_failures"], 0, "{}", agent.log());
    // The agent batches for up to 5 s, the gateways decide 10 s after a trace's first span
    // (the article's decision_wait).
    crate::sampling::wait_for_article_sampling(&sent, || cluster.sink.spans().len()).await;
    let last = cluster.sink.spans().len();
    eprintln!(
        "{} traces sent, {} spans at the backend, {handed_off} traces handed off",
        sent["traces"].as_array().unwrap().len(),
        last
    );
    assert!(
        handed_off > 0.0,
        "no trace was handed off: the restarts did not meet buffered traces"
    );
    crate::sampling::check_article_sampling(&sent, cluster.sink.spans());
}
