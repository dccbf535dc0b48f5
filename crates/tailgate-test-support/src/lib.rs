//! Builders of OTLP requests for tests, so every crate's tests write spans the same way.
//!
//! It builds only protobuf messages (`opentelemetry-proto`), never Tailgate types: the crates
//! that test with it (`tailgate-otlp` among them) scan the bytes with their own code, so no
//! test compiles a second copy of the crate under test.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

/// `key = value`.
pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string attribute value.
pub fn string(value: &str) -> Value {
    Value::StringValue(value.into())
}

/// A span status with `code` (0 unset, 1 ok, 2 error) and no message.
pub fn status(code: i32) -> Option<Status> {
    Some(Status {
        message: String::new(),
        code,
    })
}

/// One resource with `resource` attributes holding `spans` in one scope.
pub fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// [`request`], encoded as an OTLP/gRPC or OTLP/HTTP body.
pub fn encoded(resource: Vec<KeyValue>, spans: Vec<Span>) -> Bytes {
    Bytes::from(request(resource, spans).encode_to_vec())
}
