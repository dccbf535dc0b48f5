//! Forward and handoff messages: spans travel as one OTLP export request (still encoded:
//! no span is decoded on the way), per-trace state as durations.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tailgate_otlp::{EncodedSpan, TraceId, encode_export_request, scan_export_request};
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use thiserror::Error;

use crate::proto::{DecisionState, ForwardRequest, HandoffRequest, TraceState};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("spans are not a valid OTLP export request: {0}")]
    Spans(String),
    #[error("trace id must be 16 bytes, got {0}")]
    TraceId(usize),
    #[error("{0} spans belong to no trace listed in the handoff")]
    UnlistedSpans(usize),
}

fn trace_id(bytes: &[u8]) -> Result<TraceId, TransferError> {
    bytes
        .try_into()
        .map(TraceId)
        .map_err(|_| TransferError::TraceId(bytes.len()))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

pub fn forward_request(from: &str, epoch: u64, hops: u32, spans: &[EncodedSpan]) -> ForwardRequest {
    ForwardRequest {
        epoch,
        hops,
        from: from.to_string(),
        spans: encode_export_request(spans).to_vec(),
    }
}

pub fn forwarded_spans(req: ForwardRequest) -> Result<Vec<EncodedSpan>, TransferError> {
    let scanned = scan_export_request(&Bytes::from(req.spans))
        .map_err(|e| TransferError::Spans(e.to_string()))?;
    Ok(scanned.spans)
}

pub fn handoff_request(
    from: &str,
    epoch: u64,
    traces: &[TraceTransfer],
    decisions: &[DecisionTransfer],
) -> HandoffRequest {
    HandoffRequest {
        epoch,
        from: from.to_string(),
        spans: encode_export_request(traces.iter().flat_map(|t| t.spans.iter())).to_vec(),
        traces: traces
            .iter()
            .map(|t| TraceState {
                trace_id: t.trace_id.0.to_vec(),
                remaining_us: micros(t.remaining),
                age_us: micros(t.age),
                root_seen: t.root_seen,
            })
            .collect(),
        decisions: decisions
            .iter()
            .map(|d| DecisionState {
                trace_id: d.trace_id.0.to_vec(),
                keep: d.keep,
                age_us: micros(d.age),
            })
            .collect(),
    }
}

pub fn handoff_contents(
    req: HandoffRequest,
) -> Result<(Vec<TraceTransfer>, Vec<DecisionTransfer>), TransferError> {
    let scanned = scan_export_request(&Bytes::from(req.spans))
        .map_err(|e| TransferError::Spans(e.to_string()))?;
    let mut index: HashMap<TraceId, usize> = HashMap::with_capacity(req.traces.len());
    let mut traces = Vec::with_capacity(req.traces.len());
    for t in &req.traces {
        let id = trace_id(&t.trace_id)?;
        index.insert(id, traces.len());
        traces.push(TraceTransfer {
            trace_id: id,
            spans: Vec::new(),
            remaining: Duration::from_micros(t.remaining_us),
            age: Duration::from_micros(t.age_us),
            root_seen: t.root_seen,
            encoded_bytes: 0,
        });
    }
    let mut unlisted = 0;
    for s in scanned.spans {
        match index.get(&s.meta.trace_id) {
            Some(&i) => {
                traces[i].encoded_bytes += s.bytes.len() as u64;
                traces[i].spans.push(s);
            }
            None => unlisted += 1,
        }
    }
    if unlisted > 0 {
        return Err(TransferError::UnlistedSpans(unlisted));
    }
    let decisions = req
        .decisions
        .iter()
        .map(|d| {
            Ok(DecisionTransfer {
                trace_id: trace_id(&d.trace_id)?,
                keep: d.keep,
                age: Duration::from_micros(d.age_us),
            })
        })
        .collect::<Result<_, TransferError>>()?;
    Ok((traces, decisions))
}
