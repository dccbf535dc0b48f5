//! Building OTLP requests and sending them with clients independent of Tailgate's code.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// Span `n` of trace `t`: IDs derived from the numbers, so tests can find them again.
pub fn span(t: u32, n: u32, attrs: Vec<KeyValue>) -> Span {
    let mut trace_id = vec![0u8; 16];
    trace_id[12..].copy_from_slice(&(t + 1).to_be_bytes());
    let mut span_id = vec![0u8; 8];
    span_id[4..].copy_from_slice(&(n + 1).to_be_bytes());
    Span {
        trace_id,
        span_id,
        name: format!("span-{t}-{n}"),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

pub fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "e2e")],
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

/// `n` spans over `n / 5` traces.
pub fn spans(n: u32) -> Vec<Span> {
    (0..n)
        .map(|i| span(i / 5, i, vec![kv("i", &i.to_string())]))
        .collect()
}

pub async fn send_grpc(
    url: &str,
    req: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut client = TraceServiceClient::connect(url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client.export(req).await.map(tonic::Response::into_inner)
}
