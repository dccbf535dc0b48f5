//! `otlphttp` exporter: OTLP/HTTP, protobuf or JSON bodies.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tailgate_config::ComponentId;
use tailgate_config::components::{HttpEncoding, OtlpHttpExporterConfig};
use tailgate_otlp::compression::{self, Encoding};
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceResponse;

use super::otlp_grpc::read_pem;
use super::{ExportBatch, ExportError, ExportOutcome, Exporter};
use crate::consumer::BoxFuture;

pub struct OtlpHttpExporter {
    client: reqwest::Client,
    url: String,
    /// The body's `Content-Encoding`.
    compression: Encoding,
    json: bool,
}

impl OtlpHttpExporter {
    pub fn new(id: &ComponentId, cfg: &OtlpHttpExporterConfig) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let url = match (&cfg.traces_endpoint, &cfg.endpoint) {
            (Some(t), _) => t.clone(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => anyhow::bail!("exporters.{id}: set endpoint or traces_endpoint"),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| {
                anyhow::anyhow!("exporters.{id}.headers: invalid header name `{k}`: {e}")
            })?;
            let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| {
                anyhow::anyhow!("exporters.{id}.headers.{k}: invalid header value: {e}")
            })?;
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .connect_timeout(cfg.timeout.0.min(Duration::from_secs(10)))
            .default_headers(headers);
        if let Some(ca) = &cfg.tls.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read_pem(ca, "CA file")?)
                .map_err(|e| anyhow::anyhow!("exporters.{id}.tls.ca_file: {e}"))?;
            builder = builder.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
            let mut pem = read_pem(cert, "certificate")?;
            pem.extend_from_slice(&read_pem(key, "key")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("exporters.{id}.tls: {e}"))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("exporters.{id}: cannot build HTTP client: {e}"))?;
        Ok(OtlpHttpExporter {
            client,
            url,
            compression: crate::grpc_compression::payload_encoding(cfg.compression),
            json: cfg.encoding == HttpEncoding::Json,
        })
    }
}

/// OTLP/HTTP's retryable statuses.
fn is_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl Exporter for OtlpHttpExporter {
    fn export<'a>(
        &'a self,
        batch: &'a ExportBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, ExportError>> {
        Box::pin(async move {
            let (body, content_type) = if self.json {
                let json = tailgate_otlp::json::request_to_json(&batch.request).map_err(|e| {
                    ExportError::Permanent {
                        message: e.to_string(),
                    }
                })?;
                (Bytes::from(json), "application/json")
            } else {
                (batch.request.clone(), "application/x-protobuf")
            };
            let mut req = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, content_type);
            let body = if self.compression == Encoding::Identity {
                body
            } else {
                req = req.header(reqwest::header::CONTENT_ENCODING, self.compression.name());
                compression::compress(self.compression, &body)
                    .map(Bytes::from)
                    .map_err(|e| ExportError::Permanent {
                        message: format!("{}: {e}", self.compression.name()),
                    })?
            };
            let resp = req
                .body(body)
                .send()
                .await
                .map_err(|e| ExportError::Retryable {
                    message: format!("POST {}: {}", self.url, super::error_chain(&e)),
                    retry_after: None,
                })?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                let bytes = resp.bytes().await.unwrap_or_default();
                let outcome = if self.json {
                    ExportOutcome::default()
                } else {
                    match ExportTraceServiceResponse::decode(bytes)
                        .ok()
                        .and_then(|r| r.partial_success)
                    {
                        Some(p) => ExportOutcome {
                            rejected_spans: p.rejected_spans.max(0) as u64,
                            message: p.error_message,
                        },
                        None => ExportOutcome::default(),
                    }
                };
                return Ok(outcome);
            }
            let throttle = retry_after(&resp);
            let text = resp.text().await.unwrap_or_default();
            let message = format!(
                "POST {}: HTTP {status}: {}",
                self.url,
                text.chars().take(200).collect::<String>()
            );
            if is_retryable(status) {
                Err(ExportError::Retryable {
                    message,
                    retry_after: throttle,
                })
            } else {
                Err(ExportError::Permanent { message })
            }
        })
    }
}
