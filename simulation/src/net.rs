//! The pipeline's `Network` over turmoil's simulated TCP: the real receivers, exporters and
//! cluster RPCs run unchanged, and every byte crosses the simulated network.

use std::io;
use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use tailgate_pipeline::consumer::BoxFuture;
use tailgate_pipeline::net::{Incoming, NetStream, Network};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct SimNetwork;

impl Network for SimNetwork {
    fn bind(&self, addr: &str) -> BoxFuture<'_, io::Result<(Incoming, SocketAddr)>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            let incoming = futures::stream::unfold(listener, |l| async move {
                let r = l
                    .accept()
                    .await
                    .map(|(s, peer)| NetStream(Box::new(s), Some(peer)));
                Some((r, l))
            });
            Ok((Box::pin(incoming) as Incoming, local))
        })
    }

    fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }))
    }
}

/// A gRPC channel to `host:port` over the simulated network.
pub fn channel(addr: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(5));
    SimNetwork.channel(endpoint)
}
