//! The `otlp` receiver: OTLP/gRPC and OTLP/HTTP front ends over one [`Ingest`] path.
//!
//! Requests are scanned, never fully decoded ([`tailgate_otlp::scan_export_request`]).
//! Outcomes:
//!
//! | outcome | gRPC | HTTP |
//! |---|---|---|
//! | all spans taken | OK | 200 |
//! | some spans with bad IDs | OK + `partial_success` | 200 + `partial_success` |
//! | undecodable / too large | `INVALID_ARGUMENT` | 400 / 413 |
//! | out of memory or queue space | `RESOURCE_EXHAUSTED` + RetryInfo | 503 + `Retry-After` |
//! | shutting down | `UNAVAILABLE` | 503 |
//!
//! A refused request was not taken at all, so a retry cannot duplicate anything.

pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::counter;
use prost::Message;
use tailgate_otlp::compression::Encoding;
use tailgate_otlp::proto::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use tailgate_otlp::scan_export_request;

use crate::consumer::{Client, ConsumeError, Consumer};
use crate::telemetry::*;

/// Why a request was not (wholly) taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// Undecodable: the sender must not retry it.
    Malformed(String),
    /// Larger than the configured limit.
    TooLarge(String),
    /// Out of capacity: retry after the delay.
    Refused {
        message: String,
        retry_after: Duration,
    },
    /// Shutting down: retry elsewhere or later.
    Unavailable(String),
    /// Delivery failed permanently (inline exporter); already counted as failed.
    Failed(String),
}

/// The response to a request that was taken, wholly or partly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub rejected_spans: u64,
    pub message: String,
}

impl Accepted {
    pub fn to_response(&self) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: (self.rejected_spans > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: self.rejected_spans as i64,
                error_message: self.message.clone(),
            }),
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_response().encode_to_vec())
    }
}

/// Shared by the gRPC and HTTP front ends of one receiver.
pub struct Ingest {
    pub receiver: String,
    pub consumer: Arc<dyn Consumer>,
}

impl Ingest {
    /// Counts a request by the compression its sender named (`grpc-encoding` or
    /// `Content-Encoding`): `identity`, `gzip`, `zstd`, `snappy`, `x-snappy-framed`,
    /// `deflate`, or `unsupported`.
    pub fn count_request(&self, transport: &'static str, encoding: Option<Encoding>) {
        let encoding = encoding.map_or("unsupported", Encoding::name);
        counter!(
            RECEIVER_REQUESTS,
            &[
                ("receiver", self.receiver.clone()),
                ("transport", transport.to_string()),
                ("encoding", encoding.to_string()),
            ]
        )
        .increment(1);
    }

    /// Counts a request refused whole, before any span in it was looked at.
    pub fn count_bad_request(&self, transport: &'static str, reason: &'static str) {
        counter!(
            RECEIVER_BAD_REQUESTS,
            &[
                ("receiver", self.receiver.clone()),
                ("transport", transport.to_string()),
                ("reason", reason.to_string())
            ]
        )
        .increment(1);
    }

    /// Takes one protobuf-encoded request body.
    pub async fn accept(
        &self,
        body: &Bytes,
        transport: &'static str,
        client: Client,
    ) -> Result<Accepted, IngestError> {
        let _in_flight = crate::memory::InFlightBytes::new(body.len());
        let labels = [
            ("receiver", self.receiver.clone()),
            ("transport", transport.to_string()),
        ];
        let scanned = match scan_export_request(body) {
            Ok(s) => s,
            Err(e) => {
                self.count_bad_request(transport, "malformed");
                return Err(IngestError::Malformed(e.to_string()));
            }
        };
        let accepted = Accepted {
            rejected_spans: scanned.rejected_spans,
            message: scanned.rejection_message.unwrap_or_default(),
        };
        if scanned.rejected_spans > 0 {
            counter!(RECEIVER_REJECTED_SPANS, &labels).increment(scanned.rejected_spans);
        }
        let n = scanned.spans.len() as u64;
        if n == 0 {
            return Ok(accepted);
        }
        match self.consumer.consume_from(scanned.spans, client).await {
            Ok(()) => {
                counter!(RECEIVER_ACCEPTED_SPANS, &labels).increment(n);
                Ok(accepted)
            }
            Err(ConsumeError::Refused {
                reason,
                retry_after,
            }) => {
                counter!(RECEIVER_REFUSED_SPANS, &labels).increment(n);
                Err(IngestError::Refused {
                    message: format!("data refused: {reason}; retry later"),
                    retry_after,
                })
            }
            Err(ConsumeError::ShuttingDown) => {
                counter!(RECEIVER_REFUSED_SPANS, &labels).increment(n);
                Err(IngestError::Unavailable("receiver is shutting down".into()))
            }
            Err(ConsumeError::Failed(msg)) => {
                // Taken but not deliverable: the failure is counted by the exporter.
                counter!(RECEIVER_ACCEPTED_SPANS, &labels).increment(n);
                Err(IngestError::Failed(msg))
            }
        }
    }
}
