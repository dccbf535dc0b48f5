//! The tail-sampling engine, as pure state machines the pipeline and the simulator drive.
//!
//! - [`policy`]: every collector policy, compiled once; [`policy::PolicySet::decide`] combines
//!   votes exactly as the collector documents.
//! - [`TraceShard`]: the per-trace state machines of one shard (buffering → decided →
//!   forgotten), with deadlines, early decisions and handoff in and out.
//! - [`TraceBuffer`]: a trace's spans copied into compact storage.
//! - [`DecisionCache`]: decisions remembered so late spans follow them.
//! - [`BufferBudget`]: the byte budget all shards share (atomics, no lock).
//!
//! **Invariants:** no I/O, no clock, no randomness. Time is a `Duration` since the engine's
//! epoch, passed into every call; the same calls give the same results.

pub mod budget;
pub mod buffer;
pub mod cache;
pub mod policy;
pub mod record;
pub mod shard;
pub use tailgate_otlp::tracestate;

pub use budget::BufferBudget;
pub use buffer::TraceBuffer;
pub use cache::DecisionCache;
pub use shard::{
    DecisionTransfer, EarlyReason, Released, ReplicaCounters, ShardConfig, ShardCounters,
    TraceShard, TraceTransfer,
};

/// A map keyed by trace or span IDs. The IDs come from clients, so the hasher is seeded at
/// random per process (no collisions aimed in advance), but it is foldhash, not SipHash:
/// hashing 16-byte IDs in the trace, replica and decision maps was a visible share of a
/// gateway's CPU.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A set of trace or span IDs; see [`IdMap`].
pub(crate) type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests;
