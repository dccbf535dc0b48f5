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
        let mut local_items = Vec::new();
        let mut remote: BTreeMap<&str, Vec<T>> = BTreeMap::new();
        let mut owner_of = Memo::default();
        for item in items {
            match owner_of.get(&trace_id(&item), |id| ring.owner(id)) {
                Some(owner) if owner != local => remote.entry(owner).or_default().push(item),
                _ => local_items.push(item),
            }
        }
        Placement {
            local: local_items,
            remote: remote
                .into_iter()
                .map(|(owner, items)| (owner.to_string(), items))
                .collect(),
        }
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
    let mut groups: BTreeMap<&str, Vec<T>> = BTreeMap::new();
    let mut replica_of = Memo::default();
    for item in items {
        if let Some(replica) = replica_of.get(&trace_id(&item), |id| ring.replica(id)) {
            groups.entry(replica).or_default().push(item);
        }
    }
    groups
        .into_iter()
        .map(|(replica, items)| (replica.to_string(), items))
        .collect()
}

/// The last trace's answer: a batch's spans mostly come trace by trace, and a ring lookup
/// costs a tree search per span.
#[derive(Default)]
struct Memo<'r> {
    last: Option<(TraceId, Option<&'r str>)>,
}

impl<'r> Memo<'r> {
    fn get(
        &mut self,
        id: &TraceId,
        lookup: impl Fn(&TraceId) -> Option<&'r str>,
    ) -> Option<&'r str> {
        match self.last {
            Some((last, answer)) if last == *id => answer,
            _ => {
                let answer = lookup(id);
                self.last = Some((*id, answer));
                answer
            }
        }
    }
}
