//! Raft plumbing: the type config, the in-memory log store, and the state machine holding
//! [`ClusterState`].
//!
//! **Raft state lives in memory on purpose.** A restarted gateway joins as a new member under
//! a fresh Raft id (its old id is removed by the leader, or replaced when the new incarnation
//! joins under the same name). It therefore never votes twice in a term under one id, and a
//! StatefulSet needs no volume. The price: if every gateway restarts at once, the cluster
//! state (members, overrides) is rebuilt from scratch, which loses nothing that matters —
//! members rejoin and overrides are operator actions with an expiry anyway.
//!
//! The runtime is `DeterministicRng<TokioRuntime>`: openraft's election timeouts draw from a
//! seed (set with `Rt::scope` around `Raft::new`), so simulation runs are reproducible.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use openraft_rt::deterministic_rng::DeterministicRng;
use openraft_rt_tokio::TokioRuntime;
use tailgate_ring::{Applied, ClusterState, Command};
use tokio::sync::{Mutex, watch};

openraft::declare_raft_types!(
    /// Raft types of the gateway cluster: the log carries membership [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        AsyncRuntime = DeterministicRng<TokioRuntime>,
);

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
pub type Rt = DeterministicRng<TokioRuntime>;

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

pub fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .expect("encoding to a Vec cannot fail")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(invalid)
}

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;

#[derive(Default)]
struct LogInner {
    last_purged: Option<LogIdOf<TypeConfig>>,
    log: BTreeMap<u64, Entry>,
    committed: Option<LogIdOf<TypeConfig>>,
    vote: Option<VoteOf<TypeConfig>>,
}

/// The Raft log, in memory (see the module docs for why).
#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let inner = self.inner.lock().await;
        Ok(inner.log.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.inner.lock().await.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.inner.lock().await;
        let last = inner
            .log
            .values()
            .next_back()
            .map(RaftEntry::log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.inner.lock().await.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.inner.lock().await.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.inner.lock().await.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        for e in entries {
            inner.log.insert(e.index(), e);
        }
        // In memory, "flushed" is "stored".
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let mut inner = self.inner.lock().await;
        inner.log.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let mut inner = self.inner.lock().await;
        assert!(inner.last_purged <= Some(log_id), "purge goes forward");
        inner.last_purged = Some(log_id);
        let keep = inner.log.split_off(&(log_id.index() + 1));
        inner.log = keep;
        Ok(())
    }
}

/// What a snapshot holds: the cluster state at `meta.last_log_id`.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

struct SmInner {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    state: ClusterState,
    snapshot: Option<StoredSnapshot>,
}

/// The replicated [`ClusterState`]. Every applied change is published on a `watch`
/// channel; the node derives its ring and sampling override from it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
    publish: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl StateMachine {
    pub fn new() -> (StateMachine, watch::Receiver<Arc<ClusterState>>) {
        let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
        let sm = StateMachine {
            inner: Arc::new(Mutex::new(SmInner {
                last_applied: None,
                membership: Default::default(),
                state: ClusterState::default(),
                snapshot: None,
            })),
            publish: Arc::new(tx),
        };
        (sm, rx)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let mut inner = self.inner.lock().await;
        let data = encode(&inner.state);
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
        };
        inner.snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut changed = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            inner.last_applied = Some(entry.log_id);
            let reply = match &entry.payload {
                EntryPayload::Blank => Applied::Unchanged {
                    epoch: inner.state.epoch,
                },
                EntryPayload::Normal(cmd) => {
                    let r = inner.state.apply(cmd);
                    changed |= matches!(r, Applied::Changed { .. });
                    r
                }
                EntryPayload::Membership(m) => {
                    inner.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                    Applied::Unchanged {
                        epoch: inner.state.epoch,
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        if changed {
            self.publish.send_replace(Arc::new(inner.state.clone()));
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state: ClusterState = decode(&snapshot)?;
        let mut inner = self.inner.lock().await;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = state.clone();
        inner.snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        });
        self.publish.send_replace(Arc::new(state));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let inner = self.inner.lock().await;
        Ok(inner
            .snapshot
            .clone()
            .map(|s| SnapshotOf::<TypeConfig, Vec<u8>> {
                meta: s.meta,
                snapshot: s.data,
            }))
    }
}
