//! [`Placement`]: splitting items (spans, buffered traces, decisions) by their owner on a ring.
//! Forwarding and handoff both use it, so they can never disagree about where a trace goes.

use std::collections::BTreeMap;

use tailgate_otlp::TraceId;

use crate::ring::Ring;

/// Items split into the ones `local` owns and the ones to send, per owner (ordered by name,
/// so sends happen in the same order on every run).
#[derive(Debug)]
pub struct Placement<T> {
    pub local: Vec<T>,
    pub remote: BTreeMap<String, Vec<T>>,
}

impl<T> Placement<T> {
    pub fn split(
        ring: &Ring,
        local: &str,
        items: impl IntoIterator<Item = T>,
        trace_id: impl Fn(&T) -> TraceId,
    ) -> Placement<T> {
        let mut placement = Placement {
            local: Vec::new(),
            remote: BTreeMap::new(),
        };
        for item in items {
            match ring.owner(&trace_id(&item)) {
                Some(owner) if owner != local => placement
                    .remote
                    .entry(owner.to_string())
                    .or_default()
                    .push(item),
                _ => placement.local.push(item),
            }
        }
        placement
    }

    pub fn is_all_local(&self) -> bool {
        self.remote.is_empty()
    }
}

/// Items grouped by their replica on `ring` (ordered by name, so sends happen in the same
/// order on every run). Items without a replica (a ring of fewer than two owners) are left
/// out: there is nobody to copy them to.
pub fn by_replica<T>(
    ring: &Ring,
    items: impl IntoIterator<Item = T>,
    trace_id: impl Fn(&T) -> TraceId,
) -> BTreeMap<String, Vec<T>> {
    let mut groups: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for item in items {
        if let Some(replica) = ring.replica(&trace_id(&item)) {
            groups.entry(replica.to_string()).or_default().push(item);
        }
    }
    groups
}
