//! An in-process Kubernetes API server for tests: it speaks the real list/watch HTTP protocol
//! with real Kubernetes JSON, so `kube`'s client, watcher and relist paths run unchanged.
//!
//! - `GET <collection>` lists (with `metadata.resourceVersion`), honouring `fieldSelector`
//!   (`a.b=v`, `a.b!=v`) and `labelSelector` (`k=v`, `k!=v`, `k`, `!k`);
//! - `GET <collection>?watch=1&resourceVersion=N` streams `ADDED` / `MODIFIED` / `DELETED`
//!   events after `N` as JSON lines, then live ones;
//! - `...&watch=1&sendInitialEvents=true` is a streaming list (what client-go's informers ask
//!   for since Kubernetes 1.32): an `ADDED` event per object, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end: "true"`, then live events;
//! - [`FakeApiServer::expire_watches`] ends every watch with an `ERROR` event carrying a
//!   `410 Gone` Status and makes older resource versions expired, which forces a relist — as
//!   etcd compaction does.
//!
//! Collections are found from the object's `apiVersion` and `kind`; namespaced paths
//! (`/api/v1/namespaces/{ns}/pods`) filter by namespace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Default)]
struct Collection {
    /// (namespace, name) → object.
    objects: BTreeMap<(String, String), Value>,
    /// Every change, for watches that start at an older resource version.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from this version or older get 410 Gone.
    expired_through: Option<u64>,
    watchers: Vec<Watcher>,
    lists: usize,
    watches: usize,
}

struct Watcher {
    namespace: Option<String>,
    selector: Selector,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct ApiState {
    /// Lists answer after this long (a slow or overloaded API server at agent start).
    list_delay: std::time::Duration,
    resource_version: u64,
    collections: BTreeMap<String, Collection>,
}

/// A running fake API server.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `apiVersion` + `kind` → collection path (`/api/v1/pods`, `/apis/apps/v1/replicasets`).
fn collection_of(api_version: &str, kind: &str) -> String {
    let plural = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

/// Request path → (collection path, namespace).
fn parse_path(path: &str) -> Option<(String, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *segs.first()? {
        "api" if segs.len() >= 3 => (format!("/api/{}", segs[1]), &segs[2..]),
        "apis" if segs.len() >= 4 => (format!("/apis/{}/{}", segs[1], segs[2]), &segs[3..]),
        _ => return None,
    };
    match rest {
        [resource] => Some((format!("{prefix}/{resource}"), None)),
        ["namespaces", ns, resource] => {
            Some((format!("{prefix}/{resource}"), Some(ns.to_string())))
        }
        _ => None,
    }
}

#[derive(Default, Clone)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

#[derive(Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(fields: Option<&String>, labels: Option<&String>) -> Selector {
        let mut s = Selector::default();
        for f in fields
            .into_iter()
            .flat_map(|f| f.split(','))
            .filter(|f| !f.is_empty())
        {
            if let Some((k, v)) = f.split_once("!=") {
                s.fields.push((k.to_string(), false, v.to_string()));
            } else if let Some((k, v)) = f.split_once('=') {
                s.fields
                    .push((k.to_string(), true, v.trim_start_matches('=').to_string()));
            }
        }
        for l in labels
            .into_iter()
            .flat_map(|l| l.split(','))
            .filter(|l| !l.is_empty())
        {
            s.labels.push(if let Some((k, v)) = l.split_once("!=") {
                LabelReq::Ne(k.into(), v.into())
            } else if let Some((k, v)) = l.split_once('=') {
                LabelReq::Eq(k.into(), v.trim_start_matches('=').into())
            } else if let Some(k) = l.strip_prefix('!') {
                LabelReq::Absent(k.into())
            } else {
                LabelReq::Exists(l.into())
            });
        }
        s
    }

    fn matches(&self, obj: &Value) -> bool {
        let field = |path: &str| {
            let mut v = obj;
            for p in path.split('.') {
                v = v.get(p)?;
            }
            v.as_str().map(str::to_string)
        };
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        self.fields.iter().all(|(k, eq, v)| {
            let actual = field(k).unwrap_or_default();
            (actual == *v) == *eq
        }) && self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k).as_deref() == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k).as_deref() != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::Absent(k) => label(k).is_none(),
        })
    }
}

fn namespace_of(obj: &Value) -> String {
    obj.pointer("/metadata/namespace")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

fn line(kind: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("json");
    s.push(b'\n');
    Bytes::from(s)
}

/// Kinds whose collections may be watched before any object of theirs was applied: the
/// end-of-initial-events bookmark names its kind.
const KNOWN_KINDS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("v1", "Namespace"),
    ("v1", "Node"),
    ("v1", "Service"),
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
];

/// The bookmark that ends a streaming list's initial events at resource version `rv`.
fn initial_events_end(collection: &str, rv: u64) -> Bytes {
    let (api_version, kind) = KNOWN_KINDS
        .iter()
        .find(|(v, k)| collection_of(v, k) == collection)
        .copied()
        .unwrap_or(("v1", ""));
    line(
        "BOOKMARK",
        &json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {
                "resourceVersion": rv.to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"}
            }
        }),
    )
}

fn gone() -> Bytes {
    line(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version", "reason": "Expired",
            "code": 410
        }),
    )
}

impl FakeApiServer {
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ApiState::default()));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Client` talking to this server without credentials.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("valid URL"));
        kube::Client::try_from(config).expect("client for the fake API server")
    }

    /// A kubeconfig file's text pointing at this server (for processes under test).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`). Returns its resource version.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let mut st = self.state.lock().expect("fake API state");
        st.resource_version += 1;
        let rv = st.resource_version;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let path = collection_of(
            obj["apiVersion"].as_str().expect("apiVersion"),
            obj["kind"].as_str().expect("kind"),
        );
        let key = (
            namespace_of(&obj),
            obj.pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .expect("metadata.name")
                .to_string(),
        );
        let c = st.collections.entry(path).or_default();
        let kind = if c.objects.insert(key, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.history.push((rv, kind, obj.clone()));
        notify(c, kind, &obj);
        rv
    }

    /// Deletes an object (`DELETED`).
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut st = self.state.lock().expect("fake API state");
        st.resource_version += 1;
        let rv = st.resource_version;
        let c = st
            .collections
            .entry(collection_of(api_version, kind))
            .or_default();
        if let Some(mut obj) = c.objects.remove(&(namespace.to_string(), name.to_string())) {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            c.history.push((rv, "DELETED", obj.clone()));
            notify(c, "DELETED", &obj);
        }
    }

    /// Ends every open watch with `410 Gone` and expires every resource version so far:
    /// clients must relist. Changes made after this are seen only through the relist.
    pub fn expire_watches(&self) {
        let mut st = self.state.lock().expect("fake API state");
        let rv = st.resource_version;
        for c in st.collections.values_mut() {
            c.expired_through = Some(rv);
            c.history.clear();
            for w in c.watchers.drain(..) {
                let _ = w.tx.send(gone());
            }
        }
    }

    /// Makes every list answer `delay` late.
    pub fn delay_lists(&self, delay: std::time::Duration) {
        self.state.lock().expect("fake API state").list_delay = delay;
    }

    /// How many list and watch requests a collection (`/api/v1/pods`) received.
    pub fn requests(&self, collection: &str) -> (usize, usize) {
        let st = self.state.lock().expect("fake API state");
        st.collections
            .get(collection)
            .map(|c| (c.lists, c.watches))
            .unwrap_or_default()
    }
}

fn notify(c: &mut Collection, kind: &str, obj: &Value) {
    let ns = namespace_of(obj);
    c.watchers.retain(|w| {
        if w.namespace.as_ref().is_some_and(|n| *n != ns) || !w.selector.matches(obj) {
            return !w.tx.is_closed();
        }
        w.tx.send(line(kind, obj)).is_ok()
    });
}

async fn handle(
    State(state): State<Arc<Mutex<ApiState>>>,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let Some((path, namespace)) = parse_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "no such resource").into_response();
    };
    let selector = Selector::parse(q.get("fieldSelector"), q.get("labelSelector"));
    let watch = q.get("watch").is_some_and(|w| w == "1" || w == "true");
    let delay = state.lock().expect("fake API state").list_delay;
    if !watch && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = state.lock().expect("fake API state");
    let current = st.resource_version;
    let c = st.collections.entry(path.clone()).or_default();
    let in_scope = |obj: &Value| {
        namespace.as_ref().is_none_or(|n| *n == namespace_of(obj)) && selector.matches(obj)
    };
    if !watch {
        c.lists += 1;
        let items: Vec<Value> = c
            .objects
            .values()
            .filter(|o| in_scope(o))
            .cloned()
            .collect();
        let kind = path.rsplit('/').next().unwrap_or("");
        return axum::Json(json!({
            "apiVersion": "v1",
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": current.to_string()},
            "items": items,
        }))
        .into_response();
    }
    c.watches += 1;
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(current);
    let (tx, rx) = mpsc::unbounded_channel();
    if q.get("sendInitialEvents").is_some_and(|v| v == "true") {
        for obj in c.objects.values().filter(|o| in_scope(o)) {
            let _ = tx.send(line("ADDED", obj));
        }
        let _ = tx.send(initial_events_end(&path, current));
        c.watchers.push(Watcher {
            namespace,
            selector,
            tx,
        });
    } else if c.expired_through.is_some_and(|e| from <= e) {
        let _ = tx.send(gone());
        drop(tx);
    } else {
        for (rv, kind, obj) in &c.history {
            if *rv > from && in_scope(obj) {
                let _ = tx.send(line(kind, obj));
            }
        }
        c.watchers.push(Watcher {
            namespace,
            selector,
            tx,
        });
    }
    let stream = tokio_stream_from(rx).map(Ok::<Bytes, std::io::Error>);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn tokio_stream_from(
    rx: mpsc::UnboundedReceiver<Bytes>,
) -> impl futures::Stream<Item = Bytes> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}
