use std::collections::BTreeMap;

use proptest::prelude::*;
use tailgate_otlp::TraceId;

use crate::*;

fn id(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8..].copy_from_slice(&(n.wrapping_mul(0x9E37_79B9)).to_le_bytes());
    TraceId(b)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("gateway-{i}")).collect()
}

#[test]
fn placement_does_not_depend_on_member_order() {
    let a = Ring::new(3, names(4));
    let mut rev = names(4);
    rev.reverse();
    let b = Ring::new(3, rev);
    for n in 0..10_000 {
        assert_eq!(a.owner(&id(n)), b.owner(&id(n)));
    }
}

#[test]
fn owners_get_near_even_shares() {
    let ring = Ring::new(1, names(5));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let total = 100_000;
    for n in 0..total {
        *counts.entry(ring.owner(&id(n)).unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 5);
    for (owner, c) in counts {
        let share = c as f64 / total as f64;
        assert!((0.13..0.27).contains(&share), "{owner} owns {share}");
    }
}

#[test]
fn adding_a_member_moves_only_the_ranges_it_takes() {
    let before = Ring::new(1, names(3));
    let after = Ring::new(2, names(4));
    let mut moved = 0;
    for n in 0..50_000 {
        let (b, a) = (before.owner(&id(n)).unwrap(), after.owner(&id(n)).unwrap());
        if a != b {
            assert_eq!(a, "gateway-3", "a trace moved between two old members");
            moved += 1;
        }
    }
    let share = f64::from(moved) / 50_000.0;
    assert!((0.15..0.35).contains(&share), "moved {share}");
}

#[test]
fn known_positions_are_stable_across_builds_and_platforms() {
    // Pinned values: a change here changes placement between versions of Tailgate, which
    // would split traces during a rolling upgrade. Change only on purpose.
    assert_eq!(trace_key(&TraceId([0; 16])), 0x4821_8226_ff3c_d4bf);
    let ring = Ring::new(1, names(3));
    let owners: Vec<&str> = (0..6).map(|n| ring.owner(&id(n)).unwrap()).collect();
    assert_eq!(owners, PINNED_OWNERS);
}
const PINNED_OWNERS: [&str; 6] = [
    "gateway-1",
    "gateway-2",
    "gateway-1",
    "gateway-0",
    "gateway-0",
    "gateway-0",
];

#[test]
fn an_empty_ring_makes_every_node_an_owner() {
    let ring = Ring::empty();
    assert!(ring.owner(&id(1)).is_none());
    assert!(ring.owns("anyone", &id(1)));
}

fn member(name: &str, raft_id: u64) -> Member {
    Member {
        name: name.into(),
        raft_id,
        cluster_addr: format!("{name}:4320"),
        otlp_addr: format!("{name}:4317"),
        state: MemberState::Active,
    }
}

#[test]
fn epoch_moves_exactly_when_owners_change() {
    let mut s = ClusterState::default();
    assert_eq!(
        s.apply(&Command::Join(member("a", 1))),
        Applied::Changed { epoch: 0 }
    );
    assert_eq!(
        s.members[&1].state,
        MemberState::Joining,
        "joins start as Joining"
    );
    assert_eq!(
        s.apply(&Command::Join(member("b", 2))),
        Applied::Changed { epoch: 0 }
    );
    assert_eq!(
        s.apply(&Command::Activate {
            raft_ids: vec![1, 2]
        }),
        Applied::Changed { epoch: 1 },
        "one epoch for a batch of activations"
    );
    assert_eq!(s.owners(), ["a", "b"]);
    assert_eq!(
        s.apply(&Command::SetSampling(SamplingOverride {
            probabilistic_percent: 50.0,
            expires_unix_ms: 1000
        })),
        Applied::Changed { epoch: 1 }
    );
    assert_eq!(s.sampling_percent(999), Some(50.0));
    assert_eq!(s.sampling_percent(1000), None, "expires on its own");
    assert_eq!(
        s.apply(&Command::Leave { raft_id: 2 }),
        Applied::Changed { epoch: 2 }
    );
    assert_eq!(s.owners(), ["a"]);
    assert_eq!(
        s.apply(&Command::Remove { raft_id: 2 }),
        Applied::Changed { epoch: 2 }
    );
    assert_eq!(
        s.apply(&Command::Remove { raft_id: 2 }),
        Applied::Unchanged { epoch: 2 }
    );
}

#[test]
fn a_new_incarnation_replaces_the_old_one_of_the_same_name() {
    let mut s = ClusterState::default();
    s.apply(&Command::Join(member("a", 1)));
    s.apply(&Command::Join(member("b", 2)));
    s.apply(&Command::Activate {
        raft_ids: vec![1, 2],
    });
    // "b" crashed and came back under a fresh Raft id before it was removed.
    s.apply(&Command::Join(member("b", 7)));
    assert_eq!(s.members.keys().copied().collect::<Vec<_>>(), [1, 7]);
    assert_eq!(
        s.owners(),
        ["a"],
        "the new incarnation owns nothing until activated"
    );
    assert_eq!(s.epoch, 2);
    assert!(matches!(
        s.apply(&Command::Join(Member {
            name: "c".into(),
            ..member("c", 1)
        })),
        Applied::Refused { .. }
    ));
}

#[test]
fn placement_splits_by_owner() {
    let ring = Ring::new(1, names(3));
    let ids: Vec<TraceId> = (0..300).map(id).collect();
    let p = Placement::split(&ring, "gateway-0", ids.clone(), |t| *t);
    for t in &p.local {
        assert_eq!(ring.owner(t), Some("gateway-0"));
    }
    for (owner, ts) in &p.remote {
        assert_ne!(owner, "gateway-0");
        assert!(ts.iter().all(|t| ring.owner(t) == Some(owner.as_str())));
    }
    let total: usize = p.local.len() + p.remote.values().map(Vec::len).sum::<usize>();
    assert_eq!(total, ids.len());
}

#[test]
fn the_replica_is_the_owner_once_the_owner_is_gone() {
    for members in 2..=6 {
        let all = names(members);
        let ring = Ring::new(1, all.clone());
        let without: BTreeMap<&str, Ring> = all
            .iter()
            .map(|gone| {
                let rest = all.iter().filter(|m| *m != gone).cloned();
                (gone.as_str(), Ring::new(2, rest))
            })
            .collect();
        for n in 0..5_000 {
            let owner = ring.owner(&id(n)).unwrap();
            let replica = ring.replica(&id(n)).unwrap();
            assert_ne!(owner, replica, "trace {n} on {members} members");
            let after = &without[owner];
            assert_eq!(
                after.owner(&id(n)),
                Some(replica),
                "trace {n} on {members} members"
            );
        }
    }
}

#[test]
fn replicas_spread_like_owners_and_pin_across_builds() {
    let ring = Ring::new(1, names(3));
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for n in 0..30_000 {
        *pairs
            .entry((ring.owner(&id(n)).unwrap(), ring.replica(&id(n)).unwrap()))
            .or_default() += 1;
    }
    // Every owner backs up to both others: a crash spreads its traces over the survivors.
    assert_eq!(pairs.len(), 6, "{pairs:?}");
    let replicas: Vec<&str> = (0..6).map(|n| ring.replica(&id(n)).unwrap()).collect();
    assert_eq!(replicas, PINNED_REPLICAS);
}
const PINNED_REPLICAS: [&str; 6] = [
    "gateway-2",
    "gateway-1",
    "gateway-0",
    "gateway-2",
    "gateway-1",
    "gateway-2",
];

#[test]
fn a_restarted_owner_is_told_apart_by_its_incarnation() {
    let before = Ring::with_incarnations(3, [("g0".to_string(), 11), ("g1".to_string(), 12)]);
    let after = Ring::with_incarnations(5, [("g0".to_string(), 21), ("g1".to_string(), 12)]);
    assert!(!before.same_incarnation(&after, "g0"));
    assert!(before.same_incarnation(&after, "g1"));
    // Same placement whatever the incarnations.
    for n in 0..1000 {
        assert_eq!(before.owner(&id(n)), after.owner(&id(n)));
    }
    // A ring that does not know incarnations cannot tell: assume the same.
    assert!(Ring::new(5, names(2)).same_incarnation(&before, "g0"));
}

#[test]
fn one_owner_has_no_replica() {
    assert_eq!(Ring::new(1, names(1)).replica(&id(7)), None);
    assert_eq!(Ring::empty().replica(&id(7)), None);
}

proptest! {
    #[test]
    fn the_same_log_gives_the_same_ring(cmds in proptest::collection::vec((0u8..4, 1u64..6), 0..40)) {
        let cmds: Vec<Command> = cmds.into_iter().map(|(k, id)| match k {
            0 => Command::Join(member(&format!("g{id}"), id)),
            1 => Command::Activate { raft_ids: vec![id] },
            2 => Command::Leave { raft_id: id },
            _ => Command::Remove { raft_id: id },
        }).collect();
        let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
        let mut last_epoch = 0;
        for c in &cmds {
            let owners = a.owners();
            a.apply(c);
            b.apply(c);
            prop_assert!(a.epoch >= last_epoch);
            prop_assert_eq!(a.epoch != last_epoch, a.owners() != owners);
            last_epoch = a.epoch;
        }
        prop_assert_eq!(&a, &b);
        let (ra, rb) = (a.ring(), b.ring());
        for n in 0..64 {
            prop_assert_eq!(ra.owner(&id(n)), rb.owner(&id(n)));
        }
    }
}
