//! Following the gateways' ring: subscribe to `WatchRing` at one resolved endpoint (any
//! gateway serves it on its OTLP port), keep the newest epoch seen, and move to the next
//! endpoint when the stream ends. Endpoints that answer `UNIMPLEMENTED` are plain OTLP
//! backends; when all of them are, the agent hashes over the endpoints instead.
//!
//! **Newest epoch wins**, so a gateway that lags (or a stale one being shut down) cannot move
//! the agent back to an older ring. The one exception: a lower epoch reported continuously
//! for [`EPOCH_RESET_AFTER`] means the cluster was recreated from scratch (Raft state is in
//! memory), and the agent adopts it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tailgate_pipeline::net::Network;
use tailgate_proto::cluster::ring_watch_client::RingWatchClient;
use tailgate_proto::cluster::{RingUpdate, WatchRingRequest};
use tailgate_ring::Ring;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::routes::ClusterRing;
use crate::telemetry::*;

/// How long a lower epoch must be reported before the agent believes the cluster restarted.
pub const EPOCH_RESET_AFTER: Duration = Duration::from_secs(30);
/// Wait before trying the next endpoint after a stream ended or failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);
/// Wait before asking again when every endpoint is a plain OTLP backend.
const PLAIN_BACKEND_RECHECK: Duration = Duration::from_secs(30);

/// What the watcher knows.
#[derive(Debug, Clone, Default)]
pub struct RingState {
    pub ring: Option<ClusterRing>,
}

pub struct RingWatcher {
    pub state: watch::Receiver<RingState>,
    task: JoinHandle<()>,
}

impl Drop for RingWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn to_ring(u: &RingUpdate) -> ClusterRing {
    ClusterRing {
        ring: Arc::new(Ring::new(u.epoch, u.owners.iter().map(|o| o.name.clone()))),
        addrs: u
            .owners
            .iter()
            .map(|o| (o.name.clone(), o.otlp_addr.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Whether `update` replaces what is held (see the module docs). `lower_since` tracks how
/// long lower epochs have been reported.
pub fn accept_update(
    held: Option<u64>,
    update: u64,
    now: Instant,
    lower_since: &mut Option<Instant>,
) -> bool {
    match held {
        None => true,
        Some(h) if update >= h => {
            *lower_since = None;
            update > h
        }
        Some(_) => {
            let since = *lower_since.get_or_insert(now);
            if now.duration_since(since) >= EPOCH_RESET_AFTER {
                *lower_since = None;
                true
            } else {
                false
            }
        }
    }
}

/// Where `ep`'s ring is watched: its OTLP gRPC address, over TLS with `tls`. `None` when no
/// endpoint can be made of it (logged).
fn ring_endpoint(ep: &str, tls: Option<&ClientTlsConfig>) -> Option<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = crate::resolver::with_default_port(ep, crate::OTLP_GRPC_PORT);
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).ok()?;
    let endpoint = match tls {
        None => endpoint,
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| tracing::warn!(from = %ep, error = %e, "cannot watch the ring over TLS"))
            .ok()?,
    };
    Some(
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
    )
}

impl RingWatcher {
    /// With `tls` the endpoints are dialled over TLS with those settings, else in plaintext;
    /// `seed` picks the first endpoint.
    pub fn start(
        network: Arc<dyn Network>,
        mut endpoints: watch::Receiver<Vec<String>>,
        tls: Option<ClientTlsConfig>,
        seed: u64,
    ) -> RingWatcher {
        let (tx, rx) = watch::channel(RingState::default());
        let task = tokio::spawn(async move {
            let mut next = seed as usize;
            let mut lower_since: Option<Instant> = None;
            let mut plain: BTreeMap<String, ()> = BTreeMap::new();
            loop {
                let eps = endpoints.borrow_and_update().clone();
                if eps.is_empty() {
                    if endpoints.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                if eps.iter().all(|e| plain.contains_key(e)) {
                    tokio::select! {
                        () = tokio::time::sleep(PLAIN_BACKEND_RECHECK) => {}
                        r = endpoints.changed() => if r.is_err() { return },
                    }
                    plain.clear();
                    continue;
                }
                let ep = eps[next % eps.len()].clone();
                next = next.wrapping_add(1);
                if plain.contains_key(&ep) {
                    continue;
                }
                let Some(endpoint) = ring_endpoint(&ep, tls.as_ref()) else {
                    plain.insert(ep, ());
                    continue;
                };
                let mut client = RingWatchClient::new(network.channel(endpoint));
                let known = tx
                    .borrow()
                    .ring
                    .as_ref()
                    .map(|r| r.ring.epoch())
                    .unwrap_or(0);
                match client
                    .watch_ring(WatchRingRequest { known_epoch: known })
                    .await
                {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(update)) => {
                                    let held = tx.borrow().ring.as_ref().map(|r| r.ring.epoch());
                                    if accept_update(
                                        held,
                                        update.epoch,
                                        Instant::now(),
                                        &mut lower_since,
                                    ) {
                                        gauge!(ROUTING_EPOCH).set(update.epoch as f64);
                                        counter!(ROUTING_RING_UPDATES).increment(1);
                                        tracing::info!(epoch = update.epoch, owners = update.owners.len(), from = %ep, "routing by a new ring");
                                        tx.send_replace(RingState {
                                            ring: Some(to_ring(&update)),
                                        });
                                    }
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    tracing::debug!(from = %ep, %status, "ring stream ended");
                                    break;
                                }
                            }
                        }
                    }
                    Err(status) if status.code() == Code::Unimplemented => {
                        plain.insert(ep, ());
                        continue;
                    }
                    Err(status) => {
                        tracing::debug!(from = %ep, %status, "cannot subscribe to the ring");
                    }
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        });
        RingWatcher { state: rx, task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_epoch_wins_unless_a_lower_one_persists_past_the_reset_window() {
        let t0 = Instant::now();
        let mut since = None;
        assert!(accept_update(None, 3, t0, &mut since));
        assert!(accept_update(Some(3), 4, t0, &mut since));
        assert!(
            !accept_update(Some(4), 4, t0, &mut since),
            "same epoch: nothing new"
        );
        assert!(
            !accept_update(Some(4), 2, t0, &mut since),
            "a lagging gateway"
        );
        assert!(!accept_update(
            Some(4),
            2,
            t0 + Duration::from_secs(10),
            &mut since
        ));
        assert!(
            accept_update(Some(4), 2, t0 + EPOCH_RESET_AFTER, &mut since),
            "cluster recreated"
        );
        assert!(since.is_none());
        // A newer epoch in between resets the window.
        assert!(!accept_update(Some(4), 1, t0, &mut since));
        assert!(accept_update(
            Some(4),
            5,
            t0 + Duration::from_secs(1),
            &mut since
        ));
        assert!(!accept_update(
            Some(5),
            1,
            t0 + EPOCH_RESET_AFTER,
            &mut since
        ));
    }
}
