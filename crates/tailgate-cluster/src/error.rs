//! Why a cluster operation failed.

use thiserror::Error;

/// Why a cluster operation (join, leave, a write through Raft) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// Raft refused or failed the operation (not the leader, membership change in progress,
    /// shutting down, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// A peer could not be reached or answered with an error.
    #[error("{addr}: {message}")]
    Peer { addr: String, message: String },
    /// A peer did not answer in time.
    #[error("{addr} did not answer within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// The leader answered and said no.
    #[error("refused: {0}")]
    Refused(String),
    #[error("no leader known")]
    NoLeader,
    /// Leader hints kept pointing elsewhere.
    #[error("the leader kept moving")]
    LeaderMoving,
    #[error("not elected after initializing the cluster")]
    NotElected,
}

impl ClusterError {
    pub(crate) fn raft(e: impl std::fmt::Display) -> Self {
        ClusterError::Raft(e.to_string())
    }

    pub(crate) fn peer(addr: &str, message: impl ToString) -> Self {
        ClusterError::Peer {
            addr: addr.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn timeout(addr: &str, timeout_ms: u64) -> Self {
        ClusterError::Timeout {
            addr: addr.to_string(),
            timeout_ms,
        }
    }
}
