//! Goal: with `cluster.tls` every cluster call needs a certificate of the cluster's CA on
//! both sides, valid for an allowed peer name: the members form the ring, forward spans and
//! answer `tailgate status` over mutual TLS, and a stranger — plaintext, no certificate,
//! another CA, the right CA but another name, an expired certificate — can neither join,
//! forward spans, hand off a trace nor set the sampling override; each attempt is counted.
//! A member whose certificate expired is refused until its files rotate. Method: three
//! gateway processes, certificates made per test (rcgen), the cluster's own gRPC client as
//! the attacker.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use prost::Message;
use tailgate_cluster::proto::cluster_client::ClusterClient;
use tailgate_cluster::proto::{
    ForwardRequest, HandoffRequest, JoinRequest, SetSamplingRequest, TraceState,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::cluster::{Cluster, KEEP_EVERYTHING, MemberConfig};
use crate::otlp::{request, send_grpc, spans};
use crate::support::{BIN, Ports, free_port, tailgate_pipeline_sum};
use crate::tls::{Ca, write_atomically};

/// The SAN every member's certificate holds and `allowed_peer_names` asks for.
const PEER_NAME: &str = "gateway.tailgate.test";

/// Members with the article-free test config plus `cluster.tls` on the files of `dir`
/// (`<name>.pem`, `<name>.key`, `ca.pem`).
fn mtls_members(dir: &Path) -> MemberConfig {
    let d = dir.display().to_string();
    std::sync::Arc::new(move |sink, name| {
        format!(
            "{}\ncluster:\n  tls:\n    cert_file: {d}/{name}.pem\n    key_file: {d}/{name}.key\n    ca_file: {d}/ca.pem\n    allowed_peer_names: [{PEER_NAME}]\n",
            crate::cluster::config(sink, name, KEEP_EVERYTHING)
        )
    })
}

fn write_identity(dir: &Path, name: &str, (cert, key): (String, String)) {
    write_atomically(&dir.join(format!("{name}.pem")), &cert);
    write_atomically(&dir.join(format!("{name}.key")), &key);
}

/// `tailgate status` against `addr`; with `identity`, over mTLS with the files of `dir`.
fn status(addr: &str, dir: &Path, identity: Option<&str>) -> (bool, String) {
    let mut args = vec!["status".to_string(), "--admin".into(), addr.into()];
    if let Some(name) = identity {
        let d = dir.display();
        args.extend([
            "--tls-cert".into(),
            format!("{d}/{name}.pem"),
            "--tls-key".into(),
            format!("{d}/{name}.key"),
            "--tls-ca".into(),
            format!("{d}/ca.pem"),
        ]);
    }
    let out = Command::new(BIN).args(&args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every cluster call an intruder would make, over `tls` (plaintext without it): join the
/// ring, forward spans, hand off a fake trace, set the sampling override. Returns the
/// calls that succeeded.
async fn intrude(port: u16, tls: Option<ClientTlsConfig>) -> Vec<&'static str> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let mut client = ClusterClient::new(endpoint.connect_lazy());
    let spans = request(spans(3)).encode_to_vec();
    let mut succeeded = Vec::new();
    let join = client
        .join(JoinRequest {
            name: "intruder".into(),
            raft_id: 0x1bad,
            cluster_addr: "127.0.0.1:9".into(),
            otlp_addr: "127.0.0.1:9".into(),
        })
        .await;
    if join.is_ok() {
        succeeded.push("join");
    }
    let forward = client
        .forward(ForwardRequest {
            epoch: u64::MAX / 2,
            hops: 0,
            from: "intruder".into(),
            spans: spans.clone().into(),
        })
        .await;
    if forward.is_ok() {
        succeeded.push("forward");
    }
    let handoff = client
        .handoff(HandoffRequest {
            epoch: u64::MAX / 2,
            from: "intruder".into(),
            spans: spans.into(),
            traces: vec![TraceState {
                trace_id: vec![7; 16],
                remaining_us: 1,
                age_us: 1,
                root_seen: true,
            }],
            decisions: Vec::new(),
        })
        .await;
    if handoff.is_ok() {
        succeeded.push("handoff");
    }
    let sampling = client
        .set_sampling(SetSamplingRequest {
            probabilistic_percent: 100.0,
            duration_ms: 600_000,
        })
        .await;
    if sampling.is_ok() {
        succeeded.push("set_sampling");
    }
    succeeded
}

/// TLS trusting the cluster CA (whose members' certificates name `localhost`), presenting
/// `identity` if any.
fn client_tls(ca: &Ca, identity: Option<(String, String)>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cluster_tls_members_work_and_strangers_cannot_touch_the_cluster() {
    let ca = Ca::new("cluster CA");
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in ["g0", "g1", "g2", "admin"] {
        write_identity(dir, name, ca.issue_with(name, &[PEER_NAME], false));
    }
    // Raft, discovery and joins over mTLS.
    let mut c = Cluster::start_with(3, "3s", mtls_members(dir)).await;
    let target = c.nodes["g1"].1;
    let admin_addr = format!("127.0.0.1:{target}");

    // Forwards over mTLS: every span reaches the sink whichever gateway received it.
    send_grpc(&c.nodes["g0"].0.grpc_url(), request(spans(60)))
        .await
        .unwrap();
    assert_eq!(
        c.sink
            .wait_for_spans(60, Duration::from_secs(15))
            .await
            .len(),
        60
    );
    let (ok, before) = status(&admin_addr, dir, Some("admin"));
    assert!(ok, "status over mTLS: {before}");
    for name in ["g0", "g1", "g2"] {
        let line = before.lines().find(|l| l.starts_with(name));
        assert!(
            line.is_some_and(|l| l.contains("active")),
            "{name}: {before}"
        );
    }
    let (ok, plain) = status(&admin_addr, dir, None);
    assert!(!ok, "status without a certificate is refused: {plain}");

    let stranger_ca = Ca::new("another CA");
    let attempts = [
        ("plaintext", None),
        ("no certificate", Some(client_tls(&ca, None))),
        (
            "another CA",
            Some(client_tls(
                &ca,
                Some(stranger_ca.issue_with("intruder", &[PEER_NAME], false)),
            )),
        ),
        (
            "a name not allowed",
            Some(client_tls(&ca, Some(ca.issue_with("intruder", &[], false)))),
        ),
        (
            "expired",
            Some(client_tls(
                &ca,
                Some(ca.issue_with("intruder", &[PEER_NAME], true)),
            )),
        ),
    ];
    for (what, tls) in attempts {
        let succeeded = intrude(target, tls).await;
        assert!(succeeded.is_empty(), "{what}: {succeeded:?} went through");
    }

    // Nothing changed: the same members and epoch, no override, no intruder's spans.
    let (_, after) = status(&admin_addr, dir, Some("admin"));
    assert_eq!(
        before.lines().next(),
        after.lines().next(),
        "epoch and leader unchanged"
    );
    assert!(after.contains("sampling override: none"), "{after}");
    assert!(!after.contains("intruder"), "{after}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.sink.spans().len(), 60, "no span of the intruders arrived");

    // Each refusal counted, by reason.
    let text = c.nodes["g1"].0.metrics().await;
    let failures = |reason: &str| {
        tailgate_pipeline_sum(
            &text,
            "tailgate_tls_handshake_failures_total",
            &format!("listener=\"cluster\",reason=\"{reason}\""),
        )
    };
    for reason in [
        "not_tls",
        "no_certificate",
        "unknown_ca",
        "peer_name_not_allowed",
        "expired",
    ] {
        assert!(failures(reason) >= 1.0, "{reason} not counted:\n{text}");
    }

    // A member with an expired certificate is refused until its files rotate.
    write_identity(dir, "g3", ca.issue_with("g3", &[PEER_NAME], true));
    c.add("g3", Ports::new(), free_port()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let owners = c.nodes["g0"].0.metric("tailgate_cluster_owners", "").await;
    assert_eq!(owners, 3.0, "the expired member joined");
    write_identity(dir, "g3", ca.issue_with("g3", &[PEER_NAME], false));
    c.wait_owners(4).await;
}
