//! Feeding the [`MetadataStore`] from the Kubernetes API with `kube` watchers: pods (this node
//! only, with the `filter` settings as field and label selectors), and — only when the
//! `extract` settings need them — ReplicaSets and Jobs (metadata only, for Deployment and
//! CronJob names), namespaces and nodes (metadata only).
//!
//! Each watcher relists on a `410 Gone` (kube's watcher does) and the store replaces what it
//! knew at the end of every listing, so a pod deleted while the watch was down is noticed.
//! Objects become compact records as they arrive; the API objects are never kept.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use metrics::{counter, gauge};
use regex::Regex;
use tailgate_config::agent::{K8sAttributesConfig, K8sExtractFrom, K8sFilterOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::extract::Extractor;
use crate::store::{
    ContainerRecord, Kind, MetadataStore, ObjectRecord, OwnerRecord, OwnerRef, PodRecord,
};
use crate::telemetry::*;

/// How often deleted pods past their grace period are forgotten.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(10);

/// Which parts of a pod to keep (labels and annotations only when something extracts them).
#[derive(Debug, Clone)]
struct PodShape {
    labels: bool,
    annotations: bool,
    exclude: Vec<Regex>,
}

/// The running watchers of one `k8sattributes` processor.
pub struct KubeMetadata {
    pub store: Arc<RwLock<MetadataStore>>,
    pub synced: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeMetadata {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The field and label selectors of the pod watch, from `filter`.
pub fn pod_selectors(
    cfg: &K8sAttributesConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<String>, Option<String>), String> {
    let mut fields = Vec::new();
    let node = match (&cfg.filter.node, &cfg.filter.node_from_env_var) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(var)) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("filter.node_from_env_var: environment variable `{var}` is not set (set it from the Downward API: spec.nodeName)")
        })?),
        (None, None) => None,
    };
    if let Some(node) = node {
        fields.push(format!("spec.nodeName={node}"));
    }
    for f in &cfg.filter.fields {
        let op = if f.op == K8sFilterOp::NotEquals {
            "!="
        } else {
            "="
        };
        fields.push(format!("{}{op}{}", f.key, f.value));
    }
    let labels: Vec<String> = cfg
        .filter
        .labels
        .iter()
        .map(|l| match l.op {
            K8sFilterOp::Equals => format!("{}={}", l.key, l.value.as_deref().unwrap_or("")),
            K8sFilterOp::NotEquals => format!("{}!={}", l.key, l.value.as_deref().unwrap_or("")),
            K8sFilterOp::Exists => l.key.clone(),
            K8sFilterOp::DoesNotExist => format!("!{}", l.key),
        })
        .collect();
    let join = |v: Vec<String>| (!v.is_empty()).then(|| v.join(","));
    Ok((join(fields), join(labels)))
}

/// The node this agent watches, if filtered by node.
fn filtered_node(
    cfg: &K8sAttributesConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    cfg.filter
        .node
        .clone()
        .or_else(|| cfg.filter.node_from_env_var.as_deref().and_then(env))
}

impl KubeMetadata {
    /// A store fed by someone else (the simulator, `passthrough`), with its own sync flag.
    pub fn detached(store: Arc<RwLock<MetadataStore>>, synced: watch::Receiver<bool>) -> Self {
        KubeMetadata {
            store,
            synced,
            tasks: Vec::new(),
        }
    }

    /// Starts the watchers `cfg` needs. Returns at once; `synced` turns true when every
    /// watcher delivered its first full listing.
    pub fn start(
        client: kube::Client,
        cfg: &K8sAttributesConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<KubeMetadata, String> {
        let needs = Extractor::new(cfg).needs();
        let (done_tx, done_rx) = tokio::sync::mpsc::channel::<()>(8);
        let mut w = Watchers {
            store: Arc::new(RwLock::new(MetadataStore::new())),
            client,
            done: done_tx,
            started: Instant::now(),
            tasks: Vec::new(),
        };
        w.spawn_pods(cfg, env)?;
        for (needed, kind) in [
            (needs.replica_sets, Kind::ReplicaSet),
            (needs.jobs, Kind::Job),
        ] {
            if needed {
                w.spawn_owners(kind, cfg);
            }
        }
        for (needed, kind) in [
            (needs.namespaces, Kind::Namespace),
            (needs.nodes, Kind::Node),
        ] {
            if needed {
                w.spawn_objects(kind, cfg, env);
            }
        }
        let synced = w.spawn_sync_flag(done_rx);
        w.spawn_expiry();
        Ok(KubeMetadata {
            store: w.store,
            synced,
            tasks: w.tasks,
        })
    }
}

/// The watchers being started: each reports its first full listing on `done`.
struct Watchers {
    store: Arc<RwLock<MetadataStore>>,
    client: kube::Client,
    done: tokio::sync::mpsc::Sender<()>,
    started: Instant,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Pods, narrowed by the config's node, namespace and label filters.
    fn spawn_pods(
        &mut self,
        cfg: &K8sAttributesConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let (fields, labels) = pod_selectors(cfg, env)?;
        let mut pod_config = watcher::Config::default();
        if let Some(f) = &fields {
            pod_config = pod_config.fields(f);
        }
        if let Some(l) = &labels {
            pod_config = pod_config.labels(l);
        }
        let pods: Api<Pod> = match &cfg.filter.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let from = |f: K8sExtractFrom, list: &[tailgate_config::agent::K8sFieldExtract]| {
            list.iter().any(|r| r.from == f)
        };
        let shape = PodShape {
            labels: from(K8sExtractFrom::Pod, &cfg.extract.labels),
            annotations: from(K8sExtractFrom::Pod, &cfg.extract.annotations),
            exclude: cfg.exclude.pods.iter().map(|p| p.name.0.clone()).collect(),
        };
        let store = Arc::clone(&self.store);
        let done = self.done.clone();
        let started = self.started;
        let stream = watcher::watcher(pods, pod_config).default_backoff();
        self.tasks.push(tokio::spawn(async move {
            run(stream, "pod", done, |ev| {
                let mut s = store
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                apply_pod_event(&mut s, ev, &shape, started.elapsed());
                gauge!(K8S_PODS).set(s.pod_count() as f64);
                gauge!(K8S_PODS_OVER_LIMIT).set(s.pods_over_limit as f64);
            })
            .await;
        }));
        Ok(())
    }

    /// Owners a pod's workload name is read through (ReplicaSet → Deployment, Job → CronJob),
    /// as metadata only.
    fn spawn_owners(&mut self, kind: Kind, cfg: &K8sAttributesConfig) {
        let store = Arc::clone(&self.store);
        let done = self.done.clone();
        let handle = move |ev: Applied<PartialObjectMeta<()>>| {
            let mut s = store
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match ev {
                Applied::One(o) => {
                    if let Some(rec) = owner_record(&o.metadata) {
                        s.upsert_owner(kind, rec);
                    }
                }
                Applied::Deleted(o) => {
                    if let Some(uid) = &o.metadata.uid {
                        s.delete_owner(kind, uid);
                    }
                }
                Applied::All(all) => {
                    s.clear(kind);
                    for o in all {
                        if let Some(rec) = owner_record(&o.metadata) {
                            s.upsert_owner(kind, rec);
                        }
                    }
                }
            }
        };
        let task = match kind {
            Kind::ReplicaSet => {
                let api: Api<PartialObjectMeta<ReplicaSet>> = namespaced_or_all(&self.client, cfg);
                spawn_metadata_watch(api, watcher::Config::default(), "replicaset", done, handle)
            }
            _ => {
                let api: Api<PartialObjectMeta<Job>> = namespaced_or_all(&self.client, cfg);
                spawn_metadata_watch(api, watcher::Config::default(), "job", done, handle)
            }
        };
        self.tasks.push(task);
    }

    /// Namespaces and nodes, by name, for their labels and annotations.
    fn spawn_objects(
        &mut self,
        kind: Kind,
        cfg: &K8sAttributesConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        let store = Arc::clone(&self.store);
        let done = self.done.clone();
        let handle = move |ev: Applied<PartialObjectMeta<()>>| {
            let mut s = store
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match ev {
                Applied::One(o) => {
                    if let Some((name, rec)) = object_record(&o.metadata) {
                        s.upsert_object(kind, name, rec);
                    }
                }
                Applied::Deleted(o) => {
                    if let Some(name) = &o.metadata.name {
                        s.delete_object(kind, name);
                    }
                }
                Applied::All(all) => {
                    s.clear(kind);
                    for o in all {
                        if let Some((name, rec)) = object_record(&o.metadata) {
                            s.upsert_object(kind, name, rec);
                        }
                    }
                }
            }
        };
        let task = if kind == Kind::Namespace {
            let api: Api<PartialObjectMeta<Namespace>> = Api::all(self.client.clone());
            let mut wc = watcher::Config::default();
            if let Some(ns) = &cfg.filter.namespace {
                wc = wc.fields(&format!("metadata.name={ns}"));
            }
            spawn_metadata_watch(api, wc, "namespace", done, handle)
        } else {
            let api: Api<PartialObjectMeta<Node>> = Api::all(self.client.clone());
            let mut wc = watcher::Config::default();
            if let Some(node) = filtered_node(cfg, env) {
                wc = wc.fields(&format!("metadata.name={node}"));
            }
            spawn_metadata_watch(api, wc, "node", done, handle)
        };
        self.tasks.push(task);
    }

    /// A flag that turns true once every watcher started so far reported its first listing.
    fn spawn_sync_flag(
        &mut self,
        mut done_rx: tokio::sync::mpsc::Receiver<()>,
    ) -> watch::Receiver<bool> {
        let watchers = self.tasks.len();
        let (synced_tx, synced) = watch::channel(false);
        self.tasks.push(tokio::spawn(async move {
            let mut pending = watchers;
            while pending > 0 && done_rx.recv().await.is_some() {
                pending -= 1;
            }
            if pending == 0 {
                let _ = synced_tx.send(true);
                // Keep the sender alive so receivers never see a closed channel.
                std::future::pending::<()>().await;
            }
        }));
        synced
    }

    /// Forgets deleted pods after their grace period.
    fn spawn_expiry(&mut self) {
        let store = Arc::clone(&self.store);
        let started = self.started;
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRE_INTERVAL);
            loop {
                tick.tick().await;
                let mut s = store
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.expire(started.elapsed());
                gauge!(K8S_PODS).set(s.pod_count() as f64);
            }
        }));
    }
}

/// One pod watch event applied to the store (`now`: since the watchers started).
fn apply_pod_event(s: &mut MetadataStore, ev: Applied<Pod>, shape: &PodShape, now: Duration) {
    match ev {
        Applied::One(pod) => match pod_record(&pod, shape) {
            Some(rec) => s.upsert_pod(rec),
            None => {
                if let Some(uid) = &pod.metadata.uid {
                    s.delete_pod(uid, now);
                }
            }
        },
        Applied::Deleted(pod) => {
            if let Some(uid) = &pod.metadata.uid {
                s.delete_pod(uid, now);
            }
        }
        Applied::All(pods) => {
            let recs = pods.iter().filter_map(|p| pod_record(p, shape)).collect();
            s.replace_pods(recs, now);
        }
    }
}

fn namespaced_or_all<K>(client: &kube::Client, cfg: &K8sAttributesConfig) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match &cfg.filter.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Metadata-only objects of any kind look the same to the store.
/// Watches `api` for metadata only, every event with its type erased, feeding `handle`; the
/// first full listing is reported on `done`.
fn spawn_metadata_watch<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    what: &'static str,
    done: tokio::sync::mpsc::Sender<()>,
    handle: impl FnMut(Applied<PartialObjectMeta<()>>) + Send + 'static,
) -> JoinHandle<()>
where
    K: Send + Sync + 'static,
    PartialObjectMeta<K>:
        kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    <PartialObjectMeta<K> as kube::Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .map(|r| r.map(erase));
    tokio::spawn(async move { run(stream, what, done, handle).await })
}

fn erase<K>(e: Event<PartialObjectMeta<K>>) -> Event<PartialObjectMeta<()>> {
    let erase_one = |o: PartialObjectMeta<K>| PartialObjectMeta {
        types: o.types,
        metadata: o.metadata,
        _phantom: Default::default(),
    };
    match e {
        Event::Apply(o) => Event::Apply(erase_one(o)),
        Event::Delete(o) => Event::Delete(erase_one(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(erase_one(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// What a watcher stream tells the store.
enum Applied<K> {
    One(K),
    Deleted(K),
    /// A complete listing (after start or a relist).
    All(Vec<K>),
}

/// Drives one watcher stream: buffers a listing until it is complete, applies changes, counts
/// errors (the stream retries with backoff), and reports the first complete listing on `done`.
async fn run<K, S, F>(
    stream: S,
    kind: &'static str,
    done: tokio::sync::mpsc::Sender<()>,
    mut apply: F,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
    F: FnMut(Applied<K>),
{
    let mut stream = std::pin::pin!(stream);
    let mut listing: Vec<K> = Vec::new();
    let mut first = true;
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => listing.push(o),
            Ok(Event::InitDone) => {
                apply(Applied::All(std::mem::take(&mut listing)));
                counter!(K8S_LISTINGS, "kind" => kind).increment(1);
                if first {
                    first = false;
                    let _ = done.send(()).await;
                }
            }
            Ok(Event::Apply(o)) => apply(Applied::One(o)),
            Ok(Event::Delete(o)) => apply(Applied::Deleted(o)),
            Err(e) => {
                counter!(K8S_WATCH_ERRORS, "kind" => kind).increment(1);
                tracing::warn!(kind, error = %e, "Kubernetes watch failed; retrying");
            }
        }
    }
}

fn owner_of(refs: Option<&Vec<OwnerReference>>) -> Option<OwnerRef> {
    let refs = refs?;
    let r = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    Some(OwnerRef {
        kind: r.kind.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
    })
}

/// `None` for a pod that must not be used (excluded by name, or without a uid).
fn pod_record(pod: &Pod, shape: &PodShape) -> Option<PodRecord> {
    let m = &pod.metadata;
    let name = m.name.clone()?;
    if shape.exclude.iter().any(|re| re.is_match(&name)) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    Some(PodRecord {
        name,
        namespace: m.namespace.clone().unwrap_or_default(),
        uid: m.uid.clone()?,
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok()),
        node: spec.and_then(|s| s.node_name.clone()),
        start_time: status
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string()),
        owner: owner_of(m.owner_references.as_ref()),
        labels: if shape.labels {
            m.labels.clone().unwrap_or_default()
        } else {
            Default::default()
        },
        annotations: if shape.annotations {
            m.annotations.clone().unwrap_or_default()
        } else {
            Default::default()
        },
        containers: spec
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| ContainerRecord {
                        name: c.name.clone(),
                        image: c.image.clone().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    })
}

fn owner_record(m: &ObjectMeta) -> Option<OwnerRecord> {
    Some(OwnerRecord {
        name: m.name.clone()?,
        uid: m.uid.clone()?,
        owner: owner_of(m.owner_references.as_ref()),
    })
}

fn object_record(m: &ObjectMeta) -> Option<(String, ObjectRecord)> {
    Some((
        m.name.clone()?,
        ObjectRecord {
            uid: m.uid.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            annotations: m.annotations.clone().unwrap_or_default(),
        },
    ))
}
