//! [`Extractor`]: which resource attributes a pod gives a span, per `extract` settings.
//! Pure: reads a [`MetadataStore`], returns `(name, value)` pairs in a fixed order.

use regex::Regex;
use tailgate_config::agent::{
    K8S_METADATA_DEFAULT, K8sAttributesConfig, K8sExtractFrom, K8sFieldExtract,
};

use crate::store::{MetadataStore, PodRecord};

#[derive(Debug, Clone)]
struct FieldRule {
    from: K8sExtractFrom,
    tag_name: Option<String>,
    key: KeyMatch,
}

#[derive(Debug, Clone)]
enum KeyMatch {
    Exact(String),
    Regex(Regex),
}

/// What to read from a pod, its owners, namespace and node.
#[derive(Debug, Clone)]
pub struct Extractor {
    metadata: Vec<String>,
    labels: Vec<FieldRule>,
    annotations: Vec<FieldRule>,
}

/// What the extractor needs from the watchers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub replica_sets: bool,
    pub jobs: bool,
    pub namespaces: bool,
    pub nodes: bool,
}

fn rules(list: &[K8sFieldExtract]) -> Vec<FieldRule> {
    list.iter()
        .map(|f| FieldRule {
            from: f.from,
            tag_name: f.tag_name.clone(),
            key: match (&f.key, &f.key_regex) {
                (Some(k), _) => KeyMatch::Exact(k.clone()),
                (None, Some(r)) => {
                    // Anchored, as the collector matches whole keys.
                    let anchored = format!("^(?:{})$", r.0.as_str());
                    KeyMatch::Regex(Regex::new(&anchored).unwrap_or_else(|_| r.0.clone()))
                }
                (None, None) => KeyMatch::Exact(String::new()),
            },
        })
        .collect()
}

impl Extractor {
    pub fn new(cfg: &K8sAttributesConfig) -> Self {
        let metadata = if cfg.extract.metadata.is_empty() {
            K8S_METADATA_DEFAULT
                .iter()
                .map(ToString::to_string)
                .collect()
        } else {
            cfg.extract.metadata.clone()
        };
        Extractor {
            metadata,
            labels: rules(&cfg.extract.labels),
            annotations: rules(&cfg.extract.annotations),
        }
    }

    pub fn needs(&self) -> Needs {
        let m = |names: &[&str]| self.metadata.iter().any(|n| names.contains(&n.as_str()));
        let from = |f: K8sExtractFrom| {
            self.labels
                .iter()
                .chain(&self.annotations)
                .any(|r| r.from == f)
        };
        Needs {
            replica_sets: m(&["k8s.deployment.name", "k8s.deployment.uid"]),
            jobs: m(&["k8s.cronjob.name", "k8s.cronjob.uid"]),
            namespaces: from(K8sExtractFrom::Namespace),
            nodes: from(K8sExtractFrom::Node),
        }
    }

    /// The attributes `pod` gives. `container` is the resource's `k8s.container.name`, if any:
    /// container attributes need it, or a pod with a single container.
    pub fn attributes(
        &self,
        store: &MetadataStore,
        pod: &PodRecord,
        container: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let owner_of_kind = |kind: &str| pod.owner.as_ref().filter(|o| o.kind == kind);
        let replica_set = owner_of_kind("ReplicaSet");
        let deployment = replica_set
            .and_then(|rs| store.replica_set(&rs.uid))
            .and_then(|rs| rs.owner.as_ref())
            .filter(|o| o.kind == "Deployment");
        let job = owner_of_kind("Job");
        let cronjob = job
            .and_then(|j| store.job(&j.uid))
            .and_then(|j| j.owner.as_ref())
            .filter(|o| o.kind == "CronJob");
        let the_container = match container {
            Some(name) => pod.containers.iter().find(|c| c.name == name),
            None if pod.containers.len() == 1 => pod.containers.first(),
            None => None,
        };
        for name in &self.metadata {
            let value: Option<String> = match name.as_str() {
                "k8s.pod.name" => Some(pod.name.clone()),
                "k8s.pod.uid" => Some(pod.uid.clone()),
                "k8s.pod.start_time" => pod.start_time.clone(),
                "k8s.pod.ip" => pod.ip.map(|ip| ip.to_string()),
                "k8s.namespace.name" => Some(pod.namespace.clone()),
                "k8s.node.name" => pod.node.clone(),
                "k8s.replicaset.name" => replica_set.map(|o| o.name.clone()),
                "k8s.replicaset.uid" => replica_set.map(|o| o.uid.clone()),
                "k8s.deployment.name" => deployment.map(|o| o.name.clone()),
                "k8s.deployment.uid" => deployment.map(|o| o.uid.clone()),
                "k8s.statefulset.name" => owner_of_kind("StatefulSet").map(|o| o.name.clone()),
                "k8s.statefulset.uid" => owner_of_kind("StatefulSet").map(|o| o.uid.clone()),
                "k8s.daemonset.name" => owner_of_kind("DaemonSet").map(|o| o.name.clone()),
                "k8s.daemonset.uid" => owner_of_kind("DaemonSet").map(|o| o.uid.clone()),
                "k8s.job.name" => job.map(|o| o.name.clone()),
                "k8s.job.uid" => job.map(|o| o.uid.clone()),
                "k8s.cronjob.name" => cronjob.map(|o| o.name.clone()),
                "k8s.cronjob.uid" => cronjob.map(|o| o.uid.clone()),
                "k8s.container.name" => the_container.map(|c| c.name.clone()),
                "container.image.name" => the_container.map(|c| split_image(&c.image).0),
                "container.image.tag" => the_container.and_then(|c| split_image(&c.image).1),
                _ => None,
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                out.push((name.clone(), v));
            }
        }
        self.labels_and_annotations(store, pod, &mut out);
        out
    }

    /// `extract.labels` and `extract.annotations` of the pod, its namespace and its node.
    fn labels_and_annotations(
        &self,
        store: &MetadataStore,
        pod: &PodRecord,
        out: &mut Vec<(String, String)>,
    ) {
        let ns = store.namespace(&pod.namespace);
        let node = pod.node.as_deref().and_then(|n| store.node(n));
        for (rules, what) in [(&self.labels, "labels"), (&self.annotations, "annotations")] {
            for rule in rules {
                let source = match rule.from {
                    K8sExtractFrom::Pod => Some(if what == "labels" {
                        &pod.labels
                    } else {
                        &pod.annotations
                    }),
                    K8sExtractFrom::Namespace => ns.map(|o| {
                        if what == "labels" {
                            &o.labels
                        } else {
                            &o.annotations
                        }
                    }),
                    K8sExtractFrom::Node => node.map(|o| {
                        if what == "labels" {
                            &o.labels
                        } else {
                            &o.annotations
                        }
                    }),
                };
                let Some(source) = source else { continue };
                let prefix = match rule.from {
                    K8sExtractFrom::Pod => "k8s.pod",
                    K8sExtractFrom::Namespace => "k8s.namespace",
                    K8sExtractFrom::Node => "k8s.node",
                };
                match &rule.key {
                    KeyMatch::Exact(k) => {
                        if let Some(v) = source.get(k) {
                            let tag = rule
                                .tag_name
                                .clone()
                                .unwrap_or_else(|| format!("{prefix}.{what}.{k}"));
                            out.push((tag, v.clone()));
                        }
                    }
                    KeyMatch::Regex(re) => {
                        for (k, v) in source {
                            let Some(caps) = re.captures(k) else { continue };
                            let tag = match &rule.tag_name {
                                Some(t) => {
                                    let mut expanded = String::new();
                                    caps.expand(t, &mut expanded);
                                    expanded
                                }
                                None => format!("{prefix}.{what}.{k}"),
                            };
                            out.push((tag, v.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// `registry/repo/name:tag@digest` → (`registry/repo/name`, `tag`). A registry port's colon
/// is not a tag separator.
fn split_image(image: &str) -> (String, Option<String>) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match without_digest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (
                without_digest[..at].to_string(),
                Some(without_digest[at + 1..].to_string()),
            )
        }
        // An image without a tag runs `latest`.
        None => (without_digest.to_string(), Some("latest".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(
            split_image("ghcr.io/acme/checkout:1.4.2"),
            ("ghcr.io/acme/checkout".into(), Some("1.4.2".into()))
        );
        assert_eq!(
            split_image("registry:5000/app"),
            ("registry:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            split_image("nginx:1.27@sha256:abc"),
            ("nginx".into(), Some("1.27".into()))
        );
    }
}
