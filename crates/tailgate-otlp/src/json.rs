//! OTLP/JSON for the HTTP receiver and the `file` exporter.
//!
//! JSON is the slow path: it is decoded into the generated types and re-encoded as protobuf,
//! so everything downstream sees one representation.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JsonError {
    #[error("invalid OTLP/JSON trace request: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("cannot render request as OTLP/JSON: not valid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Parses an OTLP/JSON `ExportTraceServiceRequest` and returns it protobuf-encoded.
pub fn request_from_json(body: &[u8]) -> Result<Bytes, JsonError> {
    let request: ExportTraceServiceRequest = serde_json::from_slice(body)?;
    Ok(Bytes::from(request.encode_to_vec()))
}

/// Renders a protobuf-encoded request as one line of OTLP/JSON.
pub fn request_to_json(body: &[u8]) -> Result<String, JsonError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    Ok(serde_json::to_string(&request)?)
}
