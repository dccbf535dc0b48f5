//! The `k8sattributes` stage: finds each resource's pod by `pod_association` and appends the
//! pod's metadata to the encoded resource, once per distinct resource of a request.
//!
//! Existing non-empty attributes are never overwritten (as the collector). A resource whose
//! pod is unknown passes unchanged (counted): enrichment never drops data. With
//! `wait_for_metadata`, requests wait until the watchers' first full listing arrived (at most
//! `wait_for_metadata_timeout` after start) so the first spans after an agent restart are not
//! left bare — the startup race of the reference setup.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use metrics::counter;
use tailgate_config::agent::{K8sAssociationFrom, K8sAttributesConfig};
use tailgate_otlp::wire::put_len_field;
use tailgate_otlp::{AnyValueRef, EncodedSpan, RESOURCE_ATTRIBUTES, ResourceScope, find_attribute};
use tailgate_pipeline::consumer::{BoxFuture, Client, ConsumeError, Consumer};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::extract::Extractor;
use crate::store::{MetadataStore, PodKey};
use crate::telemetry::*;
use crate::watch::KubeMetadata;

/// One `pod_association` entry: every source must give a value.
#[derive(Debug, Clone)]
pub struct Association(Vec<Source>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Attribute(String),
    Connection,
}

impl Association {
    /// The configured associations, or the collector's default.
    pub fn from_config(cfg: &K8sAttributesConfig) -> Vec<Association> {
        if cfg.pod_association.is_empty() {
            return vec![
                Association(vec![Source::Attribute("k8s.pod.ip".into())]),
                Association(vec![Source::Attribute("k8s.pod.uid".into())]),
                Association(vec![Source::Connection]),
            ];
        }
        cfg.pod_association
            .iter()
            .map(|a| {
                Association(
                    a.sources
                        .iter()
                        .map(|s| match s.from {
                            K8sAssociationFrom::Connection => Source::Connection,
                            K8sAssociationFrom::ResourceAttribute => {
                                Source::Attribute(s.name.clone().unwrap_or_default())
                            }
                        })
                        .collect(),
                )
            })
            .collect()
    }

    /// The pod key this association gives for a resource, if all its sources have values.
    /// Also says whether the IP came from the connection.
    fn key(&self, resource: &[u8], client: Option<IpAddr>) -> Option<(PodKey, bool)> {
        let mut ip = None;
        let mut from_connection = false;
        let mut uid = None;
        let mut name = None;
        let mut namespace = None;
        for s in &self.0 {
            match s {
                Source::Connection => {
                    ip = Some(client?);
                    from_connection = true;
                }
                Source::Attribute(attr) => {
                    let value = string_attribute(resource, attr)?;
                    match attr.as_str() {
                        "k8s.pod.ip" | "host.name" => ip = Some(value.parse().ok()?),
                        "k8s.pod.uid" => uid = Some(value.to_string()),
                        "k8s.pod.name" => name = Some(value.to_string()),
                        "k8s.namespace.name" => namespace = Some(value.to_string()),
                        _ => return None,
                    }
                }
            }
        }
        if let Some(uid) = uid {
            return Some((PodKey::Uid(uid), false));
        }
        if let (Some(n), Some(ns)) = (name, namespace) {
            return Some((PodKey::Name(n, ns), false));
        }
        ip.map(|ip| (PodKey::Ip(ip), from_connection))
    }
}

fn string_attribute<'a>(resource: &'a [u8], key: &str) -> Option<&'a str> {
    match find_attribute(resource, RESOURCE_ATTRIBUTES, key)? {
        AnyValueRef::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// Appends `key = value` (string) to an encoded `Resource`: repeated fields may be written
/// in pieces, so appending one more `attributes` entry is a valid message.
fn append_attribute(resource: &mut Vec<u8>, key: &str, value: &str) {
    let mut any = Vec::with_capacity(value.len() + 2);
    put_len_field(&mut any, 1, value.as_bytes());
    let mut kv = Vec::with_capacity(key.len() + any.len() + 4);
    put_len_field(&mut kv, 1, key.as_bytes());
    put_len_field(&mut kv, 2, &any);
    put_len_field(resource, RESOURCE_ATTRIBUTES, &kv);
}

/// The pure part of the stage: resource in, enriched resource out.
#[derive(Debug, Clone)]
pub struct Enricher {
    associations: Vec<Association>,
    extractor: Extractor,
    passthrough: bool,
}

/// What happened to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Enriched,
    /// No association had all its values.
    NoIdentifier,
    /// Identified, but no such pod is known (yet).
    PodUnknown,
    /// `passthrough`: only the connection's IP was tagged.
    Passthrough,
}

impl Enricher {
    pub fn new(cfg: &K8sAttributesConfig) -> Self {
        Enricher {
            associations: Association::from_config(cfg),
            extractor: Extractor::new(cfg),
            passthrough: cfg.passthrough,
        }
    }

    pub fn extractor(&self) -> &Extractor {
        &self.extractor
    }

    /// The enriched resource, or `None` when nothing was added.
    pub fn enrich(
        &self,
        store: &MetadataStore,
        resource: &[u8],
        client: Option<IpAddr>,
    ) -> (Option<Bytes>, Outcome) {
        let mut out = resource.to_vec();
        let add = |out: &mut Vec<u8>, k: &str, v: &str| {
            if string_attribute(resource, k).is_none() {
                append_attribute(out, k, v);
            }
        };
        if self.passthrough {
            let key = self
                .associations
                .iter()
                .find_map(|a| a.key(resource, client));
            if let Some((PodKey::Ip(ip), true)) = key {
                add(&mut out, "k8s.pod.ip", &ip.to_string());
            }
            return (changed(resource, out), Outcome::Passthrough);
        }
        let mut identified = false;
        for a in &self.associations {
            let Some((key, from_connection)) = a.key(resource, client) else {
                continue;
            };
            identified = true;
            let Some(pod) = store.pod(&key) else { continue };
            if from_connection && let PodKey::Ip(ip) = key {
                add(&mut out, "k8s.pod.ip", &ip.to_string());
            }
            let container = string_attribute(resource, "k8s.container.name");
            for (k, v) in self.extractor.attributes(store, pod, container) {
                add(&mut out, &k, &v);
            }
            return (changed(resource, out), Outcome::Enriched);
        }
        let outcome = if identified {
            Outcome::PodUnknown
        } else {
            Outcome::NoIdentifier
        };
        (None, outcome)
    }
}

fn changed(before: &[u8], after: Vec<u8>) -> Option<Bytes> {
    (after.len() != before.len()).then(|| Bytes::from(after))
}

/// Set once the watchers' first full listing is in the store.
pub type Synced = watch::Receiver<bool>;

/// The `k8sattributes` pipeline stage.
pub struct K8sAttributesStage {
    name: String,
    enricher: Enricher,
    store: Arc<RwLock<MetadataStore>>,
    /// The watchers feeding `store`; they stop with the stage.
    _metadata: KubeMetadata,
    /// `Some` with `wait_for_metadata`: wait for the flag until the deadline.
    wait: Option<(Synced, Instant)>,
    next: Arc<dyn Consumer>,
}

impl K8sAttributesStage {
    pub fn new(
        name: String,
        cfg: &K8sAttributesConfig,
        metadata: KubeMetadata,
        next: Arc<dyn Consumer>,
    ) -> Self {
        let wait = cfg.wait_for_metadata.then(|| {
            (
                metadata.synced.clone(),
                Instant::now() + cfg.wait_for_metadata_timeout.0,
            )
        });
        K8sAttributesStage {
            name,
            enricher: Enricher::new(cfg),
            store: Arc::clone(&metadata.store),
            _metadata: metadata,
            wait,
            next,
        }
    }

    async fn wait_for_metadata(&self) {
        let Some((synced, deadline)) = &self.wait else {
            return;
        };
        if *synced.borrow() {
            return;
        }
        let mut synced = synced.clone();
        let waited = tokio::time::timeout_at(*deadline, synced.wait_for(|s| *s)).await;
        if waited.is_err() {
            counter!(K8S_METADATA_WAIT_TIMEOUTS, "processor" => self.name.clone()).increment(1);
        }
    }

    fn enrich(&self, spans: &mut [EncodedSpan], client: Client) {
        let store = self
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Spans of one ScopeSpans share an Arc: enrich each distinct context once.
        let mut done: HashMap<*const ResourceScope, Arc<ResourceScope>> = HashMap::new();
        let mut outcomes = [0u64; 4];
        for span in spans.iter_mut() {
            let ptr = Arc::as_ptr(&span.context);
            let ctx = done.entry(ptr).or_insert_with(|| {
                let (resource, outcome) =
                    self.enricher
                        .enrich(&store, &span.context.resource, client.addr);
                outcomes[outcome as usize] += 1;
                match resource {
                    Some(resource) => Arc::new(ResourceScope {
                        resource,
                        ..(*span.context).clone()
                    }),
                    None => Arc::clone(&span.context),
                }
            });
            span.context = Arc::clone(ctx);
        }
        for (outcome, n) in [
            (Outcome::Enriched, "enriched"),
            (Outcome::NoIdentifier, "no_identifier"),
            (Outcome::PodUnknown, "pod_unknown"),
            (Outcome::Passthrough, "passthrough"),
        ] {
            let count = outcomes[outcome as usize];
            if count > 0 {
                counter!(K8S_RESOURCES, "processor" => self.name.clone(), "outcome" => n)
                    .increment(count);
            }
        }
    }
}

impl Consumer for K8sAttributesStage {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.consume_from(spans, Client::default())
    }

    fn consume_from(
        &self,
        mut spans: Vec<EncodedSpan>,
        client: Client,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            self.wait_for_metadata().await;
            self.enrich(&mut spans, client);
            self.next.consume_from(spans, client).await
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        self.next.shutdown(deadline)
    }
}
