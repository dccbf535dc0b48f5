//! Cluster membership state and the consistent-hash ring, as pure data and functions: no
//! I/O, no clock, no randomness. The cluster runtime (`tailgate-cluster`) replicates
//! [`ClusterState`] through Raft; the engine and the agents route by [`Ring`].
//!
//! **Invariants:** the same `(epoch, owners)` gives the same owner for every trace in every
//! process (positions come from our own stable hashes, not from `std`'s randomized ones);
//! the epoch increases exactly when the owner set changes.

mod plan;
mod ring;
mod state;

pub use plan::{Placement, by_replica};
pub use ring::{Ring, VNODES_PER_MEMBER, trace_key};
pub use state::{
    Applied, ClusterState, Command, MEMBERS_MAX, Member, MemberState, SamplingOverride,
};

#[cfg(test)]
mod tests;
