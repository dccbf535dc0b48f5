//! Bounds on what clients of a receiver can hold: connections that send nothing, or a byte
//! now and then, must not pin the gateway (each holds a socket, a task and buffers).
//!
//! [`guard_connections`] wraps a listener's accepted connections, plaintext or TLS:
//! - at most `max_connections` open at once: beyond it a new connection is closed as it
//!   arrives (counted, `reason="max_connections"`), so file descriptors and memory stay
//!   bounded whatever clients do;
//! - a new connection must send its first [`FIRST_BYTES`] bytes — an HTTP/2 preface, an
//!   HTTP/1 request line — within `first_bytes_timeout`, or it is closed (`"silent"`); one that
//!   connects and sends nothing, or a byte a second, goes within that time;
//! - a connection that neither sent nor received a byte for `idle_timeout` is closed
//!   (`"idle"`). Writes count as activity: a request the pipeline is still working on keeps
//!   its connection.
//!
//! What happens inside a connection is bounded by the servers: HTTP/1 headers within
//! `read_header_timeout` (hyper), gRPC streams per connection (`max_concurrent_streams`),
//! request sizes (`max_recv_msg_size_mib`, `max_request_body_size`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::net::{Incoming, NetStream};
use crate::telemetry::{CONNECTIONS_CLOSED, CONNECTIONS_OPEN};

/// Bytes a new connection must send within `first_bytes_timeout`: the HTTP/2 connection
/// preface is 24 bytes, an HTTP/1 request line longer.
pub const FIRST_BYTES: usize = 24;

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub first_bytes_timeout: Duration,
    pub idle_timeout: Duration,
}

/// `incoming` with `limits` applied to every connection; `listener` names it in metrics.
pub fn guard_connections(incoming: Incoming, limits: ConnectionLimits, listener: &str) -> Incoming {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let listener: Arc<str> = Arc::from(listener);
    Box::pin(incoming.filter_map(move |conn| {
        let result = match conn {
            Err(e) => Some(Err(e)),
            Ok(conn) => match Arc::clone(&open).try_acquire_owned() {
                Ok(permit) => {
                    let peer = conn.1;
                    let guarded = GuardedStream::new(conn, permit, &limits, Arc::clone(&listener));
                    Some(Ok(NetStream(Box::new(guarded), peer)))
                }
                Err(_) => {
                    counter!(CONNECTIONS_CLOSED, "listener" => listener.to_string(), "reason" => "max_connections")
                        .increment(1);
                    None
                }
            },
        };
        std::future::ready(result)
    }))
}

/// A connection under its listener's limits; holds its place among the open connections
/// until dropped.
struct GuardedStream {
    inner: NetStream,
    _permit: OwnedSemaphorePermit,
    /// Bytes still owed of [`FIRST_BYTES`]; 0 once the connection spoke.
    owed: usize,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    listener: Arc<str>,
}

impl GuardedStream {
    fn new(
        inner: NetStream,
        permit: OwnedSemaphorePermit,
        limits: &ConnectionLimits,
        listener: Arc<str>,
    ) -> GuardedStream {
        gauge!(CONNECTIONS_OPEN, "listener" => listener.to_string()).increment(1.0);
        GuardedStream {
            inner,
            _permit: permit,
            owed: FIRST_BYTES,
            idle_timeout: limits.idle_timeout,
            deadline: Box::pin(tokio::time::sleep(limits.first_bytes_timeout)),
            listener,
        }
    }

    /// `Err` once the connection's deadline passed (and counts why).
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let reason = if self.owed > 0 { "silent" } else { "idle" };
        counter!(CONNECTIONS_CLOSED, "listener" => self.listener.to_string(), "reason" => reason)
            .increment(1);
        // Counted once: the connection ends with this error.
        self.deadline
            .as_mut()
            .reset(Instant::now() + Duration::from_secs(86_400 * 365));
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection closed: {reason}"),
        ))
    }

    /// Bytes moved: the idle clock restarts (and, while the first bytes are still owed,
    /// read bytes pay them off; the first-bytes deadline stands until they are paid).
    fn activity(&mut self, read: usize) {
        if self.owed > 0 {
            self.owed = self.owed.saturating_sub(read);
            if self.owed > 0 {
                return;
            }
        }
        self.deadline
            .as_mut()
            .reset(Instant::now() + self.idle_timeout);
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        gauge!(CONNECTIONS_OPEN, "listener" => self.listener.to_string()).decrement(1.0);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.activity(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_deadline(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
            && self.owed == 0
        {
            self.activity(0);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
