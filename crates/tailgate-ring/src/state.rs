//! [`ClusterState`]: what the gateways agree on through Raft, and the [`Command`]s that change
//! it. `apply` is a pure function of the state and the command, so every node that applies
//! the same log reaches the same state — and the same [`Ring`] for each epoch.
//!
//! ## Member states
//!
//! ```text
//!  Join ─► Joining ──Activate──► Active ──Leave──► Leaving ──Remove──► (gone)
//!             │                    │                                 ▲
//!             └────────────────────┴───────────Remove (crash)────────┘
//! ```
//!
//! Only Active members own ring ranges. The epoch increases exactly when the set of owners
//! changes, so "same epoch" means "same ring" on every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ring::Ring;

/// The most members a cluster holds; beyond this a join is refused (bounds every message
/// that lists members).
pub const MEMBERS_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// In the Raft group, not yet an owner.
    Joining,
    /// Owns ring ranges.
    Active,
    /// Handing its traces off; owns nothing.
    Leaving,
}

impl MemberState {
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
        }
    }
}

/// One gateway incarnation. `name` is stable across restarts (the pod name) and is what the
/// ring places; `raft_id` is fresh for every incarnation (Raft state is in memory, so a
/// restarted process must never vote under its old identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub raft_id: u64,
    /// Cluster gRPC address (Raft, forwarding, handoff, admin).
    pub cluster_addr: String,
    /// OTLP gRPC address agents send to (also serves `WatchRing`).
    pub otlp_addr: String,
    pub state: MemberState,
}

/// A runtime sampling override ("raise sampling during an incident").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingOverride {
    /// Traces the policies do not keep are kept at this percentage.
    pub probabilistic_percent: f64,
    /// Wall-clock expiry (Unix milliseconds, the setter's clock).
    pub expires_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a member as Joining; replaces an older incarnation of the same name.
    Join(Member),
    /// Joining members become Active (one epoch for the whole batch).
    Activate {
        raft_ids: Vec<u64>,
    },
    /// An Active or Joining member starts leaving.
    Leave {
        raft_id: u64,
    },
    /// Removes a member (it left, or it crashed).
    Remove {
        raft_id: u64,
    },
    SetSampling(SamplingOverride),
    ClearSampling,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The state changed; the epoch after the change.
    Changed {
        epoch: u64,
    },
    /// Nothing to do (e.g. the member was already gone): commands are idempotent.
    Unchanged {
        epoch: u64,
    },
    Refused {
        reason: String,
    },
}

/// The replicated cluster state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub epoch: u64,
    /// By Raft id (one entry per incarnation; names are unique among them).
    pub members: BTreeMap<u64, Member>,
    pub sampling: Option<SamplingOverride>,
}

impl ClusterState {
    /// Names of the members that own ring ranges.
    pub fn owners(&self) -> Vec<String> {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.name.clone())
            .collect()
    }

    /// The Raft id of each of [`ClusterState::owners`], in the same order.
    pub fn owner_raft_ids(&self) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.raft_id)
            .collect()
    }

    pub fn ring(&self) -> Ring {
        Ring::with_incarnations(
            self.epoch,
            self.members
                .values()
                .filter(|m| m.state == MemberState::Active)
                .map(|m| (m.name.clone(), m.raft_id)),
        )
    }

    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members.values().find(|m| m.name == name)
    }

    pub fn apply(&mut self, cmd: &Command) -> Applied {
        let owners_before = self.owners();
        let changed = match cmd {
            Command::Join(m) => {
                if let Some(existing) = self.members.get(&m.raft_id) {
                    if existing == m {
                        false
                    } else {
                        return Applied::Refused {
                            reason: format!("raft id {} is taken by {}", m.raft_id, existing.name),
                        };
                    }
                } else {
                    if self.members.len() >= MEMBERS_MAX && self.member_by_name(&m.name).is_none() {
                        return Applied::Refused {
                            reason: format!("the cluster is full ({MEMBERS_MAX} members)"),
                        };
                    }
                    // A new incarnation replaces the old one of the same name.
                    self.members.retain(|_, old| old.name != m.name);
                    let mut m = m.clone();
                    m.state = MemberState::Joining;
                    self.members.insert(m.raft_id, m);
                    true
                }
            }
            Command::Activate { raft_ids } => {
                let mut any = false;
                for id in raft_ids {
                    if let Some(m) = self.members.get_mut(id)
                        && m.state == MemberState::Joining
                    {
                        m.state = MemberState::Active;
                        any = true;
                    }
                }
                any
            }
            Command::Leave { raft_id } => match self.members.get_mut(raft_id) {
                Some(m) if m.state != MemberState::Leaving => {
                    m.state = MemberState::Leaving;
                    true
                }
                _ => false,
            },
            Command::Remove { raft_id } => self.members.remove(raft_id).is_some(),
            Command::SetSampling(o) => {
                self.sampling = Some(o.clone());
                true
            }
            Command::ClearSampling => self.sampling.take().is_some(),
        };
        if self.owners() != owners_before {
            self.epoch += 1;
        }
        if changed {
            Applied::Changed { epoch: self.epoch }
        } else {
            Applied::Unchanged { epoch: self.epoch }
        }
    }

    /// The override in force at `now_unix_ms`, as a percentage.
    pub fn sampling_percent(&self, now_unix_ms: u64) -> Option<f64> {
        self.sampling
            .as_ref()
            .filter(|o| now_unix_ms < o.expires_unix_ms)
            .map(|o| o.probabilistic_percent)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Join(m) => write!(f, "join {} (raft id {})", m.name, m.raft_id),
            Command::Activate { raft_ids } => write!(f, "activate {raft_ids:?}"),
            Command::Leave { raft_id } => write!(f, "leave {raft_id}"),
            Command::Remove { raft_id } => write!(f, "remove {raft_id}"),
            Command::SetSampling(o) => write!(f, "set sampling {}%", o.probabilistic_percent),
            Command::ClearSampling => write!(f, "clear sampling"),
        }
    }
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Changed { epoch } => write!(f, "changed (epoch {epoch})"),
            Applied::Unchanged { epoch } => write!(f, "unchanged (epoch {epoch})"),
            Applied::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}
