//! TLS on the receivers' listeners (`receivers.otlp.protocols.{grpc,http}.tls`).
//!
//! A [`ServerTls`] holds the `rustls::ServerConfig` built from the certificate files and
//! replaces it when they change (checked every [`FILE_CHECK_INTERVAL`]) or when
//! `reload_interval` passes: cert-manager rotates a Secret's files in place, and each new
//! connection takes the config current at its accept, so a rotated certificate applies
//! without a restart while open connections keep theirs. Files that fail to load leave the
//! previous config in place (logged once per content, counted).
//!
//! [`accept_tls`] turns a listener's connections into TLS ones. Every handshake runs in a
//! task of its own under [`HANDSHAKE_TIMEOUT`], at most [`PENDING_HANDSHAKES_MAX`] at once: a
//! client that connects and sends nothing (or a byte a second) holds one task until the
//! timeout, never the accept loop, and never unbounded memory.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use metrics::counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tailgate_config::tls::{ServerTlsConfig, TlsVersion};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::net::{Incoming, NetStream};
use crate::telemetry::{TLS_HANDSHAKE_FAILURES, TLS_RELOADS};

/// How often the certificate files are checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener at most; connections beyond wait in the kernel's
/// accept backlog.
pub const PENDING_HANDSHAKES_MAX: usize = 1024;
/// Handshaken connections the server has not taken yet.
const READY_CONNECTIONS_MAX: usize = 64;
/// Pause after a failed accept (out of file descriptors, typically) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// ALPN of an OTLP/gRPC listener.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of an OTLP/HTTP listener.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} `{path}`: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} `{path}`: {message}")]
    Pem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("cert_file `{cert}` with key_file `{key}`: {source}")]
    Identity {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
    #[error("client_ca_file `{path}`: {message}")]
    ClientCa { path: String, message: String },
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
}

/// The files' bytes as last read: a change to any of them means a reload.
#[derive(Clone, PartialEq, Eq)]
struct FileContents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// A listener's TLS settings and the server config built from their files.
pub struct ServerTls {
    settings: ServerTlsConfig,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the files (an error names the file and what is wrong) and starts watching them.
    /// `alpn`: the protocols offered; `listener` names the listener in logs and metrics.
    pub fn start(
        settings: &ServerTlsConfig,
        alpn: &[&[u8]],
        listener: &str,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let contents = read_files(settings)?;
        let config = build(settings, &alpn, &contents)?;
        let tls = Arc::new(ServerTls {
            settings: settings.clone(),
            alpn,
            current: RwLock::new(Arc::new(config)),
        });
        tokio::spawn(watch_files(
            Arc::downgrade(&tls),
            contents,
            listener.to_string(),
        ));
        Ok(tls)
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().expect("TLS config lock poisoned"),
        ))
    }

    /// Builds a config from `contents` and makes it current.
    fn install(&self, contents: &FileContents) -> Result<(), TlsError> {
        let config = build(&self.settings, &self.alpn, contents)?;
        *self.current.write().expect("TLS config lock poisoned") = Arc::new(config);
        Ok(())
    }
}

/// Reloads `tls` when its files change or `reload_interval` passes, until it is dropped.
async fn watch_files(tls: Weak<ServerTls>, mut loaded: FileContents, listener: String) {
    let mut loaded_at = Instant::now();
    // Contents that failed to load: not retried (nor logged again) until they change.
    let mut failed: Option<FileContents> = None;
    loop {
        tokio::time::sleep(FILE_CHECK_INTERVAL).await;
        let Some(tls) = tls.upgrade() else { return };
        let due = tls
            .settings
            .reload_interval
            .is_some_and(|every| loaded_at.elapsed() >= every.0);
        let outcome = read_files(&tls.settings).and_then(|contents| {
            let changed = contents != loaded && failed.as_ref() != Some(&contents);
            if !(changed || due) {
                return Ok(None);
            }
            match tls.install(&contents) {
                Ok(()) => Ok(Some(contents)),
                Err(e) => {
                    failed = Some(contents);
                    Err(e)
                }
            }
        });
        match outcome {
            Ok(None) => {}
            Ok(Some(contents)) => {
                if contents != loaded {
                    tracing::info!(%listener, "TLS certificate files changed; new connections use them");
                }
                loaded = contents;
                loaded_at = Instant::now();
                failed = None;
                counter!(TLS_RELOADS, "listener" => listener.clone(), "result" => "ok")
                    .increment(1);
            }
            Err(e) => {
                if due {
                    loaded_at = Instant::now();
                }
                tracing::error!(%listener, error = %e, "TLS certificate files could not be reloaded; serving the previous ones");
                counter!(TLS_RELOADS, "listener" => listener.clone(), "result" => "failed")
                    .increment(1);
            }
        }
    }
}

fn read_files(s: &ServerTlsConfig) -> Result<FileContents, TlsError> {
    let read = |what: &'static str, path: &str| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_string(),
            source,
        })
    };
    Ok(FileContents {
        cert: read("cert_file", s.cert_file.as_deref().unwrap_or_default())?,
        key: read("key_file", s.key_file.as_deref().unwrap_or_default())?,
        client_ca: s
            .client_ca_file
            .as_deref()
            .map(|p| read("client_ca_file", p))
            .transpose()?,
    })
}

fn build(
    s: &ServerTlsConfig,
    alpn: &[Vec<u8>],
    files: &FileContents,
) -> Result<ServerConfig, TlsError> {
    let cert_path = s.cert_file.clone().unwrap_or_default();
    let key_path = s.key_file.clone().unwrap_or_default();
    let certs = certificates(&files.cert).map_err(|message| TlsError::Pem {
        what: "cert_file",
        path: cert_path.clone(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::Pem {
        what: "key_file",
        path: key_path.clone(),
        message: format!("no usable PEM private key ({e})"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(s.min_version(), s.max_version()))
        .map_err(TlsError::Versions)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let path = s.client_ca_file.clone().unwrap_or_default();
            let ca_error = |message: String| TlsError::ClientCa {
                path: path.clone(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(pem).map_err(ca_error)? {
                roots
                    .add(cert)
                    .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Identity {
            cert: cert_path,
            key: key_path,
            source,
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// Every certificate of a PEM bundle; an error when there is none.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

fn versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static SupportedProtocolVersion> {
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect()
}

/// The connections of `incoming` after their TLS handshakes, each in a task of its own.
/// Failed and timed-out handshakes are counted under `listener` and dropped.
pub fn accept_tls(tls: Arc<ServerTls>, mut incoming: Incoming, listener: &str) -> Incoming {
    let (ready, ready_rx) = mpsc::channel::<io::Result<NetStream>>(READY_CONNECTIONS_MAX);
    let listener = listener.to_string();
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(PENDING_HANDSHAKES_MAX));
        loop {
            // The server gone (the receiver stopped), the listener is closed with this task.
            let permit = tokio::select! {
                p = Arc::clone(&pending).acquire_owned() => p.expect("the semaphore is never closed"),
                () = ready.closed() => return,
            };
            let next = tokio::select! {
                next = incoming.next() => next,
                () = ready.closed() => return,
            };
            let conn = match next {
                None => return,
                Some(Ok(conn)) => conn,
                Some(Err(e)) => {
                    tracing::warn!(%listener, error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            let listener = listener.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let peer = conn.1;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(NetStream(Box::new(stream), peer))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%listener, ?peer, error = %e, "TLS handshake refused");
                        counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener, "reason" => "refused")
                            .increment(1);
                    }
                    Err(_) => {
                        tracing::debug!(%listener, ?peer, "TLS handshake timed out");
                        counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener, "reason" => "timeout")
                            .increment(1);
                    }
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(ready_rx))
}

/// An axum listener over connections that arrive as a stream (the TLS ones of
/// [`accept_tls`]).
pub struct StreamListener {
    incoming: Incoming,
    local: SocketAddr,
}

impl StreamListener {
    pub fn new(incoming: Incoming, local: SocketAddr) -> Self {
        StreamListener { incoming, local }
    }
}

impl axum::serve::Listener for StreamListener {
    type Io = NetStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (NetStream, SocketAddr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.1.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (conn, peer);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                // The accepting task ended: nothing will arrive again.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
