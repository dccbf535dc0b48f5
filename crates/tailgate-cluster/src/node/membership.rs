//! What any node does to be a member: answer discovery, bootstrap (join a cluster or, as the
//! seed, initialize one), and rejoin after being removed while unreachable — the same probes
//! fence a node that hears from no peer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use openraft::BasicNode;
use tailgate_ring::{Command, Member, MemberState, Ring};
use tokio::time::Instant;

use super::{ADMIN_TIMEOUT_MS, ClusterNode};
use crate::error::ClusterError;
use crate::proto::{DiscoverReply, DiscoverRequest, JoinRequest};

/// Pause between bootstrap rounds, plus up to [`BOOTSTRAP_JITTER_MS`].
const BOOTSTRAP_RETRY_MS: u64 = 200;
const BOOTSTRAP_JITTER_MS: u64 = 300;
/// After a join was accepted, how long to wait for the state that lists this node.
const JOINED_STATE_WAIT_MS: u64 = 5_000;
/// How often members probe their peers, plus up to [`PROBE_JITTER_MS`].
const PROBE_INTERVAL_MS: u64 = 1_000;
const PROBE_JITTER_MS: u64 = 200;
/// A join call adds a learner and waits for it to catch up: more than an admin call.
const JOIN_TIMEOUT_MS: u64 = 10_000;
/// Leader hints a join follows before giving up this round.
const JOIN_REDIRECTS_MAX: usize = 3;
/// After initializing, how long this node may take to win its one-voter election.
const INITIAL_ELECTION_TIMEOUT_MS: u64 = 5_000;
const INITIAL_ELECTION_POLL_MS: u64 = 10;
/// A node alone this long decides again (see [`rejoin_watch`]).
pub const FENCE_MAX_MS: u64 = 30_000;

impl ClusterNode {
    /// The `Discover` answer: whether this node is in a cluster, and what it knows of it.
    pub async fn discover(&self) -> DiscoverReply {
        let leader = self.leader().await;
        let state = self.state();
        DiscoverReply {
            name: self.inner.settings.name.clone(),
            raft_id: self.inner.raft_id,
            // A member of a cluster that lost its leader is still in it: a seed must not
            // start a second cluster beside it.
            in_cluster: self.is_member(),
            epoch: state.epoch,
            leader_addr: leader.map(|(_, a)| a).unwrap_or_default(),
            owners: state.owners(),
            owner_raft_ids: state.owner_raft_ids(),
            members: state.members.keys().copied().collect(),
        }
    }
}

/// Asks every peer whether it is in a cluster (`None`: no answer within the timeout).
async fn discover_all(node: &ClusterNode, peers: &[String]) -> Vec<Option<DiscoverReply>> {
    join_all(peers.iter().map(|p| {
        let peers = node.inner.peers.clone();
        let p = p.clone();
        async move {
            let mut c = peers.client(&p).ok()?;
            tokio::time::timeout(
                Duration::from_millis(ADMIN_TIMEOUT_MS),
                c.discover(DiscoverRequest {}),
            )
            .await
            .ok()?
            .ok()
            .map(tonic::Response::into_inner)
        }
    }))
    .await
}

/// Joins an existing cluster through any `--join` peer, or initializes one if this node is
/// the seed and every peer answered that it is in none.
pub(super) async fn bootstrap(node: ClusterNode) {
    let s = node.inner.settings.clone();
    let peers: Vec<String> = s
        .join
        .iter()
        .filter(|p| **p != s.advertise)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    loop {
        if node.inner.leaving.load(Ordering::Acquire) {
            return;
        }
        if node.is_member() {
            tracing::info!(name = %s.name, raft_id = node.inner.raft_id, "member of the cluster");
            return;
        }
        let answers = discover_all(&node, &peers).await;
        let leader = answers
            .iter()
            .flatten()
            .find(|a| a.in_cluster && !a.leader_addr.is_empty())
            .map(|a| a.leader_addr.clone());
        if let Some(leader) = leader {
            if let Err(e) = join_via(&node, &leader).await {
                tracing::info!(%leader, error = %e, "join not accepted yet; retrying");
            } else {
                // Wait for the state that lists this node to arrive through the log.
                let mut state = node.inner.state.clone();
                let me = node.inner.raft_id;
                let _ = tokio::time::timeout(
                    Duration::from_millis(JOINED_STATE_WAIT_MS),
                    state.wait_for(|st| st.members.contains_key(&me)),
                )
                .await;
                continue;
            }
        } else if s.is_seed()
            && answers
                .iter()
                .all(|a| a.as_ref().is_some_and(|a| !a.in_cluster))
        {
            match initialize(&node).await {
                Ok(()) => continue,
                Err(e) => tracing::warn!(error = %e, "cannot initialize the cluster"),
            }
        } else {
            tracing::debug!(
                answered = answers.iter().flatten().count(),
                of = peers.len(),
                "waiting for peers before joining"
            );
        }
        tokio::time::sleep(
            Duration::from_millis(BOOTSTRAP_RETRY_MS) + node.jitter(BOOTSTRAP_JITTER_MS),
        )
        .await;
    }
}

/// A member cut off long enough is removed by the leader, but its own state still lists it:
/// it would go on owning ranges of an old epoch. So members ask their peers now and then;
/// a node that finds a newer epoch without itself routes by that ring at once (handing off
/// what it holds) and rejoins under the same Raft id (its vote history is intact).
///
/// The same probes fence the node: heard from no peer for `member_timeout` (it is probably
/// being removed), it stops deciding traces, so a trace is never decided on both sides of a
/// partition; its traces go to their owners once it is back. After [`FENCE_MAX_MS`] alone it
/// decides again (a node whose peers all died must not hold traces forever).
pub(super) async fn rejoin_watch(node: ClusterNode) {
    let mut silent_since: Option<Instant> = None;
    // Once a member, always trying to be one until this node leaves: a node whose own state
    // already shows its removal (it replicated the Remove before being cut off) must rejoin
    // too — it used to stop watching and stay outside the ring (I6, found by the simulator
    // under asymmetric and symmetric partitions).
    let mut was_member = false;
    let set_fenced = |f: bool| {
        node.inner.fenced.send_if_modified(|v| {
            let changed = *v != f;
            *v = f;
            changed
        });
    };
    loop {
        tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS) + node.jitter(PROBE_JITTER_MS))
            .await;
        let member = node.is_member();
        was_member |= member;
        if node.inner.leaving.load(Ordering::Acquire) || !was_member {
            silent_since = None;
            set_fenced(false);
            continue;
        }
        let state = node.state();
        let me = node.inner.raft_id;
        let peers: Vec<String> = state
            .members
            .values()
            .filter(|m| m.raft_id != me)
            .map(|m| m.cluster_addr.clone())
            .collect();
        let answers = discover_all(&node, &peers).await;
        let now = Instant::now();
        if peers.is_empty() || answers.iter().any(Option::is_some) {
            silent_since = None;
            set_fenced(false);
        } else {
            let since = *silent_since.get_or_insert(now);
            let silent = now.duration_since(since);
            set_fenced(
                silent >= node.inner.settings.member_timeout
                    && silent < Duration::from_millis(FENCE_MAX_MS),
            );
        }
        let newest = answers
            .into_iter()
            .flatten()
            .filter(|a| {
                a.in_cluster && (a.epoch > state.epoch || !member) && !a.members.contains(&me)
            })
            .max_by_key(|a| a.epoch);
        let Some(newer) = newest else { continue };
        rejoin(&node, newer).await;
    }
}

/// Routes by the newer ring a peer reported (this node is not in it) and asks its leader to
/// admit this node again.
async fn rejoin(node: &ClusterNode, newer: DiscoverReply) {
    tracing::warn!(
        epoch = newer.epoch,
        "removed from the cluster while unreachable; routing by the newer ring and rejoining"
    );
    metrics::counter!(crate::CLUSTER_REJOINS).increment(1);
    let incarnations = newer
        .owner_raft_ids
        .iter()
        .copied()
        .chain(std::iter::repeat(0));
    let ring = Ring::with_incarnations(newer.epoch, newer.owners.iter().cloned().zip(incarnations));
    node.inner.ring.send_if_modified(|r| {
        let newer = ring.epoch() > r.epoch();
        if newer {
            *r = Arc::new(ring);
        }
        newer
    });
    if !newer.leader_addr.is_empty()
        && let Err(e) = join_via(node, &newer.leader_addr).await
    {
        tracing::info!(error = %e, "rejoin not accepted yet; retrying");
    }
}

async fn join_via(node: &ClusterNode, leader: &str) -> Result<(), ClusterError> {
    let s = &node.inner.settings;
    let mut target = leader.to_string();
    for _ in 0..JOIN_REDIRECTS_MAX {
        let mut c = node
            .inner
            .peers
            .client(&target)
            .map_err(|e| ClusterError::peer(&target, e.message()))?;
        let req = JoinRequest {
            name: s.name.clone(),
            raft_id: node.inner.raft_id,
            cluster_addr: s.advertise.clone(),
            otlp_addr: s.otlp_advertise.clone(),
        };
        let reply = tokio::time::timeout(Duration::from_millis(JOIN_TIMEOUT_MS), c.join(req))
            .await
            .map_err(|_| ClusterError::timeout(&target, JOIN_TIMEOUT_MS))?
            .map_err(|e| ClusterError::peer(&target, e.message()))?
            .into_inner();
        if reply.ok {
            return Ok(());
        }
        if reply.leader_addr.is_empty() || reply.leader_addr == target {
            return Err(ClusterError::Refused(reply.message));
        }
        target = reply.leader_addr;
    }
    Err(ClusterError::LeaderMoving)
}

async fn initialize(node: &ClusterNode) -> Result<(), ClusterError> {
    let s = &node.inner.settings;
    let raft = &node.inner.raft;
    let me = node.inner.raft_id;
    let members = BTreeMap::from([(
        me,
        BasicNode {
            addr: s.advertise.clone(),
        },
    )]);
    raft.initialize(members).await.map_err(ClusterError::raft)?;
    let deadline = Instant::now() + Duration::from_millis(INITIAL_ELECTION_TIMEOUT_MS);
    while !node.is_leader() {
        if Instant::now() > deadline {
            return Err(ClusterError::NotElected);
        }
        tokio::time::sleep(Duration::from_millis(INITIAL_ELECTION_POLL_MS)).await;
    }
    tracing::info!(name = %s.name, raft_id = me, "initialized a new cluster");
    node.write(Command::Join(Member {
        name: s.name.clone(),
        raft_id: me,
        cluster_addr: s.advertise.clone(),
        otlp_addr: s.otlp_advertise.clone(),
        state: MemberState::Joining,
    }))
    .await?;
    node.write(Command::Activate { raft_ids: vec![me] }).await?;
    Ok(())
}
