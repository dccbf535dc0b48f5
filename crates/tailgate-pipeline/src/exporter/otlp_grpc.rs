//! `otlp` exporter: OTLP/gRPC with the raw-bytes codec.

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use tailgate_config::ComponentId;
use tailgate_config::components::{ClientTlsConfig, OtlpExporterConfig};
use tailgate_otlp::codec::{RawCodec, TRACE_EXPORT_PATH};
use tailgate_otlp::compression::Encoding;
use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, Endpoint, Identity};
use tonic::{Code, Status};

use super::{ExportBatch, ExportError, ExportOutcome, Exporter};
use crate::consumer::BoxFuture;
use crate::grpc_compression::{CompressingChannel, payload_encoding};
use crate::rpc;

pub struct OtlpGrpcExporter {
    /// The endpoint's URI, named in every error.
    uri: String,
    /// The gRPC method: trace or metrics `Export`.
    path: &'static str,
    channel: Channel,
    headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    /// Request messages' encoding (responses: whatever the server sends).
    compression: Encoding,
}

/// `host:port` gets a scheme from the TLS settings; URLs keep theirs.
pub(crate) fn endpoint_uri(endpoint: &str, tls: &ClientTlsConfig) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if tls.insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

/// tonic's TLS settings from an exporter's `tls`: the CA of `ca_file` (the system's roots
/// without it) and the client certificate of `cert_file`/`key_file` when set.
pub fn client_tls(tls: &ClientTlsConfig) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let mut out = tonic::transport::ClientTlsConfig::new();
    match &tls.ca_file {
        Some(ca) => out = out.ca_certificate(Certificate::from_pem(read_pem(ca, "CA file")?)),
        None => out = out.with_native_roots(),
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        out = out.identity(Identity::from_pem(
            read_pem(cert, "certificate")?,
            read_pem(key, "key")?,
        ));
    }
    if let Some(name) = &tls.server_name_override {
        out = out.domain_name(name.clone());
    }
    Ok(out)
}

pub(crate) fn read_pem(path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {what} `{path}`: {e}"))
}

/// `MetricsService/Export`: a metrics pipeline's `otlp` exporter sends encoded
/// `ExportMetricsServiceRequest`s here.
pub const METRICS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

impl OtlpGrpcExporter {
    pub fn new(
        id: &ComponentId,
        cfg: &OtlpExporterConfig,
        net: &dyn crate::net::Network,
    ) -> anyhow::Result<Self> {
        Self::with_path(id, cfg, net, TRACE_EXPORT_PATH)
    }

    /// The same exporter for a metrics pipeline. Both responses carry their partial success
    /// (rejected items, message) in the same fields, so one reader serves both.
    pub fn for_metrics(
        id: &ComponentId,
        cfg: &OtlpExporterConfig,
        net: &dyn crate::net::Network,
    ) -> anyhow::Result<Self> {
        Self::with_path(id, cfg, net, METRICS_EXPORT_PATH)
    }

    fn with_path(
        id: &ComponentId,
        cfg: &OtlpExporterConfig,
        net: &dyn crate::net::Network,
        path: &'static str,
    ) -> anyhow::Result<Self> {
        let uri = endpoint_uri(&cfg.endpoint, &cfg.tls);
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| anyhow::anyhow!("exporters.{id}.endpoint: invalid endpoint `{uri}`: {e}"))?
            .connect_timeout(cfg.timeout.0.min(Duration::from_secs(10)))
            .timeout(cfg.timeout.0)
            .tcp_nodelay(true);
        if uri.starts_with("https://") {
            endpoint = endpoint
                .tls_config(client_tls(&cfg.tls)?)
                .map_err(|e| anyhow::anyhow!("exporters.{id}.tls: {e}"))?;
        }
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| {
                anyhow::anyhow!("exporters.{id}.headers: invalid header name `{k}`: {e}")
            })?;
            let value = MetadataValue::try_from(v.as_str()).map_err(|e| {
                anyhow::anyhow!("exporters.{id}.headers.{k}: invalid header value: {e}")
            })?;
            headers.push((key, value));
        }
        Ok(OtlpGrpcExporter {
            uri,
            path,
            channel: net.channel(endpoint),
            headers,
            compression: payload_encoding(cfg.compression),
        })
    }
}

impl Exporter for OtlpGrpcExporter {
    fn export<'a>(
        &'a self,
        batch: &'a ExportBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, ExportError>> {
        Box::pin(async move {
            let grpc = tonic::client::Grpc::new(CompressingChannel::new(
                self.channel.clone(),
                self.compression,
            ));
            self.unary(grpc, batch.request.clone()).await
        })
    }
}

impl OtlpGrpcExporter {
    /// One `Export` call through `grpc`, its status classified for the retry loop.
    async fn unary<T>(
        &self,
        mut grpc: tonic::client::Grpc<T>,
        body: Bytes,
    ) -> Result<ExportOutcome, ExportError>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error:
            Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        grpc = grpc
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        grpc.ready().await.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            ExportError::Retryable {
                message: format!("{}: not connected: {}", self.uri, super::error_chain(&*e)),
                retry_after: None,
            }
        })?;
        let mut req = tonic::Request::new(body);
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        let path = PathAndQuery::from_static(self.path);
        match grpc.unary::<Bytes, Bytes, _>(req, path, RawCodec).await {
            Ok(resp) => Ok(partial_success(resp.get_ref())),
            Err(status) => Err(match classify(&status) {
                ExportError::Retryable {
                    message,
                    retry_after,
                } => ExportError::Retryable {
                    message: format!("{}: {message}", self.uri),
                    retry_after,
                },
                ExportError::Permanent { message } => ExportError::Permanent {
                    message: format!("{}: {message}", self.uri),
                },
            }),
        }
    }
}

fn partial_success(body: &[u8]) -> ExportOutcome {
    match ExportTraceServiceResponse::decode(body) {
        Ok(r) => match r.partial_success {
            Some(p) => ExportOutcome {
                rejected_spans: p.rejected_spans.max(0) as u64,
                message: p.error_message,
            },
            None => ExportOutcome::default(),
        },
        Err(_) => ExportOutcome::default(),
    }
}

/// OTLP/gRPC's retry rules: these codes are transient; RESOURCE_EXHAUSTED only with RetryInfo.
fn classify(status: &Status) -> ExportError {
    let retry_after = retry_info_delay(status);
    let message = match std::error::Error::source(status) {
        Some(cause) => format!(
            "{:?}: {}: {}",
            status.code(),
            status.message(),
            super::error_chain(cause)
        ),
        None => format!("{:?}: {}", status.code(), status.message()),
    };
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => ExportError::Retryable {
            message,
            retry_after,
        },
        // No status from the peer: the call broke in the transport (a crashed peer's reset
        // connection comes back as Unknown; a stream cut by a peer shutting down as Internal
        // "h2 protocol error", which the simulator saw an agent drop as permanent while a
        // gateway rolled). tonic attaches the transport error as the source only to such
        // statuses; whether the peer processed the request is unknown, so it is retried and
        // receivers drop what they already have.
        _ if std::error::Error::source(status).is_some() => ExportError::Retryable {
            message,
            retry_after,
        },
        Code::ResourceExhausted if retry_after.is_some() => ExportError::Retryable {
            message,
            retry_after,
        },
        _ => ExportError::Permanent { message },
    }
}

/// The RetryInfo delay a status carries.
pub fn retry_info_delay(status: &Status) -> Option<Duration> {
    rpc::retry_delay(status.details())
}

/// A status with a RetryInfo detail, as receivers refuse retryably.
pub fn grpc_status_with_retry_info(code: Code, message: &str, delay: Duration) -> Status {
    Status::with_details(
        code,
        message.to_string(),
        Bytes::from(rpc::status_with_retry_info(code as i32, message, delay)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn retryable(status: &Status) -> bool {
        matches!(classify(status), ExportError::Retryable { .. })
    }

    #[test]
    fn a_status_the_peer_sent_is_classified_by_its_code() {
        assert!(retryable(&Status::unavailable("draining")));
        assert!(retryable(&Status::cancelled("gone")));
        assert!(!retryable(&Status::internal("bad batch")));
        assert!(!retryable(&Status::invalid_argument("bad span")));
        assert!(!retryable(&Status::unknown("the peer said so")));
        assert!(!retryable(&Status::resource_exhausted("no retry info")));
    }

    #[test]
    fn a_call_broken_in_the_transport_is_retried_whatever_its_code() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = Status::from_error(Box::new(reset));
        assert_eq!(status.code(), Code::Unknown);
        assert!(retryable(&status));
        // What tonic makes of a stream cut by a peer shutting down: Internal, with the h2
        // error as the source.
        let mut cut = Status::internal("h2 protocol error: http2 error");
        assert!(!retryable(&cut));
        cut.set_source(Arc::new(std::io::Error::other("stream reset")));
        assert!(retryable(&cut));
    }
}
