//! [`Network`]: where listeners and outgoing gRPC connections come from. Production uses
//! [`TcpNetwork`]; the deterministic simulator supplies one over its simulated network, so the
//! same receivers, exporters and cluster code run there unchanged.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

use crate::consumer::BoxFuture;

/// A connected byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection of any [`Network`], usable by tonic's server (`Connected`) and client, with
/// the peer's address when the network knows it.
pub struct NetStream(pub Box<dyn Io>, pub Option<SocketAddr>);

/// The peer of a served connection, in every request's extensions (`connection` association).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<SocketAddr>);

impl AsyncRead for NetStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for NetStream {
    type ConnectInfo = PeerAddr;
    fn connect_info(&self) -> Self::ConnectInfo {
        PeerAddr(self.1)
    }
}

/// Accepted connections of a listener.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<NetStream>> + Send>>;

pub trait Network: Send + Sync + 'static {
    /// Listens on `addr` (`host:port`); returns the accepted connections and the bound
    /// address.
    fn bind(&self, addr: &str) -> BoxFuture<'_, io::Result<(Incoming, SocketAddr)>>;

    /// A lazily connecting gRPC channel for `endpoint` (its URI's host and port say where).
    fn channel(&self, endpoint: Endpoint) -> Channel;
}

/// The real network.
pub struct TcpNetwork;

impl Network for TcpNetwork {
    fn bind(&self, addr: &str) -> BoxFuture<'_, io::Result<(Incoming, SocketAddr)>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let local = listener.local_addr()?;
            let incoming = futures::stream::unfold(listener, |l| async move {
                let r = l.accept().await.map(|(s, peer)| {
                    let _ = s.set_nodelay(true);
                    NetStream(Box::new(s), Some(peer))
                });
                Some((r, l))
            });
            Ok((Box::pin(incoming) as Incoming, local))
        })
    }

    fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_lazy()
    }
}

/// The network of this process unless told otherwise.
pub fn tcp() -> Arc<dyn Network> {
    Arc::new(TcpNetwork)
}
