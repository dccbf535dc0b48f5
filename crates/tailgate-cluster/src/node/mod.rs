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
//!
//! ## Rooms
//!
//! - this file: settings, the node's state, lifecycle (start, views of the replicated state,
//!   shutdown);
//! - [`membership`]: discovery, bootstrap, join and rejoin (what any node does to be a member);
//! - [`leader`]: the leader's duties (admit, activate, remove, keep voters);
//! - [`admin`]: operators' writes (the sampling override) and status;
//! - [`leaving`]: a graceful leave, through whoever leads;
//! - [`link`]: the data plane the engine calls (forward, hand off).
//!
//! **Direction of calls:** the engine calls the node only through [`ClusterLink`]; the node
//! delivers to the engine only through [`Delivery`], attached after both exist.

mod admin;
mod leader;
mod leaving;
mod link;
mod membership;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use openraft::Config;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tailgate_pipeline::cluster::ClusterLink;
use tailgate_ring::{Applied, ClusterState, Command, Ring};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::delivery::Delivery;
use crate::error::ClusterError;
use crate::network::{Peers, RaftNetwork};
use crate::raft::{LogStore, Raft, Rt, StateMachine};

/// Raft voters at most; further members are learners (they replicate, never vote).
pub const VOTERS_MAX: usize = 5;
/// How long a call to a peer's admin endpoints (discover, join replies, sampling) may take.
const ADMIN_TIMEOUT_MS: u64 = 2_000;
/// How long a forward or a handoff message may take to be acknowledged.
const TRANSFER_TIMEOUT_MS: u64 = 10_000;
/// How long a received forward or handoff waits for this node to apply the sender's epoch.
const CATCH_UP_TIMEOUT_MS: u64 = 2_000;
/// With no override expiring, how long the views task sleeps between state checks.
const VIEWS_IDLE_MS: u64 = 3_600_000;

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
    /// Copies of every buffered span: 1, or 2 (the owner and its ring successor; see
    /// docs/cluster.md, "Crash durability").
    pub replication_factor: u8,
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
            replication_factor: 1,
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
    pub delivery: OnceLock<Weak<dyn Delivery>>,
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
                delivery: OnceLock::new(),
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

    /// Where forwarded spans and handoffs are delivered: this gateway's sampling stage. Set
    /// once, after the pipeline that owns the stage started (it needed [`Self::link`]).
    pub fn attach(&self, delivery: Arc<dyn Delivery>) {
        let _ = self.inner.delivery.set(Arc::downgrade(&delivery));
    }

    /// The delivery target, while the pipeline service that owns it runs.
    pub fn delivery(&self) -> Option<Arc<dyn Delivery>> {
        self.inner.delivery.get().and_then(Weak::upgrade)
    }

    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.inner.state.borrow())
    }

    pub fn ring_now(&self) -> Arc<Ring> {
        Arc::clone(&self.inner.ring.borrow())
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.inner.tasks.lock().expect("not poisoned").push(handle);
    }

    /// A random delay below `max_ms`, from the node's seeded generator.
    fn jitter(&self, max_ms: u64) -> Duration {
        Duration::from_millis(
            self.inner
                .rng
                .lock()
                .expect("not poisoned")
                .random_range(0..max_ms.max(1)),
        )
    }

    /// Starts the background work: deriving ring and override from the replicated state,
    /// the leader's duties, and bootstrapping or joining.
    pub fn run(&self) {
        self.spawn(derive_views(self.clone()));
        self.spawn(leader::leader_duties(self.clone()));
        self.spawn(membership::bootstrap(self.clone()));
        self.spawn(membership::rejoin_watch(self.clone()));
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
    async fn write(&self, cmd: Command) -> Result<Applied, ClusterError> {
        self.inner
            .raft
            .client_write(cmd)
            .await
            .map(|r| r.response().clone())
            .map_err(ClusterError::raft)
    }

    /// Waits until this node has applied `epoch` (or the timeout passed).
    pub async fn catch_up(&self, epoch: u64) {
        let mut ring = self.inner.ring.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_millis(CATCH_UP_TIMEOUT_MS),
            ring.wait_for(|r| r.epoch() >= epoch),
        )
        .await;
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
///
/// Nothing is published before the state lists this incarnation: while a restarted gateway
/// replays the log, its old incarnation (same name, other Raft id) still owns ranges there,
/// and routing by those rings would make it decide traces whose spans its old self buffered
/// and lost — or that the members which took them over are deciding.
async fn derive_views(node: ClusterNode) {
    let mut state = node.inner.state.clone();
    let mut listed = false;
    loop {
        let (ring, percent, expires) = {
            let s = state.borrow_and_update();
            listed |= s.members.contains_key(&node.inner.raft_id);
            let now = (node.inner.wall_clock)();
            let expires = s
                .sampling
                .as_ref()
                .map(|o| o.expires_unix_ms)
                .filter(|e| *e > now)
                .map(|e| Duration::from_millis(e - now));
            (
                // Never backwards: a ring learned from peers (see `rejoin_watch`) may be newer.
                (listed && s.epoch > node.inner.ring.borrow().epoch()).then(|| s.ring()),
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
        let wait = expires.unwrap_or(Duration::from_millis(VIEWS_IDLE_MS));
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}
