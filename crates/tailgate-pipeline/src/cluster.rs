//! The seam between the tail-sampling engine and the gateway cluster.
//!
//! The engine needs five things from the cluster, and nothing else: the ring it must route
//! by (as a `watch`, newest epoch last), the runtime sampling override, a way to forward
//! spans to their owner, a way to hand buffered traces to their new owner, and (with
//! `replication_factor: 2`) a way to copy spans and decisions to a trace's replica.
//! `tailgate-cluster` implements [`ClusterLink`]; tests and the simulator may implement it
//! too. Without a link the engine owns every trace (a single gateway).

use std::sync::Arc;

use tailgate_otlp::EncodedSpan;
use tailgate_ring::Ring;
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use thiserror::Error;
use tokio::sync::watch;

use crate::consumer::BoxFuture;

/// Most gateways a forwarded batch may pass through before the last one keeps it: a
/// receiver that is still behind after catching up forwards again, but never in a loop.
pub const FORWARD_HOPS_MAX: u32 = 3;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("member {0:?} is not in the cluster state")]
    UnknownMember(String),
    #[error("{member} did not take the batch: {message}")]
    Failed { member: String, message: String },
}

/// A handoff that did not complete: the traces come back to their sender, which keeps
/// owning their copy (delete only after the ack).
pub struct HandoffFailed {
    pub error: LinkError,
    pub traces: Vec<TraceTransfer>,
}

pub trait ClusterLink: Send + Sync + 'static {
    /// This gateway's member name (what the ring places).
    fn local_name(&self) -> &str;

    /// The newest ring this node has applied.
    fn ring(&self) -> watch::Receiver<Arc<Ring>>;

    /// The runtime sampling override in force (a percentage), if any.
    fn sampling_override(&self) -> watch::Receiver<Option<f64>>;

    /// True while this node has heard from no peer for long enough that it is probably being
    /// removed: it then decides nothing (its traces go to their new owners once it is back),
    /// so two nodes never both decide a trace across a partition.
    fn fenced(&self) -> watch::Receiver<bool>;

    /// Sends spans to `owner`, tagged with the sender's epoch. `hops` counts the gateways
    /// the spans already passed through. The spans are encoded before this returns, so the
    /// caller keeps them (to hold them here if the forward fails) without a copy.
    fn forward(
        &self,
        owner: &str,
        epoch: u64,
        hops: u32,
        spans: &[EncodedSpan],
    ) -> BoxFuture<'static, Result<(), LinkError>>;

    /// Copies of every buffered span: 1, or 2 (each trace also on its ring replica).
    fn replication_factor(&self) -> u8;

    /// Copies spans the owner just accepted, whole traces and decisions to `replica`, tagged
    /// with the sender's epoch; `Ok` once the replica holds them. Encoded before this
    /// returns, like [`ClusterLink::forward`].
    fn replicate(
        &self,
        replica: &str,
        epoch: u64,
        spans: &[&EncodedSpan],
        traces: &[TraceTransfer],
        decisions: &[DecisionTransfer],
    ) -> BoxFuture<'static, Result<(), LinkError>>;

    /// Moves buffered traces and decisions to `owner`; `Ok` means it acknowledged them.
    fn hand_off(
        &self,
        owner: &str,
        epoch: u64,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) -> BoxFuture<'static, Result<(), HandoffFailed>>;
}
