//! OTLP/gRPC front end: a hand-registered tonic service that takes raw request bytes.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tailgate_otlp::codec::{RawCodec, TRACE_EXPORT_PATH, TRACE_SERVICE_NAME};
use tailgate_otlp::compression::Encoding;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};

use super::{Ingest, IngestError};
use crate::consumer::{BoxFuture, Client};
use crate::exporter::grpc_status_with_retry_info;
use crate::grpc_compression;
use crate::net::PeerAddr;

/// tonic buffers up to this multiple of the configured limit before our codec answers
/// INVALID_ARGUMENT; beyond it tonic itself refuses. Bounds memory per request.
const TRANSPORT_LIMIT_FACTOR: usize = 4;

/// The `grpc-encoding`s this receiver reads: tonic's gzip and zstd, and snappy in front of it.
const GRPC_ENCODINGS: [Encoding; 4] = [
    Encoding::Identity,
    Encoding::Gzip,
    Encoding::Zstd,
    Encoding::Snappy,
];

/// `opentelemetry.proto.collector.trace.v1.TraceService` over raw bytes.
#[derive(Clone)]
pub struct OtlpGrpcService {
    ingest: Arc<Ingest>,
    max_bytes: usize,
}

impl OtlpGrpcService {
    pub fn new(ingest: Arc<Ingest>, max_recv_msg_size_mib: u64) -> Self {
        OtlpGrpcService {
            ingest,
            max_bytes: (max_recv_msg_size_mib as usize) * 1024 * 1024,
        }
    }
}

impl NamedService for OtlpGrpcService {
    const NAME: &'static str = TRACE_SERVICE_NAME;
}

struct Export(Arc<Ingest>, Client);

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = Arc::clone(&self.0);
        let client = self.1;
        Box::pin(async move {
            let body = request.into_inner();
            match ingest.accept(&body, "grpc", client).await {
                Ok(accepted) => Ok(tonic::Response::new(accepted.encode())),
                Err(e) => Err(to_status(e)),
            }
        })
    }
}

pub(crate) fn to_status(e: IngestError) -> Status {
    match e {
        IngestError::Malformed(m) | IngestError::TooLarge(m) => Status::invalid_argument(m),
        IngestError::Refused {
            message,
            retry_after,
        } => grpc_status_with_retry_info(Code::ResourceExhausted, &message, retry_after),
        IngestError::Unavailable(m) => Status::unavailable(m),
        IngestError::Failed(m) => Status::internal(format!("accepted but not delivered: {m}")),
    }
}

impl<B> tower::Service<http::Request<B>> for OtlpGrpcService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ingest = Arc::clone(&self.ingest);
        let max = self.max_bytes;
        Box::pin(async move {
            if req.uri().path() != TRACE_EXPORT_PATH {
                return Ok(
                    Status::unimplemented(format!("unknown method {}", req.uri().path()))
                        .into_http(),
                );
            }
            let mut encodings = EnabledCompressionEncodings::default();
            encodings.enable(CompressionEncoding::Gzip);
            encodings.enable(CompressionEncoding::Zstd);
            let mut grpc = tonic::server::Grpc::new(RawCodec {
                max_decode_bytes: Some(max),
            })
            .apply_compression_config(encodings, encodings)
            .apply_max_message_size_config(Some(max * TRANSPORT_LIMIT_FACTOR), None);
            let client = Client {
                addr: req
                    .extensions()
                    .get::<PeerAddr>()
                    .and_then(|p| p.0)
                    .map(|a| a.ip()),
            };
            let encoding = req
                .headers()
                .get(grpc_compression::GRPC_ENCODING)
                .map_or(Some(Encoding::Identity), |v| {
                    v.to_str().ok().and_then(Encoding::from_name)
                })
                .filter(|e| GRPC_ENCODINGS.contains(e));
            ingest.count_request("grpc", encoding);
            if encoding.is_none() {
                // tonic answers UNIMPLEMENTED, naming the encoding.
                ingest.count_bad_request("grpc", "unsupported_encoding");
            }
            if encoding != Some(Encoding::Snappy) {
                return Ok(grpc.unary(Export(ingest, client), req).await);
            }
            // tonic has no snappy: decode the messages before it reads them.
            match grpc_compression::plain_request(req, max * TRANSPORT_LIMIT_FACTOR, max).await {
                Ok(plain) => Ok(grpc.unary(Export(ingest, client), plain).await),
                Err((reason, status)) => {
                    ingest.count_bad_request("grpc", reason);
                    Ok(status.into_http())
                }
            }
        })
    }
}
