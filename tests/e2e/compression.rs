//! Goal: every compression the collector speaks crosses every hop — OTLP/gRPC and OTLP/HTTP,
//! into Tailgate's receivers and out of its exporters — and a body that does not decompress
//! is refused by name without harming the next request.
//! Method: one Tailgate sends each span through an exporter per (transport, compression) back
//! into a receiver of its own, whose counts by encoding show what crossed the wire; then the
//! same exporters and receivers face the reference collector (`tests/peers/`), each path in a
//! pipeline of its own on both sides, so a count per receiver proves that path both ways.

use std::time::Duration;

use prost::Message;

use crate::otlp::{request, send_grpc, spans};
use crate::parity::{reference_collector, start};
use crate::support::{Gateway, Sink, free_port};

/// Every exporter compression Tailgate offers, by transport: (exporter ID, type, compression).
const PATHS: &[(&str, &str, &str)] = &[
    ("otlp/none", "grpc", "none"),
    ("otlp/gzip", "grpc", "gzip"),
    ("otlp/zstd", "grpc", "zstd"),
    ("otlp/snappy", "grpc", "snappy"),
    ("otlphttp/none", "http", "none"),
    ("otlphttp/gzip", "http", "gzip"),
    ("otlphttp/zstd", "http", "zstd"),
    ("otlphttp/snappy", "http", "snappy"),
    ("otlphttp/framed", "http", "x-snappy-framed"),
];

fn exporter(
    id: &str,
    transport: &str,
    compression: &str,
    grpc_port: u16,
    http_port: u16,
) -> String {
    match transport {
        "grpc" => format!(
            "  {id}:\n    endpoint: 127.0.0.1:{grpc_port}\n    tls:\n      insecure: true\n    compression: {compression}\n"
        ),
        _ => format!(
            "  {id}:\n    endpoint: http://127.0.0.1:{http_port}\n    compression: {compression}\n"
        ),
    }
}

/// The sum of `name`'s series whose labels include every one of `labels`.
async fn metric_with(gw: &Gateway, name: &str, labels: &[String]) -> f64 {
    let text = gw.metrics().await;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_for_metric(gw: &Gateway, name: &str, filter: &str, want: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = gw.metric(name, filter).await;
        if got >= want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_compression_crosses_grpc_and_http_from_tailgate_exporters_to_its_receivers() {
    const SPANS: usize = 40;
    let (sink, sink_addr) = Sink::start().await;
    let (back_grpc, back_http) = (free_port(), free_port());
    let exporters: String = PATHS
        .iter()
        .map(|(id, transport, c)| exporter(id, transport, c, back_grpc, back_http))
        .collect();
    let ids: Vec<&str> = PATHS.iter().map(|p| p.0).collect();
    let config = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{{grpc}}\n      http:\n        endpoint: 127.0.0.1:{{http}}\n  otlp/back:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{back_grpc}\n      http:\n        endpoint: 127.0.0.1:{back_http}\nexporters:\n  otlp/sink:\n    endpoint: {sink_addr}\n    tls:\n      insecure: true\n{exporters}extensions:\n  health_check:\n    endpoint: 127.0.0.1:{{health}}\nservice:\n  extensions: [health_check]\n  telemetry:\n    metrics:\n      address: 127.0.0.1:{{metrics}}\n  pipelines:\n    traces/out:\n      receivers: [otlp]\n      exporters: [{}]\n    traces/back:\n      receivers: [otlp/back]\n      exporters: [otlp/sink]\n",
        ids.join(", ")
    );
    let gw = Gateway::start(&config).await;
    send_grpc(&gw.grpc_url(), request(spans(SPANS as u32)))
        .await
        .unwrap();

    let got = sink
        .wait_for_spans(SPANS * PATHS.len(), Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), SPANS * PATHS.len(), "log:\n{}", gw.log());
    for (id, transport, compression) in PATHS {
        let sent = gw
            .metric(
                "otelcol_exporter_sent_spans_total",
                &format!("exporter=\"{id}\""),
            )
            .await;
        assert_eq!(sent, SPANS as f64, "{id}; log:\n{}", gw.log());
        // The receiver counted one request per path in the encoding the exporter named.
        let encoding = match *compression {
            "none" => "identity",
            other => other,
        };
        let labels = [
            "receiver=\"otlp/back\"".to_string(),
            format!("transport=\"{transport}\""),
            format!("encoding=\"{encoding}\""),
        ];
        let requests = metric_with(&gw, "tailgate_receiver_requests_total", &labels).await;
        assert!(requests >= 1.0, "{id}: no request counted as {labels:?}");
    }
    assert_eq!(
        gw.metric("otelcol_exporter_send_failed_spans_total", "")
            .await,
        0.0
    );
    assert_eq!(
        gw.metric("tailgate_receiver_bad_requests_total", "").await,
        0.0
    );
}

#[tokio::test]
async fn a_body_that_does_not_decompress_is_refused_by_name_and_the_gateway_keeps_serving() {
    let (sink, addr) = Sink::start().await;
    let gw = Gateway::start(&crate::support::gateway_config(addr, "", "batch", "")).await;
    let body = request(spans(10)).encode_to_vec();
    let http = reqwest::Client::new();
    let post = |encoding: &'static str, payload: Vec<u8>| {
        http.post(gw.http_url())
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", encoding)
            .body(payload)
            .send()
    };

    // An encoding no collector speaks: 415, listing the ones that work.
    let resp = post("br", body.clone()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let text = resp.text().await.unwrap();
    assert!(text.contains("unsupported content encoding `br`"), "{text}");
    assert!(text.contains("zstd, snappy"), "{text}");
    // A zstd body cut in half, and bytes that are no snappy at all: 400, naming the encoding.
    let mut zstd = zstd::bulk::compress(&body, 3).unwrap();
    zstd.truncate(zstd.len() / 2);
    let resp = post("zstd", zstd).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("invalid zstd body"));
    let resp = post("snappy", b"\xff\xff\xff\xff not snappy".to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("invalid snappy body"));
    // A snappy block claiming 64 MiB, far past the 4 MiB limit: refused before it is inflated.
    let bomb = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 64 << 20])
        .unwrap();
    let resp = post("snappy", bomb).await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    // gRPC: a snappy message that is not snappy is INVALID_ARGUMENT, named as the sender
    // named it.
    let mut message = vec![1u8];
    message.extend(12u32.to_be_bytes());
    message.extend(b"not snappy!!");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(format!(
            "{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            gw.grpc_url()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "snappy")
        .body(message)
        .send()
        .await
        .unwrap();
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let message = resp
        .headers()
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(status.as_deref(), Some("3"), "INVALID_ARGUMENT: {message}");
    assert!(message.contains("invalid%20snappy%20body"), "{message}");

    // Each refusal was counted with its reason; good requests still arrive whole.
    for (reason, n) in [
        ("unsupported_encoding", 1.0),
        ("bad_compression", 3.0),
        ("too_large", 1.0),
    ] {
        let got = gw
            .metric(
                "tailgate_receiver_bad_requests_total",
                &format!("reason=\"{reason}\""),
            )
            .await;
        assert_eq!(got, n, "{reason}");
    }
    let snappy = snap::raw::Encoder::new().compress_vec(&body).unwrap();
    let resp = post("snappy", snappy).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    send_grpc(&gw.grpc_url(), request(spans(10))).await.unwrap();
    assert_eq!(
        sink.wait_for_spans(20, Duration::from_secs(10)).await.len(),
        20
    );
}

/// The collector's side: a pipeline per path, each receiver feeding the exporter of the same
/// path back to Tailgate.
fn collector_config(paths: &[CollectorPath], tailgate_back: &[u16]) -> String {
    let mut receivers = String::new();
    let mut exporters = String::new();
    let mut pipelines = String::new();
    for (path, back) in paths.iter().zip(tailgate_back) {
        let (name, protocol) = (path.name, path.transport);
        receivers += &format!(
            "  otlp/{name}:\n    protocols:\n      {protocol}:\n        endpoint: 127.0.0.1:{}\n",
            path.collector_port
        );
        exporters += &match protocol {
            "grpc" => format!(
                "  otlp/{name}:\n    endpoint: 127.0.0.1:{back}\n    tls:\n      insecure: true\n    compression: {}\n",
                path.from_collector
            ),
            _ => format!(
                "  otlphttp/{name}:\n    endpoint: http://127.0.0.1:{back}\n    compression: {}\n",
                path.from_collector
            ),
        };
        let exporter = if protocol == "grpc" {
            "otlp"
        } else {
            "otlphttp"
        };
        pipelines += &format!(
            "    traces/{name}:\n      receivers: [otlp/{name}]\n      exporters: [{exporter}/{name}]\n"
        );
    }
    format!(
        "receivers:\n{receivers}exporters:\n{exporters}service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n{pipelines}"
    )
}

/// One path between Tailgate and the collector, both ways.
struct CollectorPath {
    name: &'static str,
    transport: &'static str,
    /// Tailgate's exporter compression towards the collector.
    from_tailgate: &'static str,
    /// The collector's exporter compression back to Tailgate.
    from_collector: &'static str,
    collector_port: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn zstd_and_snappy_cross_between_tailgate_and_the_collector_both_ways_on_both_transports() {
    const SPANS: usize = 50;
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let path = |name, transport, from_tailgate, from_collector| CollectorPath {
        name,
        transport,
        from_tailgate,
        from_collector,
        collector_port: free_port(),
    };
    let paths = [
        path("grpc_zstd", "grpc", "zstd", "zstd"),
        path("grpc_compression", "grpc", "snappy", "snappy"),
        path("http_zstd", "http", "zstd", "zstd"),
        // The collector sends `snappy` in the block format and `x-snappy-framed` framed; it
        // reads either under `snappy`.
        path("http_snappy", "http", "snappy", "snappy"),
        path("http_framed", "http", "x-snappy-framed", "x-snappy-framed"),
    ];
    let back: Vec<u16> = paths.iter().map(|_| free_port()).collect();

    let dir = tempfile::tempdir().unwrap();
    let collector_yaml = dir.path().join("collector.yaml");
    std::fs::write(&collector_yaml, collector_config(&paths, &back)).unwrap();
    let first_port = paths[0].collector_port;
    let running = start(
        &collector,
        &["--config", collector_yaml.to_str().unwrap()],
        first_port,
        0,
        &[],
        dir.path(),
        "collector",
    )
    .await;

    let (sink, sink_addr) = Sink::start().await;
    let mut receivers = String::new();
    let mut exporters = String::new();
    let mut out = Vec::new();
    let mut back_receivers = Vec::new();
    for (p, back) in paths.iter().zip(&back) {
        receivers += &format!(
            "  otlp/back_{}:\n    protocols:\n      {}:\n        endpoint: 127.0.0.1:{back}\n",
            p.name, p.transport
        );
        back_receivers.push(format!("otlp/back_{}", p.name));
        let id = if p.transport == "grpc" {
            format!("otlp/{}", p.name)
        } else {
            format!("otlphttp/{}", p.name)
        };
        exporters += &exporter(
            &id,
            p.transport,
            p.from_tailgate,
            p.collector_port,
            p.collector_port,
        );
        out.push(id);
    }
    let config = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{{grpc}}\n{receivers}exporters:\n  otlp/sink:\n    endpoint: {sink_addr}\n    tls:\n      insecure: true\n{exporters}extensions:\n  health_check:\n    endpoint: 127.0.0.1:{{health}}\nservice:\n  extensions: [health_check]\n  telemetry:\n    metrics:\n      address: 127.0.0.1:{{metrics}}\n  pipelines:\n    traces/out:\n      receivers: [otlp]\n      exporters: [{}]\n    traces/back:\n      receivers: [{}]\n      exporters: [otlp/sink]\n",
        out.join(", "),
        back_receivers.join(", ")
    );
    let gw = Gateway::start(&config).await;
    // The collector's pipelines start with its first port; wait for the others too.
    for p in &paths {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", p.collector_port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    send_grpc(&gw.grpc_url(), request(spans(SPANS as u32)))
        .await
        .unwrap();

    for p in &paths {
        let receiver = format!("receiver=\"otlp/back_{}\"", p.name);
        let got = wait_for_metric(
            &gw,
            "otelcol_receiver_accepted_spans_total",
            &receiver,
            SPANS as f64,
        )
        .await;
        assert_eq!(
            got,
            SPANS as f64,
            "{}: Tailgate -> collector ({}) -> Tailgate ({}); collector log:\n{}\ntailgate log:\n{}",
            p.name,
            p.from_tailgate,
            p.from_collector,
            running.log(),
            gw.log()
        );
        let labels = [
            receiver.clone(),
            format!("transport=\"{}\"", p.transport),
            format!("encoding=\"{}\"", p.from_collector),
        ];
        assert!(
            metric_with(&gw, "tailgate_receiver_requests_total", &labels).await >= 1.0,
            "{}: the collector's requests were not {}",
            p.name,
            p.from_collector
        );
    }
    let got = sink
        .wait_for_spans(SPANS * paths.len(), Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), SPANS * paths.len());
    assert_eq!(
        gw.metric("otelcol_exporter_send_failed_spans_total", "")
            .await,
        0.0
    );
}
