//! Goal: bad input gets a clear error naming the problem, nothing else in the request or the
//! process is lost, and the gateway keeps serving. Method: one gateway, a sequence of bad
//! requests over gRPC and HTTP, then good requests that must arrive whole.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use prost::Message;
use tailgate_otlp::codec::{RawCodec, TRACE_EXPORT_PATH};

use crate::otlp::{request, send_grpc, span, spans};
use crate::support::{Gateway, Sink, gateway_config};

async fn raw_grpc(url: &str, body: Vec<u8>) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary::<Bytes, Bytes, _>(
        tonic::Request::new(Bytes::from(body)),
        http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.post(url).header("content-type", content_type);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let resp = req.body(body).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn garbage_bad_ids_oversized_and_truncated_gzip_get_clear_errors_and_the_gateway_keeps_serving()
 {
    let (sink, addr) = Sink::start().await;
    let mut config = gateway_config(addr, "", "batch", "");
    config = config.replace(
        "        endpoint: 127.0.0.1:{grpc}\n",
        "        endpoint: 127.0.0.1:{grpc}\n        max_recv_msg_size_mib: 1\n",
    );
    config = config.replace(
        "        endpoint: 127.0.0.1:{http}\n",
        "        endpoint: 127.0.0.1:{http}\n        max_request_body_size: 1048576\n",
    );
    let mut gw = Gateway::start(&config).await;

    // gRPC: garbage body.
    let err = raw_grpc(&gw.grpc_url(), b"\x0a\x05\x12\x10garbage-garbage".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("malformed ExportTraceServiceRequest at resource_spans[0]"),
        "{}",
        err.message()
    );

    // gRPC: one span with a zero trace ID among good ones: partial success.
    let mut bad = span(900, 900, vec![]);
    bad.trace_id = vec![0; 16];
    let mut batch = spans(4);
    batch.insert(2, bad);
    let resp = send_grpc(&gw.grpc_url(), request(batch)).await.unwrap();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("spans[2]: trace_id is all zeros"),
        "{}",
        partial.error_message
    );

    // gRPC: 2 MiB request against a 1 MiB limit.
    let big = request(vec![span(
        1,
        1,
        vec![crate::otlp::kv("blob", &"x".repeat(2 * 1024 * 1024))],
    )]);
    let err = send_grpc(&gw.grpc_url(), big.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("exceeds the receiver's max_recv_msg_size_mib (1 MiB)"),
        "{}",
        err.message()
    );

    // HTTP: garbage protobuf, bad JSON, unsupported type, truncated gzip, oversized.
    let (code, body) = post(
        &gw.http_url(),
        "application/x-protobuf",
        None,
        b"\xff\xff\xff".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        &gw.http_url(),
        "application/json",
        None,
        b"{\"resourceSpans\": 7}".to_vec(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("invalid OTLP/JSON trace request"), "{body}");
    let (code, body) = post(&gw.http_url(), "text/plain", None, b"hi".to_vec()).await;
    assert_eq!(code, 415);
    assert!(
        body.contains("unsupported content type `text/plain`"),
        "{body}"
    );
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&request(spans(10)).encode_to_vec()).unwrap();
    let mut truncated = gz.finish().unwrap();
    truncated.truncate(truncated.len() / 2);
    let (code, body) = post(
        &gw.http_url(),
        "application/x-protobuf",
        Some("gzip"),
        truncated,
    )
    .await;
    assert_eq!(code, 400);
    // The body is a google.rpc.Status whose message names the problem.
    assert!(body.contains("invalid gzip body"), "{body}");
    let (code, _) = post(
        &gw.http_url(),
        "application/x-protobuf",
        None,
        big.encode_to_vec(),
    )
    .await;
    assert_eq!(code, 413);

    // Still serving: good requests over both transports arrive whole.
    send_grpc(&gw.grpc_url(), request(spans(10))).await.unwrap();
    let good: Vec<_> = (100..110).map(|i| span(i, i, vec![])).collect();
    let (code, _) = post(
        &gw.http_url(),
        "application/x-protobuf",
        None,
        request(good).encode_to_vec(),
    )
    .await;
    assert_eq!(code, 200);
    // 4 valid spans of the partial request + 10 + 10.
    let got = sink.wait_for_spans(24, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 24);
    assert!(gw.is_running());
    assert_eq!(
        gw.metric("tailgate_receiver_rejected_spans_total", "")
            .await,
        1.0
    );
    assert!(gw.metric("tailgate_receiver_bad_requests_total", "").await >= 2.0);
    assert!(gw.terminate().await.success());
}

#[tokio::test]
async fn otlp_json_over_http_is_accepted_and_answered_in_json() {
    let (sink, addr) = Sink::start().await;
    let gw = Gateway::start(&gateway_config(addr, "", "batch", "")).await;
    let json = serde_json::json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-app"}}]},
        "scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "name": "json-span", "kind": 2, "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000",
        "status": {"code": 2}}]}]}]});
    let (code, body) = post(
        &gw.http_url(),
        "application/json",
        None,
        json.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with('{'), "JSON response: {body}");
    let got = sink.wait_for_spans(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].name, "json-span");
    assert_eq!(
        hex::encode(&got[0].trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(got[0].status.as_ref().unwrap().code, 2);
}
