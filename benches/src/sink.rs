//! A minimal OTLP/gRPC sink: takes raw request bytes, counts spans by scanning, keeps nothing.
//! Serves `GET /count` on port+1 for the benchmark driver: the spans received, then those whose
//! resource carries `k8s.pod.name` (an agent's enrichment happened), space-separated.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tailgate_otlp::codec::{RawCodec, TRACE_SERVICE_NAME};
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::server::{NamedService, UnaryService};

/// The resource attribute an enriching agent adds.
const ENRICHED_ATTRIBUTE: &str = "k8s.pod.name";

#[derive(Clone, Default)]
struct Counts {
    spans: Arc<AtomicU64>,
    enriched: Arc<AtomicU64>,
}

#[derive(Clone)]
struct CountingSink {
    counts: Counts,
}

impl NamedService for CountingSink {
    const NAME: &'static str = TRACE_SERVICE_NAME;
}

struct Export(Counts);

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<tonic::Response<Bytes>, tonic::Status>> + Send>,
    >;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let counts = self.0.clone();
        Box::pin(async move {
            if let Ok(scanned) = tailgate_otlp::scan_export_request(request.get_ref()) {
                let enriched = scanned
                    .spans
                    .iter()
                    .filter(|s| s.resource_attribute(ENRICHED_ATTRIBUTE).is_some())
                    .count();
                counts
                    .spans
                    .fetch_add(scanned.spans.len() as u64, Ordering::Relaxed);
                counts
                    .enriched
                    .fetch_add(enriched as u64, Ordering::Relaxed);
            }
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
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let counts = self.counts.clone();
        Box::pin(async move {
            let mut enc = EnabledCompressionEncodings::default();
            enc.enable(CompressionEncoding::Gzip);
            enc.enable(CompressionEncoding::Zstd);
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_compression_config(enc, enc)
                .apply_max_message_size_config(Some(64 << 20), None);
            Ok(grpc.unary(Export(counts), req).await)
        })
    }
}

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let counts = Counts::default();
    let served = counts.clone();
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
            let body = format!(
                "{} {}",
                served.spans.load(Ordering::Relaxed),
                served.enriched.load(Ordering::Relaxed)
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    let grpc = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tonic::transport::Server::builder()
        .add_service(CountingSink { counts })
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
        .await?;
    Ok(())
}
