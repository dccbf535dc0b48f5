//! Compression of gRPC messages in front of tonic.
//!
//! - [`CompressingChannel`] (clients): sends each request's messages compressed by one
//!   encoding — gzip at its fastest level, zstd at level 3, or snappy, which tonic lacks and
//!   the collector speaks (grpc-go's compressor: snappy's framing format) — the same code and
//!   levels as OTLP/HTTP bodies ([`tailgate_otlp::compression`]); tonic's own gzip has a fixed
//!   level 6, several times the CPU for a few percent fewer bytes. A snappy response is turned
//!   back into plain messages: grpc-go servers answer in the request's encoding, whatever the
//!   client listed in `grpc-accept-encoding` (tonic reads gzip and zstd responses itself).
//! - [`plain_request`] (servers): decodes the messages of a request whose `grpc-encoding` is
//!   `snappy` before tonic reads it (tonic decodes gzip and zstd itself).
//!
//! Both hold the whole body, as unary OTLP calls do anyway (one message each way).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use tailgate_config::components::Compression;
use tailgate_otlp::compression::{
    DecompressError, Encoding, GrpcMessageError, decode_grpc_messages, encode_grpc_messages,
};
use tonic::Status;

use crate::consumer::BoxFuture;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header naming a gRPC body's message encoding.
pub const GRPC_ENCODING: &str = "grpc-encoding";

/// Largest response a [`SnappyChannel`] decodes: gRPC's default receive limit. OTLP
/// responses are a few bytes (a partial success at most).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The payload encoding an exporter's `compression` names.
pub fn payload_encoding(compression: Compression) -> Encoding {
    match compression {
        Compression::None => Encoding::Identity,
        Compression::Gzip => Encoding::Gzip,
        Compression::Zstd => Encoding::Zstd,
        Compression::Snappy => Encoding::Snappy,
        Compression::SnappyFramed => Encoding::SnappyFramed,
    }
}

/// Whether a request or response's messages are snappy-compressed.
pub fn is_snappy(headers: &http::HeaderMap) -> bool {
    headers
        .get(GRPC_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"snappy"))
}

/// A gRPC client transport (a tonic `Channel`) whose requests go out compressed by
/// `encoding` (plain with [`Encoding::Identity`]).
#[derive(Debug, Clone)]
pub struct CompressingChannel<S> {
    inner: S,
    encoding: Encoding,
}

impl<S> CompressingChannel<S> {
    pub fn new(inner: S, encoding: Encoding) -> Self {
        CompressingChannel { inner, encoding }
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for CompressingChannel<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The instance polled ready is the one that must take the call.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let encoding = self.encoding;
        Box::pin(async move {
            let request = if encoding == Encoding::Identity {
                request
            } else {
                let (mut parts, body) = request.into_parts();
                let plain = body.collect().await?.to_bytes();
                let packed = encode_grpc_messages(encoding, &plain)?;
                parts
                    .headers
                    .insert(GRPC_ENCODING, HeaderValue::from_static(encoding.name()));
                http::Request::from_parts(parts, tonic::body::Body::new(Full::new(packed)))
            };
            let response = ready.call(request).await.map_err(Into::into)?;
            plain_response(response).await
        })
    }
}

/// A snappy response rewritten to plain messages, its trailers (the gRPC status) kept.
async fn plain_response(
    response: http::Response<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, BoxError> {
    if !is_snappy(response.headers()) {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(GRPC_ENCODING);
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let plain = decode_grpc_messages(Encoding::Snappy, &collected.to_bytes(), MAX_RESPONSE_BYTES)?;
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![Ok(Frame::data(plain))];
    frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
    let body = StreamBody::new(futures::stream::iter(frames));
    Ok(http::Response::from_parts(
        parts,
        tonic::body::Body::new(body),
    ))
}

/// Why [`plain_request`] refused a request: the `reason` of
/// `tailgate_receiver_bad_requests_total`, and the status answered.
pub type Refusal = (&'static str, Status);

/// A server request whose messages are snappy-compressed, with them decoded to plain ones:
/// at most `max_body_bytes` read, each message at most `max_message_bytes` once decoded.
pub async fn plain_request<B>(
    request: http::Request<B>,
    max_body_bytes: usize,
    max_message_bytes: usize,
) -> Result<http::Request<Full<Bytes>>, Refusal>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    parts.headers.remove(GRPC_ENCODING);
    let body = Limited::new(body, max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                let message = format!("snappy request body exceeds {max_body_bytes} bytes");
                ("too_large", Status::invalid_argument(message))
            } else {
                ("transport", Status::from_error(e))
            }
        })?
        .to_bytes();
    let plain =
        decode_grpc_messages(Encoding::Snappy, &body, max_message_bytes).map_err(|e| match e {
            GrpcMessageError::Decompress(DecompressError::TooLarge { .. }) => {
                let message = format!(
                    "decompressed message exceeds the receiver's max_recv_msg_size_mib ({} MiB)",
                    max_message_bytes / (1024 * 1024)
                );
                ("too_large", Status::invalid_argument(message))
            }
            other => (
                "bad_compression",
                Status::invalid_argument(other.to_string()),
            ),
        })?;
    Ok(http::Request::from_parts(parts, Full::new(plain)))
}
