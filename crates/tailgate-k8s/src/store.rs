//! [`MetadataStore`]: what the agent knows about this node's pods and their owners, as compact
//! records (not the API objects), indexed for the lookups `pod_association` makes.
//!
//! Pure: no I/O, no clock — time is a `Duration` passed in, so tests and the simulator drive
//! it directly. Ordered maps only.
//!
//! **Invariants:**
//! - the IP index points at the newest pod holding that IP: a new pod taking a reused IP
//!   wins, and deleting the old pod later does not unmap the new one;
//! - a deleted pod stays resolvable for [`DELETED_POD_GRACE`] (its last spans are still in
//!   flight), then is forgotten;
//! - at most [`PODS_MAX`] pods are held; beyond that new pods are not indexed and counted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// How long a deleted pod still enriches spans (the collector waits 2 minutes too).
pub const DELETED_POD_GRACE: Duration = Duration::from_secs(120);
/// Pods one store holds. A node runs at most a few hundred; a cluster-wide watch of a huge
/// cluster must not grow the agent without bound.
pub const PODS_MAX: usize = 20_000;
/// Owners (ReplicaSets, Jobs), namespaces and nodes held, each.
pub const OBJECTS_MAX: usize = 50_000;

/// An owner reference: `kind` as Kubernetes spells it (`ReplicaSet`, `StatefulSet`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    /// The image reference as written in the pod spec (`repo/name:tag`).
    pub image: String,
}

/// What enrichment needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ip: Option<IpAddr>,
    pub node: Option<String>,
    /// RFC 3339, as the API wrote it.
    pub start_time: Option<String>,
    pub owner: Option<OwnerRef>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<ContainerRecord>,
    /// Uses the node's network (its IP is the node's): never indexed by IP.
    pub host_network: bool,
}

/// A ReplicaSet's or Job's identity and its own owner (the Deployment or CronJob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    pub name: String,
    pub uid: String,
    pub owner: Option<OwnerRef>,
}

/// Labels and annotations of a namespace or node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectRecord {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// How a span's resource identifies its pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodKey {
    Ip(IpAddr),
    Uid(String),
    /// Name and namespace.
    Name(String, String),
}

#[derive(Debug, Clone)]
struct PodEntry {
    pod: PodRecord,
    /// Set when deleted: forgotten at this time.
    forget_at: Option<Duration>,
}

/// The kinds of objects a store keeps besides pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ReplicaSet,
    Job,
    Namespace,
    Node,
}

#[derive(Debug, Default)]
pub struct MetadataStore {
    pods: BTreeMap<String, PodEntry>,
    by_ip: BTreeMap<IpAddr, String>,
    by_name: BTreeMap<(String, String), String>,
    replica_sets: BTreeMap<String, OwnerRecord>,
    jobs: BTreeMap<String, OwnerRecord>,
    namespaces: BTreeMap<String, ObjectRecord>,
    nodes: BTreeMap<String, ObjectRecord>,
    /// Pods not indexed because the store was full.
    pub pods_over_limit: u64,
}

impl MetadataStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// A pod was added or changed.
    pub fn upsert_pod(&mut self, pod: PodRecord) {
        if !self.pods.contains_key(&pod.uid) && self.pods.len() >= PODS_MAX {
            self.pods_over_limit += 1;
            return;
        }
        if let Some(old) = self.pods.get(&pod.uid) {
            let old = old.pod.clone();
            self.unindex(&old);
        }
        self.index(&pod);
        self.pods.insert(
            pod.uid.clone(),
            PodEntry {
                pod,
                forget_at: None,
            },
        );
    }

    /// A pod was deleted: it stays resolvable until `now + DELETED_POD_GRACE`.
    pub fn delete_pod(&mut self, uid: &str, now: Duration) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.forget_at.get_or_insert(now + DELETED_POD_GRACE);
        }
    }

    /// A full relist: pods not in `pods` were deleted while the watch was down.
    pub fn replace_pods(&mut self, pods: Vec<PodRecord>, now: Duration) {
        let listed: std::collections::BTreeSet<String> =
            pods.iter().map(|p| p.uid.clone()).collect();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, e)| e.forget_at.is_none() && !listed.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.delete_pod(&uid, now);
        }
        for p in pods {
            self.upsert_pod(p);
        }
    }

    /// Forgets pods whose grace period ended.
    pub fn expire(&mut self, now: Duration) {
        let due: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| e.forget_at.is_some_and(|t| t <= now))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            if let Some(e) = self.pods.remove(&uid) {
                self.unindex(&e.pod);
            }
        }
    }

    fn index(&mut self, pod: &PodRecord) {
        if let Some(ip) = pod.ip
            && !pod.host_network
        {
            self.by_ip.insert(ip, pod.uid.clone());
        }
        self.by_name
            .insert((pod.name.clone(), pod.namespace.clone()), pod.uid.clone());
    }

    /// Removes index entries that still point at this pod (a newer pod may own them now).
    fn unindex(&mut self, pod: &PodRecord) {
        if let Some(ip) = pod.ip
            && self.by_ip.get(&ip) == Some(&pod.uid)
        {
            self.by_ip.remove(&ip);
        }
        let key = (pod.name.clone(), pod.namespace.clone());
        if self.by_name.get(&key) == Some(&pod.uid) {
            self.by_name.remove(&key);
        }
    }

    pub fn pod(&self, key: &PodKey) -> Option<&PodRecord> {
        let uid = match key {
            PodKey::Ip(ip) => self.by_ip.get(ip)?,
            PodKey::Uid(uid) => uid,
            PodKey::Name(name, ns) => self.by_name.get(&(name.clone(), ns.clone()))?,
        };
        self.pods.get(uid).map(|e| &e.pod)
    }

    fn map_mut(&mut self, kind: Kind) -> MapMut<'_> {
        match kind {
            Kind::ReplicaSet => MapMut::Owners(&mut self.replica_sets),
            Kind::Job => MapMut::Owners(&mut self.jobs),
            Kind::Namespace => MapMut::Objects(&mut self.namespaces),
            Kind::Node => MapMut::Objects(&mut self.nodes),
        }
    }

    /// ReplicaSets and Jobs are keyed by uid (pods name them by uid).
    pub fn upsert_owner(&mut self, kind: Kind, rec: OwnerRecord) {
        if let MapMut::Owners(m) = self.map_mut(kind)
            && (m.contains_key(&rec.uid) || m.len() < OBJECTS_MAX)
        {
            m.insert(rec.uid.clone(), rec);
        }
    }

    pub fn delete_owner(&mut self, kind: Kind, uid: &str) {
        if let MapMut::Owners(m) = self.map_mut(kind) {
            m.remove(uid);
        }
    }

    /// Namespaces and nodes are keyed by name.
    pub fn upsert_object(&mut self, kind: Kind, name: String, rec: ObjectRecord) {
        if let MapMut::Objects(m) = self.map_mut(kind)
            && (m.contains_key(&name) || m.len() < OBJECTS_MAX)
        {
            m.insert(name, rec);
        }
    }

    pub fn delete_object(&mut self, kind: Kind, name: &str) {
        if let MapMut::Objects(m) = self.map_mut(kind) {
            m.remove(name);
        }
    }

    /// A full relist of owners or objects replaces what was known.
    pub fn clear(&mut self, kind: Kind) {
        match self.map_mut(kind) {
            MapMut::Owners(m) => m.clear(),
            MapMut::Objects(m) => m.clear(),
        }
    }

    pub fn replica_set(&self, uid: &str) -> Option<&OwnerRecord> {
        self.replica_sets.get(uid)
    }
    pub fn job(&self, uid: &str) -> Option<&OwnerRecord> {
        self.jobs.get(uid)
    }
    pub fn namespace(&self, name: &str) -> Option<&ObjectRecord> {
        self.namespaces.get(name)
    }
    pub fn node(&self, name: &str) -> Option<&ObjectRecord> {
        self.nodes.get(name)
    }
}

enum MapMut<'a> {
    Owners(&'a mut BTreeMap<String, OwnerRecord>),
    Objects(&'a mut BTreeMap<String, ObjectRecord>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ip: &str) -> PodRecord {
        PodRecord {
            name: format!("pod-{uid}"),
            namespace: "ns".into(),
            uid: uid.into(),
            ip: Some(ip.parse().unwrap()),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> PodKey {
        PodKey::Ip(s.parse().unwrap())
    }

    #[test]
    fn a_deleted_pod_resolves_during_its_grace_period_then_is_forgotten() {
        let mut s = MetadataStore::new();
        s.upsert_pod(pod("a", "10.0.0.1"));
        s.delete_pod("a", Duration::from_secs(10));
        s.expire(Duration::from_secs(10) + DELETED_POD_GRACE - Duration::from_millis(1));
        assert!(s.pod(&ip("10.0.0.1")).is_some());
        s.expire(Duration::from_secs(10) + DELETED_POD_GRACE);
        assert!(s.pod(&ip("10.0.0.1")).is_none());
        assert!(s.pod(&PodKey::Uid("a".into())).is_none());
        assert_eq!(s.pod_count(), 0);
    }

    #[test]
    fn a_relist_marks_pods_missing_from_it_deleted_and_keeps_a_reused_ip_on_the_newest_pod() {
        let mut s = MetadataStore::new();
        s.upsert_pod(pod("a", "10.0.0.1"));
        s.upsert_pod(pod("b", "10.0.0.2"));
        // While the watch was down: a deleted, its IP reused by c.
        s.replace_pods(
            vec![pod("b", "10.0.0.2"), pod("c", "10.0.0.1")],
            Duration::ZERO,
        );
        assert_eq!(s.pod(&ip("10.0.0.1")).unwrap().uid, "c");
        s.expire(DELETED_POD_GRACE);
        assert_eq!(
            s.pod(&ip("10.0.0.1")).unwrap().uid,
            "c",
            "a's expiry leaves c mapped"
        );
        assert_eq!(s.pod_count(), 2);
    }

    #[test]
    fn the_store_stops_indexing_new_pods_at_its_limit_and_counts_them() {
        let mut s = MetadataStore::new();
        for i in 0..PODS_MAX + 5 {
            s.upsert_pod(pod(&format!("p{i}"), "10.0.0.1"));
        }
        assert_eq!(s.pod_count(), PODS_MAX);
        assert_eq!(s.pods_over_limit, 5);
        // Updates of known pods still apply at the limit.
        let mut p = pod("p0", "10.0.0.9");
        p.name = "renamed".into();
        s.upsert_pod(p);
        assert_eq!(s.pod(&ip("10.0.0.9")).unwrap().name, "renamed");
    }
}
