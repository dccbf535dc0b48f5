//! The data plane the engine calls through [`ClusterLink`]: forward spans to their owner,
//! hand buffered traces and decisions to their new owner, copy spans and decisions to a
//! trace's replica. All wait for the receiver's acknowledgement, within
//! [`TRANSFER_TIMEOUT_MS`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tailgate_otlp::EncodedSpan;
use tailgate_pipeline::cluster::{ClusterLink, HandoffFailed, LinkError};
use tailgate_pipeline::consumer::BoxFuture;
use tailgate_ring::Ring;
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{ClusterNode, TRANSFER_TIMEOUT_MS};
use crate::proto::cluster_client::ClusterClient;
use crate::transfer;

impl ClusterNode {
    /// A member's cluster address, by name, at this node's state.
    fn cluster_addr_of(&self, member: &str) -> Result<String, LinkError> {
        self.state()
            .member_by_name(member)
            .map(|m| m.cluster_addr.clone())
            .ok_or_else(|| LinkError::UnknownMember(member.to_string()))
    }
}

fn failed(member: &str, message: impl ToString) -> LinkError {
    LinkError::Failed {
        member: member.to_string(),
        message: message.to_string(),
    }
}

fn transfer_timeout() -> Duration {
    Duration::from_millis(TRANSFER_TIMEOUT_MS)
}

/// One data-plane call to `member`, within [`TRANSFER_TIMEOUT_MS`]: `Ok` once it answered.
async fn call_member<T, F>(
    node: &ClusterNode,
    member: &str,
    call: impl FnOnce(ClusterClient<Channel>) -> F,
) -> Result<(), LinkError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let addr = node.cluster_addr_of(member)?;
    let client = node
        .inner
        .peers
        .client(&addr)
        .map_err(|e| failed(member, e))?;
    match tokio::time::timeout(transfer_timeout(), call(client)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(failed(member, e.message())),
        Err(_) => Err(failed(member, "timed out")),
    }
}

impl ClusterLink for ClusterNode {
    fn local_name(&self) -> &str {
        &self.inner.settings.name
    }

    fn ring(&self) -> watch::Receiver<Arc<Ring>> {
        self.inner.ring.subscribe()
    }

    fn sampling_override(&self) -> watch::Receiver<Option<f64>> {
        self.inner.sampling.subscribe()
    }

    fn fenced(&self) -> watch::Receiver<bool> {
        self.inner.fenced.subscribe()
    }

    fn forward(
        &self,
        owner: &str,
        epoch: u64,
        hops: u32,
        spans: &[EncodedSpan],
    ) -> BoxFuture<'static, Result<(), LinkError>> {
        let node = self.clone();
        let owner = owner.to_string();
        let req = transfer::forward_request(&node.inner.settings.name, epoch, hops, spans);
        Box::pin(async move {
            call_member(&node, &owner, |mut c| async move { c.forward(req).await }).await
        })
    }

    fn replication_factor(&self) -> u8 {
        self.inner.settings.replication_factor
    }

    fn replicate(
        &self,
        replica: &str,
        epoch: u64,
        spans: &[&EncodedSpan],
        traces: &[TraceTransfer],
        decisions: &[DecisionTransfer],
    ) -> BoxFuture<'static, Result<(), LinkError>> {
        let node = self.clone();
        let replica = replica.to_string();
        let req =
            transfer::replicate_request(&node.inner.settings.name, epoch, spans, traces, decisions);
        Box::pin(async move {
            call_member(
                &node,
                &replica,
                |mut c| async move { c.replicate(req).await },
            )
            .await
        })
    }

    fn hand_off(
        &self,
        owner: &str,
        epoch: u64,
        traces: Vec<TraceTransfer>,
        decisions: Vec<DecisionTransfer>,
    ) -> BoxFuture<'static, Result<(), HandoffFailed>> {
        let node = self.clone();
        let owner = owner.to_string();
        Box::pin(async move {
            let fail =
                |traces: Vec<TraceTransfer>, error: LinkError| HandoffFailed { error, traces };
            let addr = match node.cluster_addr_of(&owner) {
                Ok(a) => a,
                Err(e) => return Err(fail(traces, e)),
            };
            let mut client = match node.inner.peers.client(&addr) {
                Ok(c) => c,
                Err(e) => return Err(fail(traces, failed(&owner, e))),
            };
            let req =
                transfer::handoff_request(&node.inner.settings.name, epoch, &traces, &decisions);
            let spans: u64 = traces.iter().map(|t| t.spans.len() as u64).sum();
            match tokio::time::timeout(transfer_timeout(), client.handoff(req)).await {
                Ok(Ok(_)) => {
                    metrics::counter!(crate::CLUSTER_HANDOFF_SENT_TRACES)
                        .increment(traces.len() as u64);
                    metrics::counter!(crate::CLUSTER_HANDOFF_SENT_SPANS).increment(spans);
                    metrics::counter!(crate::CLUSTER_HANDOFF_SENT_DECISIONS)
                        .increment(decisions.len() as u64);
                    Ok(())
                }
                Ok(Err(e)) => Err(fail(traces, failed(&owner, e.message()))),
                Err(_) => Err(fail(traces, failed(&owner, "timed out"))),
            }
        })
    }
}
