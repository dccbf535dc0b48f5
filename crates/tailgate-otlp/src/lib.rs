//! OTLP traces kept encoded.
//!
//! Tailgate never decodes a span into the generated types on its data path. This crate owns the representation every
//! other crate passes around:
//!
//! - [`scan_export_request`] splits a request body into [`EncodedSpan`]s — zero-copy slices of
//!   the body plus the [`SpanMeta`] (IDs, times, status, kind) routing and sampling need — and
//!   rejects spans with bad IDs one by one (OTLP partial success).
//! - [`EncodedSpan::attribute`] and friends read single attributes straight off the wire.
//! - [`encode_export_request`] writes spans back into a request, regrouped by resource and scope.
//! - [`codec::RawCodec`] carries bodies through tonic as [`bytes::Bytes`]; [`json`] converts
//!   OTLP/JSON; [`compression`] reads and writes compressed bodies and gRPC messages.
//!
//! **Invariant:** no I/O and no clock here; every function is a pure transform of bytes.

mod build;
pub mod codec;
pub mod compression;
pub mod json;
mod scan;
mod span;
pub mod tracestate;
pub mod wire;

pub use build::{encode_export_request, export_request_len};
pub use scan::{ScanError, ScannedRequest, scan_export_request};
pub use span::{
    AnyValueRef, EVENT_ATTRIBUTES, EVENT_NAME, EncodedSpan, RESOURCE_ATTRIBUTES, ResourceScope,
    SPAN_ATTRIBUTES, SPAN_NAME, SPAN_TRACE_STATE, SpanId, SpanMeta, StatusCode, TraceId,
    find_attribute, for_each_attribute, for_each_attribute_raw, string_field,
};

/// The generated OTLP message types, for OTLP/JSON and for tests.
pub use opentelemetry_proto::tonic as proto;

#[cfg(test)]
mod tests;
