//! A minimal OTLP/gRPC sink: takes raw request bytes, counts spans by scanning, keeps nothing.
//! Serves the count at `GET /count` on port+1 for the benchmark driver.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tailgate_otlp::codec::{RawCodec, TRACE_SERVICE_NAME};
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::server::{NamedService, UnaryService};

#[derive(Clone)]
struct CountingSink {
    spans: Arc<AtomicU64>,
}

impl NamedService for CountingSink {
    const NAME: &'static str = TRACE_SERVICE_NAME;
}

struct Export(Arc<AtomicU64>);

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tonic::Response<Bytes>, tonic::Status>> + Send>,
    >;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let counter = Arc::clone(&self.0);
        Box::pin(async move {
            let n = tailgate_otlp::scan_export_request(request.get_ref())
                .map(|s| s.spans.len())
                .unwrap_or(0);
            counter.fetch_add(n as u64, Ordering::Relaxed);
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for CountingSink
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let spans = Arc::clone(&self.spans);
        Box::pin(async move {
            let mut enc = EnabledCompressionEncodings::default();
            enc.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawCodec::default())
                .apply_compression_config(enc, enc)
                .apply_max_message_size_config(Some(64 << 20), None);
            Ok(grpc.unary(Export(spans), req).await)
        })
    }
}

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let spans = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&spans);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port + 1)).await?;
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            // Read the request head before answering, so the client sees a clean close.
            let mut buf = [0u8; 1024];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let n = counter.load(Ordering::Relaxed);
            let body = n.to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    let grpc = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tonic::transport::Server::builder()
        .add_service(CountingSink { spans })
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
        .await?;
    Ok(())
}
