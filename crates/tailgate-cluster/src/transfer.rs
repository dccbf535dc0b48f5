//! Forward and handoff messages: spans travel as one OTLP export request (still encoded:
//! no span is decoded on the way), per-trace state as durations.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tailgate_otlp::{EncodedSpan, SpanId, TraceId, encode_export_request, scan_export_request};
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use thiserror::Error;

use crate::proto::{DecisionState, ForwardRequest, HandoffRequest, ReplicateRequest, TraceState};

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
        spans: encode_export_request(spans),
    }
}

pub fn forwarded_spans(req: ForwardRequest) -> Result<Vec<EncodedSpan>, TransferError> {
    let scanned =
        scan_export_request(&req.spans).map_err(|e| TransferError::Spans(e.to_string()))?;
    Ok(scanned.spans)
}

/// What a replica receives: spans copied as the owner accepted them, whole-trace copies and
/// the owner's decisions.
#[derive(Debug, Default)]
pub struct ReplicaCopy {
    pub spans: Vec<EncodedSpan>,
    pub traces: Vec<TraceTransfer>,
    pub decisions: Vec<DecisionTransfer>,
}

pub fn replicate_request(
    from: &str,
    epoch: u64,
    spans: &[&EncodedSpan],
    traces: &[TraceTransfer],
    decisions: &[DecisionTransfer],
) -> ReplicateRequest {
    ReplicateRequest {
        epoch,
        from: from.to_string(),
        spans: if spans.is_empty() {
            Bytes::new()
        } else {
            encode_export_request(spans.iter().copied())
        },
        copies: (!traces.is_empty() || !decisions.is_empty())
            .then(|| handoff_request(from, epoch, traces, decisions)),
    }
}

pub fn replica_copy(req: ReplicateRequest) -> Result<ReplicaCopy, TransferError> {
    let spans = if req.spans.is_empty() {
        Vec::new()
    } else {
        scan_export_request(&req.spans)
            .map_err(|e| TransferError::Spans(e.to_string()))?
            .spans
    };
    let (traces, decisions) = match req.copies {
        Some(copies) => handoff_contents(copies)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(ReplicaCopy {
        spans,
        traces,
        decisions,
    })
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
        spans: encode_export_request(traces.iter().flat_map(|t| t.spans.iter())),
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
                released_span_ids: d.released.iter().map(|s| u64::from_be_bytes(s.0)).collect(),
            })
            .collect(),
    }
}

pub fn handoff_contents(
    req: HandoffRequest,
) -> Result<(Vec<TraceTransfer>, Vec<DecisionTransfer>), TransferError> {
    let scanned =
        scan_export_request(&req.spans).map_err(|e| TransferError::Spans(e.to_string()))?;
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
                traces[i].encoded_bytes += s.bytes().len() as u64;
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
                released: d
                    .released_span_ids
                    .iter()
                    .map(|s| SpanId(s.to_be_bytes()))
                    .collect(),
            })
        })
        .collect::<Result<_, TransferError>>()?;
    Ok((traces, decisions))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use prost::Message;
    use tailgate_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
    use tailgate_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    /// `traces` traces of `per_trace` spans each, scanned as a gateway would.
    fn spans(traces: u8, per_trace: u8) -> Vec<EncodedSpan> {
        let spans = (0..traces)
            .flat_map(|t| {
                (0..per_trace).map(move |n| Span {
                    trace_id: vec![t + 1; 16],
                    span_id: vec![n + 1, t + 1, 0, 0, 0, 0, 0, 1],
                    name: format!("s{t}-{n}"),
                    ..Default::default()
                })
            })
            .collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        scan_export_request(&Bytes::from(req.encode_to_vec()))
            .unwrap()
            .spans
    }

    #[test]
    fn a_handoff_round_trips_spans_deadlines_and_decisions() {
        let all = spans(3, 4);
        let mut traces: Vec<TraceTransfer> = Vec::new();
        for (i, s) in all.into_iter().enumerate() {
            match traces.iter_mut().find(|t| t.trace_id == s.meta.trace_id) {
                Some(t) => t.spans.push(s),
                None => traces.push(TraceTransfer {
                    trace_id: s.meta.trace_id,
                    spans: vec![s],
                    remaining: Duration::from_millis(1500 + i as u64),
                    age: Duration::from_millis(700),
                    root_seen: i % 2 == 0,
                    encoded_bytes: 0,
                }),
            }
        }
        let decisions = vec![DecisionTransfer {
            trace_id: TraceId([9; 16]),
            keep: true,
            age: Duration::from_secs(3),
            released: vec![SpanId([1, 2, 3, 4, 5, 6, 7, 8]), SpanId([9; 8])],
        }];
        let req = handoff_request("g1", 7, &traces, &decisions);
        assert_eq!((req.epoch, req.from.as_str()), (7, "g1"));
        let (back, back_decisions) = handoff_contents(req).unwrap();
        assert_eq!(back_decisions, decisions);
        assert_eq!(back.len(), traces.len());
        for (a, b) in traces.iter().zip(&back) {
            assert_eq!(a.trace_id, b.trace_id);
            assert_eq!(
                (a.remaining, a.age, a.root_seen),
                (b.remaining, b.age, b.root_seen)
            );
            let ids =
                |t: &TraceTransfer| t.spans.iter().map(|s| s.meta.span_id).collect::<Vec<_>>();
            assert_eq!(ids(a), ids(b));
            assert_eq!(
                b.encoded_bytes,
                b.spans.iter().map(|s| s.bytes().len() as u64).sum::<u64>()
            );
        }
    }

    #[test]
    fn a_malformed_handoff_is_refused_with_the_reason() {
        let mut req = handoff_request("g1", 1, &[], &[]);
        req.spans = Bytes::from_static(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            handoff_contents(req),
            Err(TransferError::Spans(_))
        ));
        let mut req = handoff_request("g1", 1, &[], &[]);
        req.decisions.push(DecisionState {
            trace_id: vec![1, 2, 3],
            keep: true,
            age_us: 0,
            released_span_ids: vec![],
        });
        assert_eq!(
            handoff_contents(req).unwrap_err(),
            TransferError::TraceId(3)
        );
        // Spans of a trace the message does not list.
        let mut req = handoff_request("g1", 1, &[], &[]);
        req.spans = encode_export_request(&spans(1, 2));
        assert_eq!(
            handoff_contents(req).unwrap_err(),
            TransferError::UnlistedSpans(2)
        );
    }

    #[test]
    fn a_replica_copy_round_trips_spans_traces_and_decisions() {
        let sent = spans(2, 2);
        let refs: Vec<&EncodedSpan> = sent.iter().collect();
        let whole = TraceTransfer {
            trace_id: TraceId([7; 16]),
            spans: Vec::new(),
            remaining: Duration::from_millis(900),
            age: Duration::from_millis(100),
            root_seen: true,
            encoded_bytes: 0,
        };
        let decision = DecisionTransfer {
            trace_id: TraceId([8; 16]),
            keep: false,
            age: Duration::from_millis(5),
            released: vec![],
        };
        let req = replicate_request("g2", 9, &refs, &[whole], std::slice::from_ref(&decision));
        let copy = replica_copy(req).unwrap();
        assert_eq!(copy.spans.len(), 4);
        assert_eq!(copy.traces.len(), 1);
        assert_eq!(copy.traces[0].remaining, Duration::from_millis(900));
        assert_eq!(copy.decisions, vec![decision]);
        // Spans only: no copies message at all.
        let req = replicate_request("g2", 9, &refs, &[], &[]);
        assert!(req.copies.is_none());
        let mut bad = req;
        bad.spans = Bytes::from_static(&[0xff, 0xff]);
        assert!(matches!(replica_copy(bad), Err(TransferError::Spans(_))));
    }

    #[test]
    fn forwarded_spans_arrive_as_sent() {
        let sent = spans(2, 3);
        let req = forward_request("g0", 4, 1, &sent);
        assert_eq!((req.epoch, req.hops), (4, 1));
        let got = forwarded_spans(req).unwrap();
        let ids = |v: &[EncodedSpan]| {
            v.iter()
                .map(|s| (s.meta.trace_id, s.meta.span_id))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(&sent));
    }
}
