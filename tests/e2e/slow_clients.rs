//! Goal: clients that connect and send nothing, or a byte a second, cannot pin a receiver:
//! normal clients are served while hundreds of them hang on, and the receiver closes them
//! (`read_header_timeout` for OTLP/HTTP, the preface deadline for OTLP/gRPC), counted by
//! reason; `max_connections` bounds what is open at once. Method: one gateway process, raw
//! TCP sockets as the slow clients, tonic and reqwest as the normal ones.

use std::time::Duration;

use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::otlp::{request, send_grpc, spans};
use crate::support::{Gateway, Sink, gateway_config};

const SILENT_PER_PORT: usize = 150;
const DRIPPING_PER_PORT: usize = 50;

/// Opens `n` connections to `port` that send nothing.
async fn silent(port: u16, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    out
}

/// Opens `n` connections to `port` that each send `bytes`, one byte a second, in a task;
/// returns the tasks (a task ends when the server closed its connection).
async fn dripping(
    port: u16,
    n: usize,
    bytes: &'static [u8],
) -> Vec<tokio::task::JoinHandle<usize>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        out.push(tokio::spawn(async move {
            for (sent, b) in bytes.iter().enumerate() {
                if conn.write_all(&[*b]).await.is_err() {
                    return sent;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            bytes.len()
        }));
    }
    out
}

/// True once `gw` counts at least `n` connections closed for `reason` on listeners of
/// `protocol`, within 20 s.
async fn closed_at_least(gw: &Gateway, protocol: &str, reason: &str, n: f64) -> f64 {
    let filter_listener = format!("protocols.{protocol}\"");
    let filter_reason = format!("reason=\"{reason}\"");
    let mut seen = 0.0;
    for _ in 0..200 {
        let text = gw.metrics().await;
        seen = text
            .lines()
            .filter(|l| l.starts_with("tailgate_receiver_connections_closed_total{"))
            .filter(|l| l.contains(&filter_listener) && l.contains(&filter_reason))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if seen >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_silent_and_dripping_connections_do_not_stop_normal_clients() {
    let (sink, sink_addr) = Sink::start().await;
    let config = gateway_config(sink_addr, "", "batch", "").replace(
        "      http:\n        endpoint: 127.0.0.1:{http}\n",
        "      http:\n        endpoint: 127.0.0.1:{http}\n        read_header_timeout: 2s\n        max_connections: 1000\n",
    );
    let gw = Gateway::start(&config).await;
    let (grpc, http) = (gw.ports.grpc, gw.ports.http);

    let _silent_grpc = silent(grpc, SILENT_PER_PORT).await;
    let _silent_http = silent(http, SILENT_PER_PORT).await;
    let drip_grpc = dripping(grpc, DRIPPING_PER_PORT, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let drip_http = dripping(
        http,
        DRIPPING_PER_PORT,
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\ncontent-type: application/x-protobuf\r\n",
    )
    .await;

    // Normal clients, meanwhile: every export goes through, on both ports.
    let https = reqwest::Client::new();
    for round in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(10),
            send_grpc(&gw.grpc_url(), request(spans(4))),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the gRPC export hung"))
        .unwrap();
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            https
                .post(gw.http_url())
                .header("content-type", "application/x-protobuf")
                .body(request(spans(4)).encode_to_vec())
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the HTTP export hung"))
        .unwrap();
        assert_eq!(resp.status(), 200, "round {round}");
    }
    assert_eq!(
        sink.wait_for_spans(40, Duration::from_secs(15)).await.len(),
        40
    );

    // The receivers close them: silent and dripping alike, before their bytes are through.
    let http_closed = closed_at_least(
        &gw,
        "http",
        "silent",
        (SILENT_PER_PORT + DRIPPING_PER_PORT) as f64,
    )
    .await;
    assert!(
        http_closed >= (SILENT_PER_PORT + DRIPPING_PER_PORT) as f64,
        "OTLP/HTTP closed {http_closed}"
    );
    let grpc_closed = closed_at_least(
        &gw,
        "grpc",
        "silent",
        (SILENT_PER_PORT + DRIPPING_PER_PORT) as f64,
    )
    .await;
    assert!(
        grpc_closed >= (SILENT_PER_PORT + DRIPPING_PER_PORT) as f64,
        "OTLP/gRPC closed {grpc_closed}"
    );
    for task in drip_grpc.into_iter().chain(drip_http) {
        let sent = task.await.unwrap();
        assert!(sent < 24, "a dripping client got {sent} bytes through");
    }
    let open = gw
        .metric("tailgate_receiver_connections_open", "protocols.http")
        .await;
    assert!(open <= 1.0, "{open} OTLP/HTTP connections still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_as_they_arrive() {
    let (_sink, sink_addr) = Sink::start().await;
    let config = gateway_config(sink_addr, "", "batch", "").replace(
        "      http:\n        endpoint: 127.0.0.1:{http}\n",
        // Silent connections stay until the limit is checked (a minute to send headers).
        "      http:\n        endpoint: 127.0.0.1:{http}\n        max_connections: 20\n        read_header_timeout: 60s\n",
    );
    let gw = Gateway::start(&config).await;
    let _held = silent(gw.ports.http, 30).await;
    let closed = closed_at_least(&gw, "http", "max_connections", 10.0).await;
    assert!(closed >= 10.0, "closed {closed} beyond the limit");
    let open = gw
        .metric("tailgate_receiver_connections_open", "protocols.http")
        .await;
    assert_eq!(open, 20.0);
}
