//! Mutual TLS on the cluster plane (`cluster.tls`): every gateway is server and client of
//! its peers with one certificate, and trusts only the cluster's CA.
//!
//! A peer is identified by its certificate, not by the address it was dialed at: members
//! reach each other by pod IP or by a headless service's names, and a certificate cannot list
//! every pod IP. So both sides check the chain against `ca_file` and, when
//! `allowed_peer_names` is set, that the certificate is valid for one of those names (as an
//! HTTPS client checks a server's name) — the same rule in both directions. A certificate
//! that expired fails the chain check: such a member is refused until its files rotate.

use std::io;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use metrics::counter;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use tailgate_config::tls::ClusterTlsConfig;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::accept::{ServerConfigSource, accept_tls, handshake_failure_reason};
use super::files::{Build, Reloading, TlsError, TlsFile, roots};
use super::receiver::identity;
use crate::consumer::BoxFuture;
use crate::net::{Incoming, Network, TcpNetwork};
use crate::telemetry::TLS_HANDSHAKE_FAILURES;

/// The listener label of the cluster server in the TLS metrics.
pub const CLUSTER_LISTENER: &str = "cluster";
/// The label of this gateway's own calls to its peers in the TLS metrics.
pub const CLUSTER_CLIENT: &str = "cluster_client";

/// The configs one set of cluster certificate files builds.
pub struct ClusterTlsConfigs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The cluster plane's TLS, rebuilt as its files change.
pub type ClusterTls = Reloading<ClusterTlsConfigs>;

impl ServerConfigSource for ClusterTls {
    fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current().server)
    }
}

/// Loads `cluster.tls`'s files and starts watching them.
pub fn cluster_tls(cfg: &ClusterTlsConfig) -> Result<Arc<ClusterTls>, TlsError> {
    let files = vec![
        TlsFile {
            what: "cluster.tls.cert_file",
            path: cfg.cert_file.clone(),
        },
        TlsFile {
            what: "cluster.tls.key_file",
            path: cfg.key_file.clone(),
        },
        TlsFile {
            what: "cluster.tls.ca_file",
            path: cfg.ca_file.clone(),
        },
    ];
    let allowed = cfg
        .allowed_peer_names
        .iter()
        .map(|n| {
            ServerName::try_from(n.clone()).map_err(|_| TlsError::PeerName { name: n.clone() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let build: Build<ClusterTlsConfigs> = {
        let files = files.clone();
        Box::new(move |contents| build(&files, contents, &allowed))
    };
    Reloading::start(
        files,
        cfg.reload_interval.map(|d| d.0),
        build,
        CLUSTER_LISTENER,
    )
}

fn build(
    files: &[TlsFile],
    contents: &[Vec<u8>],
    allowed: &[ServerName<'static>],
) -> Result<ClusterTlsConfigs, TlsError> {
    let (certs, key) = identity(&files[0], &contents[0], &files[1], &contents[1])?;
    let roots = Arc::new(roots(&contents[2], &files[2])?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let identity_error = |source| TlsError::Identity {
        cert: files[0].path.clone(),
        key: files[1].path.clone(),
        source,
    };
    let peers =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Ca {
                what: files[2].what,
                path: files[2].path.clone(),
                message: e.to_string(),
            })?;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(Arc::new(ClientPeerVerifier {
            inner: peers,
            allowed: allowed.to_vec(),
        }))
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(identity_error)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerPeerVerifier {
            roots,
            allowed: allowed.to_vec(),
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_client_auth_cert(certs, key)
        .map_err(identity_error)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClusterTlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// `Ok` when `allowed` is empty or the certificate is valid for one of its names.
fn check_peer_name(
    cert: &CertificateDer<'_>,
    allowed: &[ServerName<'static>],
) -> Result<(), rustls::Error> {
    if allowed.is_empty() {
        return Ok(());
    }
    let parsed = ParsedCertificate::try_from(cert)?;
    if allowed
        .iter()
        .any(|n| verify_server_name(&parsed, n).is_ok())
    {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }
}

/// The server side: a client certificate of the cluster CA is required, and its names
/// checked against `allowed_peer_names`.
#[derive(Debug)]
struct ClientPeerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for ClientPeerVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer_name(end_entity, &self.allowed)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client side: the peer's chain must reach the cluster CA and its names pass
/// `allowed_peer_names`; the address dialed is not a name the certificate must hold (see
/// the module docs).
#[derive(Debug)]
struct ServerPeerVerifier {
    roots: Arc<RootCertStore>,
    allowed: Vec<ServerName<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialed: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_peer_name(end_entity, &self.allowed)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TCP with mutual TLS on every connection, both ways: what the cluster server listens on
/// and what this gateway calls its peers over (Raft, join, forward, handoff, replication).
pub struct TlsNetwork {
    tls: Arc<ClusterTls>,
}

impl TlsNetwork {
    pub fn new(tls: Arc<ClusterTls>) -> TlsNetwork {
        TlsNetwork { tls }
    }
}

impl TlsNetwork {
    /// A channel to `endpoint` connected now (an error says why it could not be), for one-off
    /// callers such as `tailgate status`.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.connector()).await
    }

    /// Dials a peer over TLS with the client config current at each connection's start.
    fn connector(
        &self,
    ) -> impl tower::Service<
        Uri,
        Response = TokioIo<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
        Error = io::Error,
        Future = impl Future + Send,
    > + Clone
    + Send
    + 'static {
        let tls = Arc::clone(&self.tls);
        tower::service_fn(move |uri: Uri| connect(uri, Arc::clone(&tls.current().client)))
    }
}

impl Network for TlsNetwork {
    fn bind(&self, addr: &str) -> BoxFuture<'_, io::Result<(Incoming, std::net::SocketAddr)>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let (incoming, local) = TcpNetwork.bind(&addr).await?;
            let source: Arc<dyn ServerConfigSource> = Arc::clone(&self.tls) as _;
            Ok((accept_tls(source, incoming, CLUSTER_LISTENER), local))
        })
    }

    fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.connector())
    }
}

/// One TLS connection to the peer at `uri`, with the client config current at its start.
async fn connect(
    uri: Uri,
    config: Arc<ClientConfig>,
) -> io::Result<TokioIo<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    // Not checked against the certificate (ServerPeerVerifier); rustls needs one for SNI.
    let name =
        ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    match TlsConnector::from(config).connect(name, tcp).await {
        Ok(stream) => Ok(TokioIo::new(stream)),
        Err(e) => {
            let reason = handshake_failure_reason(&e);
            tracing::debug!(peer = %uri, reason, error = %e, "TLS handshake with a peer failed");
            counter!(TLS_HANDSHAKE_FAILURES, "listener" => CLUSTER_CLIENT, "reason" => reason)
                .increment(1);
            Err(e)
        }
    }
}
