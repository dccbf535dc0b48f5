//! [`ClusterNode`]: one gateway's membership in the cluster — bootstrap or join, the
//! leader's duties (activate joiners after a debounce, remove members that stopped
//! answering), leaving, and the [`ClusterLink`] the tail-sampling engine routes through.
//!
//! ## Lifecycle of a node
//!
//! ```text
//! start ─► serve Cluster gRPC ─► bootstrap: ask every --join peer (Discover)
//!     a peer is in a cluster ──► Join via its leader ─► Joining ─(leader, after debounce)─► Active
//!     I am the seed and every peer answered "no cluster" ─► initialize, Join + Activate myself
//! SIGTERM ─► Leave (Leaving, new epoch) ─► engine hands everything off ─► Remove ─► exit
//! ```
//!
//! **The bootstrap rule:** only the *seed* — the lexicographically smallest address of the
//! `--join` list, when it is this node's `--advertise` address — may initialize a cluster,
//! and only after every other listed peer answered that it belongs to none. A node whose
//! peers are in a cluster joins it. So one `--join` list can never yield two clusters:
//! a second cluster would need a second seed, or a seed that got "no cluster" from peers that
//! are in one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::future::join_all;
use openraft::{BasicNode, ChangeMembers, Config};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tailgate_otlp::EncodedSpan;
use tailgate_pipeline::cluster::{ClusterLink, HandoffFailed, LinkError};
use tailgate_pipeline::consumer::BoxFuture;
use tailgate_pipeline::sampling::TailSamplingStage;
use tailgate_ring::{Applied, ClusterState, Command, Member, MemberState, Ring, SamplingOverride};
use tailgate_sampling::{DecisionTransfer, TraceTransfer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::network::{Peers, RaftNetwork};
use crate::proto::{
    AdminReply, ClearSamplingRequest, DiscoverReply, DiscoverRequest, JoinRequest, LeaveRequest,
    NodeStatus, NodeStatusRequest, SetSamplingRequest,
};
use crate::raft::{LogStore, Raft, Rt, StateMachine};
use crate::transfer;

/// Most voters; further members are learners (they still own ranges).
pub const VOTERS_MAX: usize = 5;
/// How often the leader checks members and pending activations.
const LEADER_TICK: Duration = Duration::from_millis(100);
/// How often the leader pings each member.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Per-call timeout of cluster RPCs other than forward/handoff.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A node fenced this long (no peer answered) decides on its own again.
pub const FENCE_MAX: Duration = Duration::from_secs(30);
/// Timeout of one forward or handoff call.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forward/handoff receiver waits to catch up to the sender's epoch.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Cluster settings of one gateway (from flags or the config's `cluster` section).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Stable member name (the pod name); what the ring places.
    pub name: String,
    /// Cluster address other gateways reach this one at.
    pub advertise: String,
    /// OTLP gRPC address agents reach this gateway at.
    pub otlp_advertise: String,
    /// Peers' cluster addresses, possibly including this node's own.
    pub join: Vec<String>,
    /// A member that answers no ping for this long is removed by the leader.
    pub member_timeout: Duration,
    /// Joins within this window become Active together (one ring change).
    pub ring_debounce: Duration,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Seeds the Raft id and every random delay.
    pub seed: u64,
}

impl ClusterSettings {
    pub fn new(name: &str, advertise: &str, otlp_advertise: &str, join: Vec<String>) -> Self {
        ClusterSettings {
            name: name.to_string(),
            advertise: advertise.to_string(),
            otlp_advertise: otlp_advertise.to_string(),
            join,
            member_timeout: Duration::from_secs(3),
            ring_debounce: Duration::from_millis(500),
            // Generous for a busy gateway: a node starved of CPU by a traffic burst must not
            // start elections; failover still takes well under a second.
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            seed: 0,
        }
    }

    /// Whether this node may initialize a new cluster (see the module docs).
    pub fn is_seed(&self) -> bool {
        self.join
            .iter()
            .min()
            .is_none_or(|first| *first == self.advertise)
    }
}

/// Source of wall-clock time (Unix ms) for override expiry; the simulator replaces it.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_wall_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

pub(crate) struct NodeInner {
    pub settings: ClusterSettings,
    pub raft_id: u64,
    pub raft: Raft,
    pub state: watch::Receiver<Arc<ClusterState>>,
    pub ring: watch::Sender<Arc<Ring>>,
    pub sampling: watch::Sender<Option<f64>>,
    pub fenced: watch::Sender<bool>,
    pub peers: Peers,
    /// Weak: the engine holds this node (its `ClusterLink`), so a strong reference would be a
    /// cycle that kept every stopped gateway's node, Raft and buffers alive (the simulator's
    /// sweeps grew by ~1 MB per run). The pipeline service owns the engine.
    pub engine: OnceLock<Weak<TailSamplingStage>>,
    pub wall_clock: WallClock,
    pub leaving: AtomicBool,
    /// Serializes membership changes on the leader (Raft takes one at a time).
    membership: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    rng: Mutex<StdRng>,
}

/// A gateway's membership in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    pub(crate) inner: Arc<NodeInner>,
}

fn admin_ok(epoch: u64) -> AdminReply {
    AdminReply {
        ok: true,
        epoch,
        ..Default::default()
    }
}

fn admin_err(message: impl ToString) -> AdminReply {
    AdminReply {
        ok: false,
        message: message.to_string(),
        ..Default::default()
    }
}

impl ClusterNode {
    /// Creates the Raft node and the background tasks; call [`ClusterNode::serve`] (or
    /// serve [`crate::server::services`] yourself), then [`ClusterNode::run`].
    pub async fn new(
        settings: ClusterSettings,
        peers: Peers,
        wall_clock: WallClock,
    ) -> anyhow::Result<ClusterNode> {
        let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x5eed_c1a5_7e00_0001);
        // Fresh for every incarnation (see `raft` module docs); never 0.
        let raft_id = rng.random_range(1..u64::MAX);
        let config = Config {
            cluster_name: "tailgate".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout.0.as_millis() as u64,
            election_timeout_max: settings.election_timeout.1.as_millis() as u64,
            ..Default::default()
        }
        .validate()?;
        let (sm, state) = StateMachine::new();
        let network = RaftNetwork {
            peers: peers.clone(),
        };
        let raft = Rt::scope(
            settings.seed,
            Raft::new(raft_id, Arc::new(config), network, LogStore::default(), sm),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start Raft: {e}"))?;
        let (ring, _) = watch::channel(Arc::new(Ring::empty()));
        let (sampling, _) = watch::channel(None);
        let (fenced, _) = watch::channel(false);
        Ok(ClusterNode {
            inner: Arc::new(NodeInner {
                settings,
                raft_id,
                raft,
                state,
                ring,
                sampling,
                fenced,
                peers,
                engine: OnceLock::new(),
                wall_clock,
                leaving: AtomicBool::new(false),
                membership: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
                rng: Mutex::new(rng),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.settings.name
    }

    pub fn raft_id(&self) -> u64 {
        self.inner.raft_id
    }

    pub fn link(&self) -> Arc<dyn ClusterLink> {
        Arc::new(self.clone())
    }

    /// The engine forwarded spans and handoffs are delivered to.
    pub fn attach(&self, engine: Arc<TailSamplingStage>) {
        let _ = self.inner.engine.set(Arc::downgrade(&engine));
    }

    /// The engine, while the pipeline service that owns it runs.
    pub fn engine(&self) -> Option<Arc<TailSamplingStage>> {
        self.inner.engine.get().and_then(Weak::upgrade)
    }

    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.inner.state.borrow())
    }

    pub fn ring_now(&self) -> Arc<Ring> {
        Arc::clone(&self.inner.ring.borrow())
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.inner.tasks.lock().expect("not poisoned").push(handle);
    }

    fn jitter(&self, max: Duration) -> Duration {
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(
            self.inner
                .rng
                .lock()
                .expect("not poisoned")
                .random_range(0..ms),
        )
    }

    /// Starts the background work: deriving ring and override from the replicated state,
    /// the leader's duties, and bootstrapping or joining.
    pub fn run(&self) {
        self.spawn(derive_views(self.clone()));
        self.spawn(leader_duties(self.clone()));
        self.spawn(bootstrap(self.clone()));
        self.spawn(rejoin_watch(self.clone()));
    }

    pub fn is_member(&self) -> bool {
        self.inner
            .state
            .borrow()
            .members
            .contains_key(&self.inner.raft_id)
    }

    /// The leader's Raft id and cluster address, when known.
    pub async fn leader(&self) -> Option<(u64, String)> {
        let id = self.inner.raft.current_leader().await?;
        let addr = if id == self.inner.raft_id {
            self.inner.settings.advertise.clone()
        } else {
            self.inner
                .state
                .borrow()
                .members
                .get(&id)?
                .cluster_addr
                .clone()
        };
        Some((id, addr))
    }

    /// The leader this node knows of right now (no waiting; for observers like the simulator).
    pub fn leader_now(&self) -> Option<u64> {
        use openraft_rt::watch::WatchReceiver as _;
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    fn is_leader(&self) -> bool {
        self.inner.raft.as_leader().is_ok()
    }

    /// Appends a command through Raft (this node must lead).
    async fn write(&self, cmd: Command) -> Result<Applied, String> {
        self.inner
            .raft
            .client_write(cmd)
            .await
            .map(|r| r.response().clone())
            .map_err(|e| e.to_string())
    }

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
            members: state.members.keys().copied().collect(),
        }
    }

    /// Runs `local` if this node leads, otherwise returns a reply pointing at the leader.
    async fn not_leader_reply(&self) -> Option<AdminReply> {
        if self.is_leader() {
            return None;
        }
        let hint = self.leader().await.map(|(_, a)| a).unwrap_or_default();
        Some(AdminReply {
            ok: false,
            message: "not the leader".into(),
            leader_addr: hint,
            epoch: self.inner.state.borrow().epoch,
        })
    }

    /// Leader: adds a member (learner first, so it catches up before it votes or owns).
    pub async fn handle_join(&self, req: JoinRequest) -> AdminReply {
        if let Some(r) = self.not_leader_reply().await {
            return r;
        }
        let _one_change_at_a_time = self.inner.membership.lock().await;
        let raft = &self.inner.raft;
        let node = BasicNode {
            addr: req.cluster_addr.clone(),
        };
        if let Err(e) = raft.add_learner(req.raft_id, node, true).await {
            return admin_err(format!("cannot add {} as learner: {e}", req.name));
        }
        // An older incarnation of the same name leaves Raft's membership with it.
        let old: Vec<u64> = self
            .state()
            .members
            .values()
            .filter(|m| m.name == req.name && m.raft_id != req.raft_id)
            .map(|m| m.raft_id)
            .collect();
        for id in old {
            if let Err(e) = self.remove_from_raft(id).await {
                return admin_err(format!(
                    "cannot remove the old incarnation of {}: {e}",
                    req.name
                ));
            }
        }
        let member = Member {
            name: req.name,
            raft_id: req.raft_id,
            cluster_addr: req.cluster_addr,
            otlp_addr: req.otlp_addr,
            state: MemberState::Joining,
        };
        match self.write(Command::Join(member)).await {
            Ok(Applied::Refused { reason }) => return admin_err(reason),
            Err(e) => return admin_err(e),
            Ok(_) => {}
        }
        if raft.voter_ids().count() < VOTERS_MAX {
            let add = ChangeMembers::AddVoterIds(BTreeSet::from([req.raft_id]));
            if let Err(e) = raft.change_membership(add, false).await {
                tracing::warn!(error = %e, "cannot promote the new member to voter; it stays a learner");
            }
        }
        admin_ok(self.inner.state.borrow().epoch)
    }

    async fn remove_from_raft(&self, raft_id: u64) -> Result<(), String> {
        let raft = &self.inner.raft;
        if raft.voter_ids().all(|v| v == raft_id) {
            // The last voter: the cluster ends with it; Raft cannot have an empty membership.
            return Ok(());
        }
        let change = if raft.voter_ids().any(|v| v == raft_id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([raft_id]))
        } else if raft.learner_ids().any(|v| v == raft_id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([raft_id]))
        } else {
            return Ok(());
        };
        raft.change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Leader: a member starts leaving (`remove = false`) or is gone (`remove = true`).
    pub async fn handle_leave(&self, req: LeaveRequest) -> AdminReply {
        if let Some(r) = self.not_leader_reply().await {
            return r;
        }
        let _one_change_at_a_time = self.inner.membership.lock().await;
        if req.remove {
            if let Err(e) = self.remove_from_raft(req.raft_id).await {
                return admin_err(format!("cannot remove {} from Raft: {e}", req.raft_id));
            }
            self.promote_learners().await;
            match self
                .write(Command::Remove {
                    raft_id: req.raft_id,
                })
                .await
            {
                Ok(a) => admin_ok(applied_epoch(&a)),
                Err(e) => admin_err(e),
            }
        } else {
            match self
                .write(Command::Leave {
                    raft_id: req.raft_id,
                })
                .await
            {
                Ok(a) => admin_ok(applied_epoch(&a)),
                Err(e) => admin_err(e),
            }
        }
    }

    /// Keeps up to [`VOTERS_MAX`] voters when members left.
    async fn promote_learners(&self) {
        let raft = &self.inner.raft;
        let voters = raft.voter_ids().count();
        let learners: Vec<u64> = raft.learner_ids().collect();
        let promote: BTreeSet<u64> = learners
            .into_iter()
            .take(VOTERS_MAX.saturating_sub(voters))
            .collect();
        if !promote.is_empty()
            && let Err(e) = raft
                .change_membership(ChangeMembers::AddVoterIds(promote), false)
                .await
        {
            tracing::warn!(error = %e, "cannot promote learners");
        }
    }

    pub async fn handle_set_sampling(&self, req: SetSamplingRequest) -> AdminReply {
        if !(0.0..=100.0).contains(&req.probabilistic_percent) {
            return admin_err(format!(
                "probabilistic percent must be within 0..=100, got {}",
                req.probabilistic_percent
            ));
        }
        if req.duration_ms == 0 {
            return admin_err("duration must be positive");
        }
        let cmd = Command::SetSampling(SamplingOverride {
            probabilistic_percent: req.probabilistic_percent,
            expires_unix_ms: (self.inner.wall_clock)().saturating_add(req.duration_ms),
        });
        self.admin_write(cmd).await
    }

    pub async fn handle_clear_sampling(&self, _req: ClearSamplingRequest) -> AdminReply {
        self.admin_write(Command::ClearSampling).await
    }

    /// Writes an operator's command through the leader, wherever it was received.
    async fn admin_write(&self, cmd: Command) -> AdminReply {
        if self.is_leader() {
            return match self.write(cmd).await {
                Ok(a) => admin_ok(applied_epoch(&a)),
                Err(e) => admin_err(e),
            };
        }
        let Some((_, addr)) = self.leader().await else {
            return admin_err("the cluster has no leader right now; retry");
        };
        let mut client = match self.inner.peers.client(&addr) {
            Ok(c) => c,
            Err(e) => return admin_err(e.message()),
        };
        let call = async {
            match cmd {
                Command::SetSampling(o) => {
                    let now = (self.inner.wall_clock)();
                    client
                        .set_sampling(SetSamplingRequest {
                            probabilistic_percent: o.probabilistic_percent,
                            duration_ms: o.expires_unix_ms.saturating_sub(now),
                        })
                        .await
                }
                _ => client.clear_sampling(ClearSamplingRequest {}).await,
            }
        };
        match tokio::time::timeout(ADMIN_TIMEOUT, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => admin_err(format!("leader at {addr}: {}", e.message())),
            Err(_) => admin_err(format!("leader at {addr} did not answer")),
        }
    }

    /// This node's buffers.
    pub async fn node_status(&self) -> NodeStatus {
        let buffered = match self.engine() {
            Some(e) => e.status().await,
            None => Default::default(),
        };
        let state = self.state();
        NodeStatus {
            name: self.inner.settings.name.clone(),
            epoch: state.epoch,
            buffered_traces: buffered.traces + buffered.in_flight,
            buffered_spans: buffered.spans,
            buffered_bytes: buffered.bytes,
            state: state
                .members
                .get(&self.inner.raft_id)
                .map_or("not a member", |m| m.state.label())
                .to_string(),
        }
    }

    /// Waits until this node has applied `epoch` (or the timeout passed).
    pub async fn catch_up(&self, epoch: u64) {
        let mut ring = self.inner.ring.subscribe();
        let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, ring.wait_for(|r| r.epoch() >= epoch)).await;
    }

    /// Calls the leader (following hints) until `f` succeeds or `deadline`.
    async fn call_leader<F, Fut>(&self, deadline: Instant, f: F) -> Result<AdminReply, String>
    where
        F: Fn(crate::proto::cluster_client::ClusterClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<AdminReply>, tonic::Status>>,
    {
        let mut last = String::from("no leader known");
        while Instant::now() < deadline {
            let target = self.leader().await.map(|(_, addr)| addr);
            if let Some(addr) = target
                && let Ok(client) = self.inner.peers.client(&addr)
            {
                match tokio::time::timeout(ADMIN_TIMEOUT, f(client)).await {
                    Ok(Ok(r)) if r.get_ref().ok => return Ok(r.into_inner()),
                    Ok(Ok(r)) => last = r.into_inner().message,
                    Ok(Err(e)) => last = e.message().to_string(),
                    Err(_) => last = format!("{addr} did not answer"),
                }
            }
            tokio::time::sleep(
                Duration::from_millis(100) + self.jitter(Duration::from_millis(100)),
            )
            .await;
        }
        Err(last)
    }

    /// Graceful leave, step one: hand leadership to another voter if this node leads, and
    /// mark this node Leaving (a new epoch without it). Returns once this node applied
    /// that epoch, so its engine is already handing its traces off.
    pub async fn start_leaving(&self, deadline: Instant) -> Result<(), String> {
        self.inner.leaving.store(true, Ordering::Release);
        if !self.is_member() {
            return Ok(());
        }
        self.step_down(deadline).await;
        let raft_id = self.inner.raft_id;
        let reply = self
            .call_leader(deadline, |mut c| async move {
                c.leave(LeaveRequest {
                    raft_id,
                    remove: false,
                })
                .await
            })
            .await?;
        self.catch_up(reply.epoch).await;
        Ok(())
    }

    /// Graceful leave, last step: remove this node from the cluster.
    pub async fn finish_leaving(&self, deadline: Instant) -> Result<(), String> {
        if !self.is_member() {
            return Ok(());
        }
        self.step_down(deadline).await;
        let raft_id = self.inner.raft_id;
        self.call_leader(deadline, |mut c| async move {
            c.leave(LeaveRequest {
                raft_id,
                remove: true,
            })
            .await
        })
        .await
        .map(|_| ())
    }

    /// If this node leads and another voter exists, transfers leadership to it.
    async fn step_down(&self, deadline: Instant) {
        let raft = &self.inner.raft;
        if !self.is_leader() {
            return;
        }
        let Some(to) = raft.voter_ids().find(|v| *v != self.inner.raft_id) else {
            return;
        };
        if let Err(e) = raft.trigger().transfer_leader(to).await {
            tracing::warn!(error = %e, "cannot transfer leadership");
            return;
        }
        while self.is_leader() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops Raft and the background tasks.
    pub async fn shutdown(&self) {
        for t in self.inner.tasks.lock().expect("not poisoned").drain(..) {
            t.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }
}

fn applied_epoch(a: &Applied) -> u64 {
    match a {
        Applied::Changed { epoch } | Applied::Unchanged { epoch } => *epoch,
        Applied::Refused { .. } => 0,
    }
}

/// Publishes the ring whenever the epoch changes, and the sampling override in force
/// (re-evaluated at its expiry).
async fn derive_views(node: ClusterNode) {
    let mut state = node.inner.state.clone();
    loop {
        let (ring, percent, expires) = {
            let s = state.borrow_and_update();
            let now = (node.inner.wall_clock)();
            let expires = s
                .sampling
                .as_ref()
                .map(|o| o.expires_unix_ms)
                .filter(|e| *e > now)
                .map(|e| Duration::from_millis(e - now));
            (
                // Never backwards: a ring learned from peers (see `rejoin_watch`) may be newer.
                (s.epoch > node.inner.ring.borrow().epoch()).then(|| s.ring()),
                s.sampling_percent(now),
                expires,
            )
        };
        if let Some(ring) = ring {
            tracing::info!(epoch = ring.epoch(), owners = ?ring.owners(), "ring changed");
            metrics::gauge!(crate::CLUSTER_EPOCH).set(ring.epoch() as f64);
            metrics::gauge!(crate::CLUSTER_OWNERS).set(ring.owners().len() as f64);
            node.inner.ring.send_replace(Arc::new(ring));
        }
        node.inner.sampling.send_if_modified(|p| {
            let changed = *p != percent;
            *p = percent;
            changed
        });
        let wait = expires.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
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
            tokio::time::timeout(ADMIN_TIMEOUT, c.discover(DiscoverRequest {}))
                .await
                .ok()?
                .ok()
                .map(|r| r.into_inner())
        }
    }))
    .await
}

/// Joins an existing cluster through any `--join` peer, or initializes one if this node is
/// the seed and every peer answered that it is in none.
async fn bootstrap(node: ClusterNode) {
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
                    Duration::from_secs(5),
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
        tokio::time::sleep(Duration::from_millis(200) + node.jitter(Duration::from_millis(300)))
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
/// partition; its traces go to their owners once it is back. After [`FENCE_MAX`] alone it
/// decides again (a node whose peers all died must not hold traces forever).
async fn rejoin_watch(node: ClusterNode) {
    const PERIOD: Duration = Duration::from_secs(1);
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
        tokio::time::sleep(PERIOD + node.jitter(Duration::from_millis(200))).await;
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
            set_fenced(silent >= node.inner.settings.member_timeout && silent < FENCE_MAX);
        }
        let newest = answers
            .into_iter()
            .flatten()
            .filter(|a| {
                a.in_cluster && (a.epoch > state.epoch || !member) && !a.members.contains(&me)
            })
            .max_by_key(|a| a.epoch);
        let Some(newer) = newest else { continue };
        tracing::warn!(
            epoch = newer.epoch,
            "removed from the cluster while unreachable; routing by the newer ring and rejoining"
        );
        metrics::counter!(crate::CLUSTER_REJOINS).increment(1);
        let ring = Ring::new(newer.epoch, newer.owners.clone());
        node.inner.ring.send_if_modified(|r| {
            let newer = ring.epoch() > r.epoch();
            if newer {
                *r = Arc::new(ring);
            }
            newer
        });
        if !newer.leader_addr.is_empty()
            && let Err(e) = join_via(&node, &newer.leader_addr).await
        {
            tracing::info!(error = %e, "rejoin not accepted yet; retrying");
        }
    }
}

async fn join_via(node: &ClusterNode, leader: &str) -> Result<(), String> {
    let s = &node.inner.settings;
    let mut target = leader.to_string();
    for _ in 0..3 {
        let mut c = node
            .inner
            .peers
            .client(&target)
            .map_err(|e| e.to_string())?;
        let req = JoinRequest {
            name: s.name.clone(),
            raft_id: node.inner.raft_id,
            cluster_addr: s.advertise.clone(),
            otlp_addr: s.otlp_advertise.clone(),
        };
        // Adding a learner waits for it to catch up: allow more than an admin call.
        let reply = tokio::time::timeout(Duration::from_secs(10), c.join(req))
            .await
            .map_err(|_| format!("{target} did not answer"))?
            .map_err(|e| e.message().to_string())?
            .into_inner();
        if reply.ok {
            return Ok(());
        }
        if reply.leader_addr.is_empty() || reply.leader_addr == target {
            return Err(reply.message);
        }
        target = reply.leader_addr;
    }
    Err("leader kept moving".into())
}

async fn initialize(node: &ClusterNode) -> Result<(), String> {
    let s = &node.inner.settings;
    let raft = &node.inner.raft;
    let me = node.inner.raft_id;
    let members = BTreeMap::from([(
        me,
        BasicNode {
            addr: s.advertise.clone(),
        },
    )]);
    raft.initialize(members).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.is_leader() {
        if Instant::now() > deadline {
            return Err("not elected after initializing".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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

/// The leader's periodic work: activate joiners after the debounce; remove members that
/// answered no ping for `member_timeout`.
async fn leader_duties(node: ClusterNode) {
    let s = node.inner.settings.clone();
    let mut joining_since: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut last_ok: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut next_health = Instant::now();
    loop {
        tokio::time::sleep(LEADER_TICK).await;
        if !node.is_leader() || node.inner.leaving.load(Ordering::Acquire) {
            joining_since.clear();
            last_ok.clear();
            continue;
        }
        let now = Instant::now();
        let state = node.state();

        // Activation: every Joining member together, once the newest waited the debounce
        // (or the oldest waited twice that), so a burst of joins is one ring change.
        joining_since.retain(|id, _| {
            state
                .members
                .get(id)
                .is_some_and(|m| m.state == MemberState::Joining)
        });
        for m in state
            .members
            .values()
            .filter(|m| m.state == MemberState::Joining)
        {
            joining_since.entry(m.raft_id).or_insert(now);
        }
        if !joining_since.is_empty() {
            let newest = joining_since.values().max().copied().unwrap_or(now);
            let oldest = joining_since.values().min().copied().unwrap_or(now);
            if now.duration_since(newest) >= s.ring_debounce
                || now.duration_since(oldest) >= 2 * s.ring_debounce
            {
                let ids: Vec<u64> = joining_since.keys().copied().collect();
                match node.write(Command::Activate { raft_ids: ids }).await {
                    Ok(a) => tracing::info!(result = %a, "activated joining members"),
                    Err(e) => tracing::warn!(error = %e, "cannot activate joining members"),
                }
            }
        }

        // Health: ping every other member; remove those silent for member_timeout.
        if now < next_health {
            continue;
        }
        next_health = now + HEALTH_INTERVAL;
        let others: Vec<Member> = state
            .members
            .values()
            .filter(|m| m.raft_id != node.inner.raft_id)
            .cloned()
            .collect();
        last_ok.retain(|id, _| state.members.contains_key(id));
        let pings = join_all(others.iter().map(|m| {
            let peers = node.inner.peers.clone();
            let addr = m.cluster_addr.clone();
            async move {
                let Ok(mut c) = peers.client(&addr) else {
                    return false;
                };
                matches!(
                    tokio::time::timeout(HEALTH_INTERVAL, c.node_status(NodeStatusRequest {}))
                        .await,
                    Ok(Ok(_))
                )
            }
        }))
        .await;
        for (m, ok) in others.iter().zip(pings) {
            let seen = last_ok.entry(m.raft_id).or_insert(now);
            if ok {
                *seen = now;
            } else if now.duration_since(*seen) >= s.member_timeout {
                tracing::warn!(member = %m.name, raft_id = m.raft_id, "member stopped answering; removing it (its buffered traces are lost)");
                metrics::counter!(crate::CLUSTER_MEMBERS_REMOVED, "reason" => "timeout")
                    .increment(1);
                let reply = node
                    .handle_leave(LeaveRequest {
                        raft_id: m.raft_id,
                        remove: true,
                    })
                    .await;
                if !reply.ok {
                    tracing::warn!(member = %m.name, error = %reply.message, "cannot remove member");
                }
            }
        }
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
            let addr = node
                .state()
                .member_by_name(&owner)
                .map(|m| m.cluster_addr.clone())
                .ok_or_else(|| LinkError::UnknownMember(owner.clone()))?;
            let failed = |message: String| LinkError::Failed {
                member: owner.clone(),
                message,
            };
            let mut client = node
                .inner
                .peers
                .client(&addr)
                .map_err(|e| failed(e.to_string()))?;
            match tokio::time::timeout(TRANSFER_TIMEOUT, client.forward(req)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(failed(e.message().to_string())),
                Err(_) => Err(failed("timed out".into())),
            }
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
            let Some(addr) = node
                .state()
                .member_by_name(&owner)
                .map(|m| m.cluster_addr.clone())
            else {
                return Err(fail(traces, LinkError::UnknownMember(owner.clone())));
            };
            let failed = |message: String| LinkError::Failed {
                member: owner.clone(),
                message,
            };
            let mut client = match node.inner.peers.client(&addr) {
                Ok(c) => c,
                Err(e) => return Err(fail(traces, failed(e.to_string()))),
            };
            let req =
                transfer::handoff_request(&node.inner.settings.name, epoch, &traces, &decisions);
            let spans: u64 = traces.iter().map(|t| t.spans.len() as u64).sum();
            match tokio::time::timeout(TRANSFER_TIMEOUT, client.handoff(req)).await {
                Ok(Ok(_)) => {
                    metrics::counter!(crate::CLUSTER_HANDOFF_SENT_TRACES)
                        .increment(traces.len() as u64);
                    metrics::counter!(crate::CLUSTER_HANDOFF_SENT_SPANS).increment(spans);
                    metrics::counter!(crate::CLUSTER_HANDOFF_SENT_DECISIONS)
                        .increment(decisions.len() as u64);
                    Ok(())
                }
                Ok(Err(e)) => Err(fail(traces, failed(e.message().to_string()))),
                Err(_) => Err(fail(traces, failed("timed out".into()))),
            }
        })
    }
}
