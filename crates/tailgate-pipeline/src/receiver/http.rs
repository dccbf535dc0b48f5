//! OTLP/HTTP front end: `POST /v1/traces` with protobuf or JSON bodies, plain or compressed
//! (gzip, zstd, snappy in either format, deflate), as the collector's receiver takes them.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use tailgate_config::components::HttpServerConfig;
use tailgate_otlp::compression::{self, DecompressError, HTTP_ENCODINGS};

use super::{Accepted, Ingest, IngestError};
use crate::consumer::Client;
use crate::net::PeerAddr;
use crate::rpc::RpcStatus;

#[derive(Clone)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// The router serving `traces_url_path`.
pub fn router(ingest: Arc<Ingest>, cfg: &HttpServerConfig) -> Router {
    let max_bytes = cfg.max_request_body_size as usize;
    Router::new()
        .route(&cfg.traces_url_path, post(traces))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(HttpState { ingest, max_bytes })
}

async fn traces(
    State(st): State<HttpState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return error(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "unsupported content type `{other}`; use application/x-protobuf or application/json"
                ),
            );
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let compressed = compression::Encoding::from_name(content_encoding);
    st.ingest.count_request("http", compressed);
    let raw = match compressed {
        Some(compression::Encoding::Identity) => body,
        Some(compressed) => match compression::decompress(compressed, &body, st.max_bytes) {
            Ok(out) => Bytes::from(out),
            Err(e @ DecompressError::Invalid { .. }) => {
                st.ingest.count_bad_request("http", "bad_compression");
                return error(encoding, StatusCode::BAD_REQUEST, &e.to_string());
            }
            Err(DecompressError::TooLarge { limit }) => {
                st.ingest.count_bad_request("http", "too_large");
                return error(
                    encoding,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("decompressed body exceeds max_request_body_size ({limit} bytes)"),
                );
            }
        },
        None => {
            st.ingest.count_bad_request("http", "unsupported_encoding");
            return error(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "unsupported content encoding `{content_encoding}`; use one of {HTTP_ENCODINGS}"
                ),
            );
        }
    };
    let protobuf = match encoding {
        Encoding::Protobuf => raw,
        Encoding::Json => match tailgate_otlp::json::request_from_json(&raw) {
            Ok(b) => b,
            Err(e) => return error(encoding, StatusCode::BAD_REQUEST, &e.to_string()),
        },
    };
    let client = Client {
        addr: peer.map(|p| p.ip()),
    };
    match st.ingest.accept(&protobuf, "http", client).await {
        Ok(accepted) => success(encoding, &accepted),
        Err(IngestError::Malformed(m)) => error(encoding, StatusCode::BAD_REQUEST, &m),
        Err(IngestError::TooLarge(m)) => error(encoding, StatusCode::PAYLOAD_TOO_LARGE, &m),
        Err(IngestError::Refused {
            message,
            retry_after,
        }) => {
            let mut resp = error(encoding, StatusCode::SERVICE_UNAVAILABLE, &message);
            let secs = retry_after.as_secs().max(1).to_string();
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                secs.parse().expect("digits are a valid header"),
            );
            resp
        }
        Err(IngestError::Unavailable(m)) => error(encoding, StatusCode::SERVICE_UNAVAILABLE, &m),
        Err(IngestError::Failed(m)) => error(
            encoding,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("accepted but not delivered: {m}"),
        ),
    }
}

fn success(encoding: Encoding, accepted: &Accepted) -> Response {
    match encoding {
        Encoding::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            accepted.encode().to_vec(),
        )
            .into_response(),
        Encoding::Json => {
            let json =
                serde_json::to_string(&accepted.to_response()).unwrap_or_else(|_| "{}".into());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response()
        }
    }
}

/// OTLP/HTTP error bodies are a `google.rpc.Status` in the request's encoding.
fn error(encoding: Encoding, status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3, // INVALID_ARGUMENT
        StatusCode::SERVICE_UNAVAILABLE => 14, // UNAVAILABLE
        _ => 13,                               // INTERNAL
    };
    match encoding {
        Encoding::Protobuf => {
            let body = RpcStatus {
                code,
                message: message.to_string(),
                details: vec![],
            }
            .encode_to_vec();
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                body,
            )
                .into_response()
        }
        Encoding::Json => {
            let body = serde_json::json!({ "code": code, "message": message }).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}
