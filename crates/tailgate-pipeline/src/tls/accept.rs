//! Turning a listener's connections into TLS ones without letting clients pin the server.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use metrics::counter;
use rustls::{CertificateError, ServerConfig};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use super::files::Reloading;
use crate::net::{Incoming, NetStream};
use crate::telemetry::TLS_HANDSHAKE_FAILURES;

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener at most; connections beyond wait in the kernel's
/// accept backlog.
pub const PENDING_HANDSHAKES_MAX: usize = 1024;
/// Handshaken connections the server has not taken yet.
const READY_CONNECTIONS_MAX: usize = 64;
/// Pause after a failed accept (out of file descriptors, typically) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Where a listener takes the server config of each new connection from.
pub trait ServerConfigSource: Send + Sync + 'static {
    fn server_config(&self) -> Arc<ServerConfig>;
}

impl ServerConfigSource for Reloading<ServerConfig> {
    fn server_config(&self) -> Arc<ServerConfig> {
        self.current()
    }
}

/// The connections of `incoming` after their TLS handshakes, each in a task of its own
/// under [`HANDSHAKE_TIMEOUT`], at most [`PENDING_HANDSHAKES_MAX`] at once: a client that
/// connects and sends nothing (or a byte a second) holds one task until the timeout, never
/// the accept loop, and never unbounded memory. Failed and timed-out handshakes are counted
/// under `listener` with the reason (`handshake_failure_reason`) and dropped.
pub fn accept_tls(
    tls: Arc<dyn ServerConfigSource>,
    mut incoming: Incoming,
    listener: &str,
) -> Incoming {
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
            let acceptor = TlsAcceptor::from(tls.server_config());
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
                        let reason = handshake_failure_reason(&e);
                        tracing::debug!(%listener, ?peer, reason, error = %e, "TLS handshake refused");
                        counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener, "reason" => reason)
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

/// Why a handshake failed, as a metric label: what an operator acts on (a client without a
/// certificate, one of another CA, an expired one, a name not allowed, plaintext sent to a
/// TLS port).
pub fn handshake_failure_reason(e: &io::Error) -> &'static str {
    let Some(error) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match error {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "peer_name_not_allowed"
            }
            _ => "bad_certificate",
        },
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::AlertReceived(_) => "refused_by_client",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        _ => "refused",
    }
}
