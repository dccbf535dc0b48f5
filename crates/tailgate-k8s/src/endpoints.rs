//! A Service's ready endpoints, from its EndpointSlices: what the `loadbalancing` exporter's
//! `k8s` resolver routes to.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use metrics::counter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::telemetry::{K8S_LISTINGS, K8S_WATCH_ERRORS};

/// `host:port` of every ready endpoint of the Service, for every port, sorted.
pub type Endpoints = Vec<String>;

/// Watches `service` (`name` or `name.namespace`; the client's namespace when omitted).
pub struct ServiceEndpoints {
    pub endpoints: watch::Receiver<Endpoints>,
    task: JoinHandle<()>,
}

impl Drop for ServiceEndpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceEndpoints {
    pub fn start(
        client: kube::Client,
        service: &str,
        ports: &[u16],
        return_hostnames: bool,
    ) -> ServiceEndpoints {
        let (name, namespace) = match service.split_once('.') {
            Some((n, ns)) => (n.to_string(), ns.to_string()),
            None => (service.to_string(), client.default_namespace().to_string()),
        };
        let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={name}"));
        let (tx, rx) = watch::channel(Vec::new());
        let ports = ports.to_vec();
        let task = tokio::spawn(async move {
            let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            let mut listing: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            while let Some(ev) = stream.next().await {
                let key = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
                match ev {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(s)) => {
                        listing.insert(key(&s), s);
                    }
                    Ok(Event::InitDone) => {
                        slices = std::mem::take(&mut listing);
                        counter!(K8S_LISTINGS, "kind" => "endpointslice").increment(1);
                    }
                    Ok(Event::Apply(s)) => {
                        slices.insert(key(&s), s);
                    }
                    Ok(Event::Delete(s)) => {
                        slices.remove(&key(&s));
                    }
                    Err(e) => {
                        counter!(K8S_WATCH_ERRORS, "kind" => "endpointslice").increment(1);
                        tracing::warn!(error = %e, "EndpointSlice watch failed; retrying");
                        continue;
                    }
                }
                let eps = endpoints(&slices, &name, &namespace, &ports, return_hostnames);
                tx.send_if_modified(|cur| {
                    let changed = *cur != eps;
                    *cur = eps;
                    changed
                });
            }
        });
        ServiceEndpoints {
            endpoints: rx,
            task,
        }
    }
}

/// Ready endpoints × ports. An endpoint without a `ready` condition counts as ready (the API's
/// own rule).
pub fn endpoints(
    slices: &BTreeMap<String, EndpointSlice>,
    service: &str,
    namespace: &str,
    ports: &[u16],
    return_hostnames: bool,
) -> Endpoints {
    let mut out = BTreeSet::new();
    for slice in slices.values() {
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            let hosts: Vec<String> = match (&ep.hostname, return_hostnames) {
                (Some(h), true) => vec![format!("{h}.{service}.{namespace}")],
                _ => ep.addresses.clone(),
            };
            for host in hosts {
                for port in ports {
                    if host.contains(':') && !host.starts_with('[') {
                        out.insert(format!("[{host}]:{port}"));
                    } else {
                        out.insert(format!("{host}:{port}"));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}
