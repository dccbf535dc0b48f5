//! Goal: the extensions the article's gateway config enables work as the collector's do.
//! Method: scrape them over HTTP from a running gateway.

use std::io::Read;

use prost::Message;

use crate::support::{Gateway, Sink, free_port, gateway_config};

/// The fields of pprof's `Profile` this test reads.
#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[tokio::test]
async fn pprof_serves_a_gzipped_cpu_profile_and_health_reports_ready() {
    let (_sink, addr) = Sink::start().await;
    let pprof_port = free_port();
    let config = gateway_config(addr, "", "batch", "")
        .replace(
            "extensions:\n  health_check:",
            &format!(
                "extensions:\n  pprof:\n    endpoint: 127.0.0.1:{pprof_port}\n  health_check:"
            ),
        )
        .replace(
            "extensions: [health_check]",
            "extensions: [health_check, pprof]",
        );
    let gw = Gateway::start(&config).await;

    let health = reqwest::get(format!("http://127.0.0.1:{}/", gw.ports.health))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(health.text().await.unwrap().contains("Server available"));

    let resp = reqwest::get(format!(
        "http://127.0.0.1:{pprof_port}/debug/pprof/profile?seconds=1"
    ))
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let gz = resp.bytes().await.unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .expect("profile is gzip");
    let profile = Profile::decode(&raw[..]).expect("profile is pprof protobuf");
    assert_eq!(profile.period, 10_000_000, "100 Hz sampling");
    let names: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| profile.string_table[t.r#type as usize].as_str())
        .collect();
    assert_eq!(names, vec!["samples", "cpu"]);

    let bad = reqwest::get(format!(
        "http://127.0.0.1:{pprof_port}/debug/pprof/profile?seconds=abc"
    ))
    .await
    .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let metrics = gw.metrics().await;
    assert!(metrics.contains("otelcol_process_memory_rss"), "{metrics}");
}
