//! Serving the OTLP/HTTP receiver's connections with hyper directly (instead of
//! `axum::serve`), to bound what a client can hold inside a connection: the headers of each
//! HTTP/1 request within `read_header_timeout` (hyper enforces it only with a timer, which
//! `axum::serve` does not set), and HTTP/2 streams per connection.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use super::Server;
use crate::net::{Incoming, PeerAddr};

/// HTTP/2 streams one OTLP/HTTP connection may have open.
const HTTP2_STREAMS_MAX: u32 = 100;
/// Pause after a failed accept (out of file descriptors, typically) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on the connections of `incoming` until stopped; then stops accepting,
/// lets open connections finish their requests, and returns.
pub(super) fn serve_http(
    incoming: Incoming,
    router: Router,
    read_header_timeout: Duration,
) -> Server {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (closing, closing_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut incoming = incoming;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                next = incoming.next() => match next {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "accepting an OTLP/HTTP connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    Some(Ok(conn)) => {
                        let peer = PeerAddr(conn.1);
                        let router = router.clone();
                        let closing = closing_rx.clone();
                        connections.spawn(serve_connection(conn, peer, router, read_header_timeout, closing));
                    }
                },
            }
        }
        let _ = closing.send(true);
        while connections.join_next().await.is_some() {}
    });
    Server { stop, task }
}

async fn serve_connection(
    conn: crate::net::NetStream,
    peer: PeerAddr,
    router: Router,
    read_header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let service = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(Body::new))
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_STREAMS_MAX);
    let served = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
    tokio::pin!(served);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(?peer, error = %e, "OTLP/HTTP connection ended");
                }
                return;
            }
            changed = closing.changed(), if !shutting_down => {
                if changed.is_err() || *closing.borrow() {
                    shutting_down = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
