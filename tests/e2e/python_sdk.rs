//! Goal: a real application SDK (OpenTelemetry Python) talks to the gateway over gRPC and
//! HTTP, and the backend receives exactly what the app sent, after redaction. Method: run
//! `tests/python/send_traces.py`, compare its list of span IDs with the sink's.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::{Gateway, Sink, gateway_config, tests_path};

const REDACT: &str = r#"
  attributes/redact:
    actions:
      - key: db.statement
        action: update
        value: "[redacted]"
      - key: http.request.header.authorization
        action: delete
      - key: http.request.header.cookie
        action: delete
"#;

/// A span attribute's value, if present.
pub fn attribute(s: &Span, key: &str) -> Option<Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone()?.value)
}

/// The article's redaction happened: credentials gone, SQL replaced.
pub fn assert_redacted(s: &Span) {
    assert_eq!(attribute(s, "http.request.header.authorization"), None);
    assert_eq!(attribute(s, "http.request.header.cookie"), None);
    if s.name.starts_with("db-query") {
        assert_eq!(
            attribute(s, "db.statement"),
            Some(Value::StringValue("[redacted]".into()))
        );
    }
}

/// Runs the Python sender; the SDK must be installed (`.ci/run` does it).
pub fn python_send(protocol: &str, endpoint: &str, traces: u32) -> serde_json::Value {
    python_send_args(protocol, endpoint, traces, &[])
}

/// `python_send` with more of the script's options.
pub fn python_send_args(
    protocol: &str,
    endpoint: &str,
    traces: u32,
    extra: &[&str],
) -> serde_json::Value {
    python_send_env(protocol, endpoint, traces, extra, &[])
}

/// `python_send_args` with environment variables for the SDK (`OTEL_...`).
pub fn python_send_env(
    protocol: &str,
    endpoint: &str,
    traces: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let script = tests_path("python/send_traces.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--traces",
            &traces.to_string(),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "send_traces.py failed (is the SDK installed? pip install -r tests/python/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("send_traces.py prints JSON")
}

async fn sdk_spans_arrive_redacted(protocol: &str) {
    let (sink, addr) = Sink::start().await;
    let mut gw = Gateway::start(&gateway_config(
        addr,
        REDACT,
        "attributes/redact, batch",
        "",
    ))
    .await;
    let endpoint = match protocol {
        "grpc" => gw.grpc_url(),
        _ => gw.http_url(),
    };
    let sent = python_send(protocol, &endpoint, 20);
    assert_eq!(sent["export_failures"], 0);
    let mut want = BTreeSet::new();
    for t in sent["traces"].as_array().unwrap() {
        for s in t["span_ids"].as_array().unwrap() {
            want.insert(s.as_str().unwrap().to_string());
        }
    }
    assert_eq!(want.len(), 80, "20 traces of a root and 3 children");
    let got = sink
        .wait_for_spans(want.len(), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = sink.spans();
    assert_eq!(got_after.len(), got.len(), "no extra spans arrive later");
    let got_ids: BTreeSet<String> = got.iter().map(|s| hex::encode(&s.span_id)).collect();
    assert_eq!(got_ids, want, "exactly the SDK's spans, each once");
    assert_eq!(got.len(), want.len(), "no duplicates");
    for s in &got {
        assert_redacted(s);
        if s.name.starts_with("db-query") {
            assert_eq!(
                attribute(s, "db.system"),
                Some(Value::StringValue("postgresql".into())),
                "other attributes untouched"
            );
        } else {
            assert_eq!(
                attribute(s, "http.route"),
                Some(Value::StringValue("/checkout".into()))
            );
        }
    }
    let service = sink.received.lock().unwrap()[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert!(service.attributes.iter().any(|a| a.key == "service.name"));
    assert_eq!(
        gw.metric(
            "otelcol_receiver_accepted_spans_total",
            &format!("transport=\"{protocol}\"")
        )
        .await,
        80.0
    );
    assert_eq!(
        gw.metric("otelcol_exporter_sent_spans_total", "").await,
        80.0
    );
    assert!(gw.terminate().await.success());
}

#[tokio::test]
async fn python_sdk_over_grpc_reaches_the_backend_whole_and_redacted() {
    sdk_spans_arrive_redacted("grpc").await;
}

#[tokio::test]
async fn python_sdk_over_http_reaches_the_backend_whole_and_redacted() {
    sdk_spans_arrive_redacted("http").await;
}
