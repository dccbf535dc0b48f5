//! Goal: the OTLP receivers speak TLS and mTLS with the collector's keys
//! (`receivers.otlp.protocols.{grpc,http}.tls`), refuse whoever lacks a certificate of the
//! client CA, and take a rotated certificate without a restart. Method: CAs made per test
//! (rcgen), the certificate files in a directory of the test, real tonic and reqwest clients.

use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::agent::{Agent, routing_agent_config, static_resolver};
use crate::cluster::{Cluster, KEEP_EVERYTHING, MemberConfig};
use crate::otlp::{request, send_grpc, spans};
use crate::support::{Gateway, Sink, free_port, gateway_config};

const GRPC_LISTENER: &str = "listener=\"receivers.otlp.protocols.grpc\"";

/// A certificate authority of one test.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1, good for servers and clients: (cert,
    /// key), PEM.
    pub(crate) fn issue(&self, name: &str) -> (String, String) {
        self.issue_with(name, &[], false)
    }

    /// Like [`Ca::issue`], with more DNS names, and expired a year ago when `expired`.
    pub(crate) fn issue_with(&self, name: &str, dns: &[&str], expired: bool) -> (String, String) {
        let mut sans = vec!["localhost".to_string()];
        sans.extend(dns.iter().map(ToString::to_string));
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2025, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a file whole under a temporary name, then renames it over `path`, as a rotation
/// of a mounted Secret swaps the files at once.
pub(crate) fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One export over TLS to the gRPC receiver at `port`, trusting `ca`, presenting `identity`.
async fn export_tls(
    port: u16,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| format!("{e:?}"))?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    TraceServiceClient::new(channel)
        .export(request(spans(5)))
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// The gateway config with TLS on both receivers: gRPC with mTLS when `client_ca` is set,
/// HTTP with server TLS only.
fn tls_config(sink: std::net::SocketAddr, certs: &Path, client_ca: bool) -> String {
    let dir = certs.display();
    let mtls = if client_ca {
        format!("\n          client_ca_file: {dir}/clients.pem")
    } else {
        String::new()
    };
    gateway_config(sink, "", "batch", "").replace(
        "      grpc:\n        endpoint: 127.0.0.1:{grpc}\n      http:\n        endpoint: 127.0.0.1:{http}\n",
        &format!(
            "      grpc:\n        endpoint: 127.0.0.1:{{grpc}}\n        tls:\n          cert_file: {dir}/server.pem\n          key_file: {dir}/server.key{mtls}\n      http:\n        endpoint: 127.0.0.1:{{http}}\n        tls:\n          cert_file: {dir}/server.pem\n          key_file: {dir}/server.key\n          min_version: \"1.3\"\n"
        ),
    )
}

#[tokio::test]
async fn receivers_with_mtls_accept_only_clients_of_their_ca() {
    let (sink, sink_addr) = Sink::start().await;
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("another CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = server_ca.issue("gateway");
    std::fs::write(certs.path().join("server.pem"), cert).unwrap();
    std::fs::write(certs.path().join("server.key"), key).unwrap();
    std::fs::write(certs.path().join("clients.pem"), client_ca.pem()).unwrap();
    let gw = Gateway::start(&tls_config(sink_addr, certs.path(), true)).await;

    let client = client_ca.issue("agent");
    export_tls(gw.ports.grpc, &server_ca.pem(), Some(&client))
        .await
        .expect("a client of the client CA is served");
    assert_eq!(
        sink.wait_for_spans(5, Duration::from_secs(10)).await.len(),
        5
    );

    let without = export_tls(gw.ports.grpc, &server_ca.pem(), None).await;
    assert!(without.is_err(), "no client certificate: refused");
    let stranger = stranger_ca.issue("stranger");
    let other_ca = export_tls(gw.ports.grpc, &server_ca.pem(), Some(&stranger)).await;
    assert!(other_ca.is_err(), "a certificate of another CA: refused");
    let plaintext = send_grpc(&gw.grpc_url(), request(spans(5))).await;
    assert!(plaintext.is_err(), "plaintext: refused");
    let mut refused = 0.0;
    for _ in 0..100 {
        refused = gw
            .metric("tailgate_tls_handshake_failures_total", GRPC_LISTENER)
            .await;
        if refused >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused >= 3.0, "each refusal counted, got {refused}");
    assert_eq!(
        sink.spans().len(),
        5,
        "nothing of the refused clients arrived"
    );

    // OTLP/HTTP over TLS 1.3, without client certificates.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/traces", gw.ports.http);
    let body = request(spans(10)).encode_to_vec();
    let resp = https
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        sink.wait_for_spans(15, Duration::from_secs(10)).await.len(),
        15
    );
    let plain = reqwest::Client::new()
        .post(gw.http_url())
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plaintext HTTP: refused"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let (_sink, sink_addr) = Sink::start().await;
    let old_ca = Ca::new("CA before rotation");
    let new_ca = Ca::new("CA after rotation");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = old_ca.issue("gateway");
    std::fs::write(certs.path().join("server.pem"), cert).unwrap();
    std::fs::write(certs.path().join("server.key"), key).unwrap();
    let gw = Gateway::start(&tls_config(sink_addr, certs.path(), false)).await;
    export_tls(gw.ports.grpc, &old_ca.pem(), None)
        .await
        .expect("served with the first certificate");

    // cert-manager renews: a new key and a certificate of another CA, file by file.
    let (cert, key) = new_ca.issue("gateway");
    write_atomically(&certs.path().join("server.key"), &key);
    write_atomically(&certs.path().join("server.pem"), &cert);
    let mut rotated = Err(String::new());
    for _ in 0..100 {
        rotated = export_tls(gw.ports.grpc, &new_ca.pem(), None).await;
        if rotated.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rotated.expect("the new certificate is served within seconds");
    assert!(
        export_tls(gw.ports.grpc, &old_ca.pem(), None)
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    assert!(
        gw.metric("tailgate_tls_reloads_total", "result=\"ok\"")
            .await
            >= 1.0,
        "the reload is counted"
    );
}

#[tokio::test]
async fn a_tls_receiver_without_its_key_does_not_start_and_says_which_file() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, _) = Ca::new("CA").issue("gateway");
    std::fs::write(certs.path().join("server.pem"), cert).unwrap();
    let config = tls_config("127.0.0.1:9".parse().unwrap(), certs.path(), false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let text = config
        .replace("{grpc}", &free_port().to_string())
        .replace("{http}", &free_port().to_string())
        .replace("{metrics}", &free_port().to_string())
        .replace("{health}", &free_port().to_string());
    std::fs::write(&path, text).unwrap();
    let out = tokio::process::Command::new(crate::support::BIN)
        .args(["gateway", "--config", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("receivers.otlp.protocols.grpc.tls") && stderr.contains("server.key"),
        "the error names the setting and the file: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_mtls_an_agent_follows_the_ring_and_routes_every_span() {
    let server_ca = Ca::new("gateway CA");
    let client_ca = Ca::new("agent CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = server_ca.issue("gateway");
    let (agent_cert, agent_key) = client_ca.issue("agent");
    for (file, pem) in [
        ("server.pem", cert),
        ("server.key", key),
        ("clients.pem", client_ca.pem()),
        ("ca.pem", server_ca.pem()),
        ("agent.pem", agent_cert),
        ("agent.key", agent_key),
    ] {
        std::fs::write(certs.path().join(file), pem).unwrap();
    }
    let d = certs.path().display().to_string();
    let gateway_tls = format!(
        "      grpc:\n        endpoint: 127.0.0.1:{{grpc}}\n        tls:\n          cert_file: {d}/server.pem\n          key_file: {d}/server.key\n          client_ca_file: {d}/clients.pem\n"
    );
    let member_config: MemberConfig = std::sync::Arc::new(move |sink, name| {
        crate::cluster::config(sink, name, KEEP_EVERYTHING).replace(
            "      grpc:\n        endpoint: 127.0.0.1:{grpc}\n",
            &gateway_tls,
        )
    });
    let c = Cluster::start_with(2, "3s", member_config).await;
    let resolver = static_resolver(&c);
    let (grpc, metrics) = (free_port(), free_port());
    let config = routing_agent_config(&resolver, grpc, metrics).replace(
        "        tls:\n          insecure: true\n",
        &format!(
            "        tls:\n          ca_file: {d}/ca.pem\n          cert_file: {d}/agent.pem\n          key_file: {d}/agent.key\n"
        ),
    );
    let agent = Agent::start(&config, grpc, metrics, &[]).await;
    // The ring arrives over the gateways' mTLS port: the agent routes by it.
    agent.wait_ring(1).await;
    send_grpc(&agent.url(), request(spans(40))).await.unwrap();
    let got = c.sink.wait_for_spans(40, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 40, "agent log:\n{}", agent.log());
    assert_eq!(agent.metric("tailgate_routing_ring_mode").await, 1.0);
}
