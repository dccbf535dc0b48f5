//! [`Ring`]: which gateway owns a trace at one epoch.
//!
//! Owners are placed on a `hashring` as `VNODES_PER_MEMBER` virtual nodes each; a trace is
//! looked up by [`trace_key`], a stable 64-bit hash of its full 16-byte ID. Every position on
//! the ring is computed by our own hash functions (the ring's hasher passes our `u64`s
//! through), so every process, on every platform, places every trace identically for the
//! same epoch and member list.

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use tailgate_otlp::TraceId;

/// Virtual nodes per owner: enough that 2–10 owners split the key space within a few
/// percent of even, few enough that building a ring stays in the microseconds.
pub const VNODES_PER_MEMBER: u32 = 128;

/// SplitMix64's finalizer: a bijective mixer with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring position of a trace: both halves of the ID, big-endian, mixed. Independent of
/// the shard choice inside a node and of probabilistic sampling's FNV hash.
pub fn trace_key(id: &TraceId) -> u64 {
    let hi = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
    let lo = u64::from_be_bytes(id.0[8..].try_into().expect("8 bytes"));
    mix64(hi ^ mix64(lo.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// FNV-1a over the member name, then the vnode index mixed in: a stable position.
fn vnode_key(name: &str, vnode: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h ^ mix64(u64::from(vnode) + 1))
}

/// A `Hasher` that keeps the last `u64` written: ring positions are our stable keys.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are ever hashed; fold anything else deterministically anyway.
        for b in bytes {
            self.0 = mix64(self.0 ^ u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[derive(Clone, Copy, Default)]
struct PassThroughBuilder;

impl BuildHasher for PassThroughBuilder {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough::default()
    }
}

/// One virtual node: its position and the index of its owner in `Ring::owners`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct VNode {
    key: u64,
    owner: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.key);
    }
}

/// For every virtual node sorted by position, the first member clockwise that is not its
/// own (see `Ring::successors`). Linear: one backwards walk over the doubled circle.
fn successors(vnodes: &[VNode]) -> Vec<(u64, Option<u32>)> {
    let mut sorted = vnodes.to_vec();
    sorted.sort_by_key(|v| v.key);
    let n = sorted.len();
    let mut next: Vec<Option<u32>> = vec![None; n];
    // Walking the circle twice backwards, `nearest` is the owner of the nearest following
    // virtual node of each member seen; the first distinct one is the successor.
    let mut last_other: Option<(u32, Option<u32>)> = None;
    for step in (0..2 * n).rev() {
        let v = sorted[step % n];
        // `last_other` holds (owner of the vnode after this one, that vnode's successor).
        let successor = match last_other {
            Some((after, _)) if after != v.owner => Some(after),
            Some((_, after_successor)) => after_successor,
            None => None,
        };
        if step < n {
            next[step] = successor;
        }
        last_other = Some((v.owner, successor));
    }
    sorted
        .iter()
        .zip(next)
        .map(|(v, successor)| (v.key, successor))
        .collect()
}

/// The owners of one epoch, and the lookups from trace to owner and to replica.
pub struct Ring {
    epoch: u64,
    /// Owner names, sorted (the ring does not depend on the order members joined in).
    owners: Vec<String>,
    /// Each owner's Raft id (its incarnation: a restarted member keeps its name and ring
    /// positions but not its buffers), parallel to `owners`; 0 where unknown. Placement
    /// never depends on it.
    incarnations: Vec<u64>,
    ring: HashRing<VNode, PassThroughBuilder>,
    /// For every virtual node (sorted by position), the owner of the first virtual node
    /// clockwise from it that belongs to a different member: the replica of every trace the
    /// virtual node places. `None` with fewer than two owners.
    successors: Vec<(u64, Option<u32>)>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("epoch", &self.epoch)
            .field("owners", &self.owners)
            .finish()
    }
}

impl Ring {
    /// Builds the ring of `epoch` over `owners` (any order; duplicates ignored).
    pub fn new(epoch: u64, owners: impl IntoIterator<Item = String>) -> Ring {
        Ring::with_incarnations(epoch, owners.into_iter().map(|name| (name, 0)))
    }

    /// Builds the ring of `epoch` over `(name, incarnation)` owners: placement as
    /// [`Ring::new`], and [`Ring::same_incarnation`] can tell a restarted owner apart.
    pub fn with_incarnations(epoch: u64, owners: impl IntoIterator<Item = (String, u64)>) -> Ring {
        let mut members: Vec<(String, u64)> = owners.into_iter().collect();
        members.sort();
        members.dedup_by(|a, b| a.0 == b.0);
        let (owners, incarnations): (Vec<String>, Vec<u64>) = members.into_iter().unzip();
        let mut ring = HashRing::with_hasher(PassThroughBuilder);
        let vnodes: Vec<VNode> = owners
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..VNODES_PER_MEMBER).map(move |v| VNode {
                    key: vnode_key(name, v),
                    owner: i as u32,
                })
            })
            .collect();
        let successors = successors(&vnodes);
        ring.batch_add(vnodes);
        Ring {
            epoch,
            owners,
            incarnations,
            ring,
            successors,
        }
    }

    /// The ring before any cluster exists: no owners (a single node owns everything).
    pub fn empty() -> Ring {
        Ring::new(0, [])
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn owners(&self) -> &[String] {
        &self.owners
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The owner of a trace; `None` only when the ring has no owners.
    pub fn owner(&self, id: &TraceId) -> Option<&str> {
        self.owner_of_key(trace_key(id))
    }

    /// The owner of a ring position (see [`trace_key`]).
    pub fn owner_of_key(&self, key: u64) -> Option<&str> {
        self.ring
            .get(&key)
            .map(|v| self.owners[v.owner as usize].as_str())
    }

    /// The replica of a trace (`replication_factor: 2`): the owner of the first virtual node
    /// clockwise from the trace's position that belongs to another member. Removing the
    /// owner from the ring gives the trace to exactly this member, so after a crash the
    /// replica is the new owner without moving anything. `None` with fewer than two owners.
    pub fn replica(&self, id: &TraceId) -> Option<&str> {
        let owner_vnode = self.ring.get(&trace_key(id))?;
        let i = self
            .successors
            .binary_search_by_key(&owner_vnode.key, |(key, _)| *key)
            .ok()?;
        self.successors[i]
            .1
            .map(|owner| self.owners[owner as usize].as_str())
    }

    /// Whether `member` is the same process in both rings: false only when both know its
    /// incarnation and they differ (it restarted in between, its buffers gone).
    pub fn same_incarnation(&self, other: &Ring, member: &str) -> bool {
        let of = |r: &Ring| {
            r.owners
                .binary_search_by(|o| o.as_str().cmp(member))
                .ok()
                .map(|i| r.incarnations[i])
                .filter(|id| *id != 0)
        };
        match (of(self), of(other)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// Whether `node` owns the trace. With no owners at all, every node owns everything
    /// (a node before it joined a cluster behaves like a single gateway).
    pub fn owns(&self, node: &str, id: &TraceId) -> bool {
        self.owner(id).is_none_or(|o| o == node)
    }
}
