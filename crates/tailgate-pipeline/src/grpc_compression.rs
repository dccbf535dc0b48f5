//! Compression of gRPC messages in front of tonic.
//!
//! - [`CompressingChannel`] (clients): sends each request's messages compressed by one
//!   encoding — gzip at its fastest level, zstd at level 3, or snappy, which tonic lacks and
//!   the collector speaks (grpc-go's compressor: snappy's framing format) — the same code and
//!   levels as OTLP/HTTP bodies ([`tailgate_otlp::compression`]); tonic's own gzip has a fixed
//!   level 6, several times the CPU for a few percent fewer bytes. A snappy response is turned
//!   back into plain messages: grpc-go servers answer in the request's encoding, whatever the
//!   client listed in `grpc-accept-encoding` (tonic reads gzip and zstd responses itself).
//!
//! It holds the whole body, as unary OTLP calls do anyway (one message each way). The
//! receiver reads every encoding itself (`receiver::grpc`).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tailgate_config::components::Compression;
use tailgate_otlp::compression::{Encoding, decode_grpc_messages, encode_grpc_messages};

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
