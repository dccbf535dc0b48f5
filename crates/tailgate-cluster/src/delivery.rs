//! [`Delivery`]: what the cluster delivers to on this gateway — forwarded spans, handed-off
//! traces and decisions — and asks what it buffers. The tail-sampling stage implements it;
//! the node holds it without knowing the stage's type, so every call's direction shows in the
//! types: the stage calls the node through `ClusterLink`, the node calls the stage through
//! this.

use tailgate_otlp::EncodedSpan;
use tailgate_pipeline::consumer::{BoxFuture, ConsumeError};
use tailgate_pipeline::sampling::{BufferedStatus, TailSamplingStage};
use tailgate_sampling::{DecisionTransfer, TraceTransfer};

use crate::transfer::ReplicaCopy;

/// The receiving end of the cluster's data plane on one gateway.
pub trait Delivery: Send + Sync {
    /// Spans another gateway forwarded after they passed `hops` gateways. Buffered here if
    /// this gateway owns them, passed on otherwise; `Ok` once accepted (the sender's ack).
    fn forwarded(
        &self,
        spans: Vec<EncodedSpan>,
        hops: u32,
    ) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// Traces and decisions a previous owner handed off; `Ok` once every one of them is
    /// buffered or applied here (the sender's ack: it forgets them then).
    fn handed_off(
        &self,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// Copies from the owner of traces this gateway is the replica of, sent at the owner's
    /// `epoch`; `Ok` once held here (the owner's ack).
    fn replicated(&self, epoch: u64, copy: ReplicaCopy) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// What this gateway buffers and has in flight.
    fn buffered(&self) -> BoxFuture<'_, BufferedStatus>;
}

impl Delivery for TailSamplingStage {
    fn forwarded(
        &self,
        spans: Vec<EncodedSpan>,
        hops: u32,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(self.ingest_forwarded(spans, hops))
    }

    fn handed_off(
        &self,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(self.accept_handoff(traces, decisions))
    }

    fn replicated(&self, epoch: u64, copy: ReplicaCopy) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(self.accept_replica(epoch, copy.spans, copy.traces, copy.decisions))
    }

    fn buffered(&self) -> BoxFuture<'_, BufferedStatus> {
        Box::pin(self.status())
    }
}
