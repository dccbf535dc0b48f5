//! The agent's components: `processors.k8sattributes` and `exporters.loadbalancing`, with the
//! collector's names, meanings and defaults.

use serde::Deserialize;

use crate::components::OtlpExporterConfig;
use crate::types::{ConfigRegex, GoDuration};

// ---------------------------------------------------------------- k8sattributes

/// Every `extract.metadata` name the processor knows.
pub const K8S_METADATA: &[&str] = &[
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.pod.start_time",
    "k8s.pod.ip",
    "k8s.namespace.name",
    "k8s.node.name",
    "k8s.deployment.name",
    "k8s.deployment.uid",
    "k8s.replicaset.name",
    "k8s.replicaset.uid",
    "k8s.statefulset.name",
    "k8s.statefulset.uid",
    "k8s.daemonset.name",
    "k8s.daemonset.uid",
    "k8s.job.name",
    "k8s.job.uid",
    "k8s.cronjob.name",
    "k8s.cronjob.uid",
    "k8s.container.name",
    "container.image.name",
    "container.image.tag",
];

/// The collector's default `extract.metadata` when none is listed.
pub const K8S_METADATA_DEFAULT: &[&str] = &[
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.pod.start_time",
    "k8s.deployment.name",
    "k8s.node.name",
];

/// `processors.k8sattributes`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct K8sAttributesConfig {
    #[serde(default)]
    pub auth_type: K8sAuthType,
    /// kubeconfig context with `auth_type: kubeConfig`; empty = the current one.
    #[serde(default)]
    pub context: Option<String>,
    /// Only tag `k8s.pod.ip` from the connection; no Kubernetes API access (an agent in front
    /// of a gateway that enriches).
    #[serde(default)]
    pub passthrough: bool,
    #[serde(default)]
    pub filter: K8sFilterConfig,
    #[serde(default)]
    pub extract: K8sExtractConfig,
    /// How a span's resource finds its pod; tried in order, first match wins. Empty = the
    /// collector's default: `k8s.pod.ip`, then `k8s.pod.uid`, then the connection's address.
    #[serde(default)]
    pub pod_association: Vec<K8sPodAssociation>,
    #[serde(default)]
    pub exclude: K8sExcludeConfig,
    /// Spans wait (up to `wait_for_metadata_timeout`) until the first full listing arrived,
    /// instead of leaving unenriched during startup.
    #[serde(default)]
    pub wait_for_metadata: bool,
    /// Default 10s.
    #[serde(default = "default_wait_for_metadata_timeout")]
    pub wait_for_metadata_timeout: GoDuration,
}

fn default_wait_for_metadata_timeout() -> GoDuration {
    GoDuration::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum K8sAuthType {
    /// No credentials (a test API server or `kubectl proxy`): needs a kubeconfig or
    /// `KUBERNETES_SERVICE_HOST`.
    #[serde(rename = "none")]
    None,
    /// The pod's service account token (in-cluster).
    #[default]
    #[serde(rename = "serviceAccount")]
    ServiceAccount,
    /// `$KUBECONFIG` or `~/.kube/config`.
    #[serde(rename = "kubeConfig")]
    KubeConfig,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct K8sFilterConfig {
    /// Only pods on this node (an agent watches its own node).
    #[serde(default)]
    pub node: Option<String>,
    /// The node name from this environment variable (`K8S_NODE_NAME` from the Downward API).
    #[serde(default)]
    pub node_from_env_var: Option<String>,
    /// Only pods in this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Vec<K8sLabelFilter>,
    #[serde(default)]
    pub fields: Vec<K8sFieldFilter>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sLabelFilter {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub op: K8sFilterOp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sFieldFilter {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub op: K8sFilterOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum K8sFilterOp {
    #[default]
    Equals,
    NotEquals,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct K8sExtractConfig {
    /// Empty = [`K8S_METADATA_DEFAULT`].
    #[serde(default)]
    pub metadata: Vec<String>,
    #[serde(default)]
    pub labels: Vec<K8sFieldExtract>,
    #[serde(default)]
    pub annotations: Vec<K8sFieldExtract>,
}

/// One label or annotation to copy into a resource attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sFieldExtract {
    /// Attribute name; default `k8s.<from>.labels.<key>` (or `.annotations.`). With
    /// `key_regex`, `$1`… refer to its capture groups.
    #[serde(default)]
    pub tag_name: Option<String>,
    /// Exact label/annotation key.
    #[serde(default)]
    pub key: Option<String>,
    /// Every key matching this (anchored) regex.
    #[serde(default)]
    pub key_regex: Option<ConfigRegex>,
    #[serde(default)]
    pub from: K8sExtractFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum K8sExtractFrom {
    #[default]
    Pod,
    Namespace,
    Node,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPodAssociation {
    /// All sources must match (e.g. `k8s.pod.name` + `k8s.namespace.name`).
    pub sources: Vec<K8sAssociationSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sAssociationSource {
    pub from: K8sAssociationFrom,
    /// The resource attribute's name (`from: resource_attribute`).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum K8sAssociationFrom {
    ResourceAttribute,
    Connection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sExcludeConfig {
    /// Pods whose name matches one of these regexes are never used for enrichment.
    /// Default: `jaeger-agent`, `jaeger-collector` (as the collector).
    #[serde(default = "default_excluded_pods")]
    pub pods: Vec<K8sExcludePod>,
}

impl Default for K8sExcludeConfig {
    fn default() -> Self {
        K8sExcludeConfig {
            pods: default_excluded_pods(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sExcludePod {
    pub name: ConfigRegex,
}

fn default_excluded_pods() -> Vec<K8sExcludePod> {
    ["jaeger-agent", "jaeger-collector"]
        .iter()
        .map(|n| K8sExcludePod {
            name: ConfigRegex(regex::Regex::new(&format!("^{n}$")).expect("static regex")),
        })
        .collect()
}

// ---------------------------------------------------------------- loadbalancing

/// `exporters.loadbalancing`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancingConfig {
    /// Only `traceID`: every span of a trace goes to one gateway.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    pub protocol: LoadBalancingProtocol,
    pub resolver: ResolverConfig,
    /// Tailgate: the bytes of spans the exporter may hold (queued, in flight, waiting for a
    /// retry) before it refuses new ones retryably. Default 64 MiB.
    #[serde(default = "default_queue_limit_mib")]
    pub queue_limit_mib: u64,
}

fn default_routing_key() -> String {
    "traceID".into()
}
fn default_queue_limit_mib() -> u64 {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancingProtocol {
    /// The `otlp` exporter's settings, used for every resolved endpoint (see
    /// [`OtlpExporterConfig::for_endpoint`]).
    pub otlp: OtlpExporterConfig,
}

/// Exactly one of `static`, `dns`, `k8s`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    #[serde(default, rename = "static")]
    pub static_: Option<StaticResolverConfig>,
    #[serde(default)]
    pub dns: Option<DnsResolverConfig>,
    #[serde(default)]
    pub k8s: Option<K8sResolverConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResolverConfig {
    /// `host:port` (port 4317 when omitted).
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolverConfig {
    pub hostname: String,
    /// Default 4317.
    #[serde(default = "default_otlp_port")]
    pub port: u16,
    /// Re-resolve this often. Default 5s.
    #[serde(default = "default_dns_interval")]
    pub interval: GoDuration,
    /// Default 1s.
    #[serde(default = "default_dns_timeout")]
    pub timeout: GoDuration,
}

fn default_otlp_port() -> u16 {
    4317
}
fn default_dns_interval() -> GoDuration {
    GoDuration::from_secs(5)
}
fn default_dns_timeout() -> GoDuration {
    GoDuration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sResolverConfig {
    /// `name` or `name.namespace` of the (headless) Service in front of the gateways.
    pub service: String,
    /// Default `[4317]`.
    #[serde(default = "default_k8s_ports")]
    pub ports: Vec<u16>,
    /// Per request to the Kubernetes API. Default 1s.
    #[serde(default = "default_dns_timeout")]
    pub timeout: GoDuration,
    /// Use pod hostnames (`pod.service.namespace`) instead of IPs.
    #[serde(default)]
    pub return_hostnames: bool,
}

fn default_k8s_ports() -> Vec<u16> {
    vec![4317]
}

pub(crate) fn validate_k8s(c: &K8sAttributesConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, m) in c.extract.metadata.iter().enumerate() {
        if !K8S_METADATA.contains(&m.as_str()) {
            out.push((
                format!("extract.metadata[{i}]"),
                format!(
                    "unknown metadata `{m}`; supported: {}",
                    K8S_METADATA.join(", ")
                ),
            ));
        }
    }
    for (list, name) in [
        (&c.extract.labels, "labels"),
        (&c.extract.annotations, "annotations"),
    ] {
        for (i, f) in list.iter().enumerate() {
            if f.key.is_some() == f.key_regex.is_some() {
                out.push((
                    format!("extract.{name}[{i}]"),
                    "set exactly one of `key` or `key_regex`".into(),
                ));
            }
        }
    }
    for (i, a) in c.pod_association.iter().enumerate() {
        if a.sources.is_empty() {
            out.push((
                format!("pod_association[{i}].sources"),
                "must not be empty".into(),
            ));
        }
        for (j, s) in a.sources.iter().enumerate() {
            let path = format!("pod_association[{i}].sources[{j}]");
            match (s.from, s.name.as_deref()) {
                (K8sAssociationFrom::ResourceAttribute, None) => {
                    out.push((path, "`from: resource_attribute` needs `name`".into()));
                }
                (K8sAssociationFrom::ResourceAttribute, Some(n))
                    if !K8S_ASSOCIATION_ATTRIBUTES.contains(&n) =>
                {
                    out.push((
                        format!("{path}.name"),
                        format!(
                            "pods are not indexed by `{n}`; supported: {}",
                            K8S_ASSOCIATION_ATTRIBUTES.join(", ")
                        ),
                    ));
                }
                _ => {}
            }
        }
        let names: Vec<&str> = a.sources.iter().filter_map(|s| s.name.as_deref()).collect();
        let by_name = names.contains(&"k8s.pod.name");
        let by_ns = names.contains(&"k8s.namespace.name");
        if by_name != by_ns {
            out.push((
                format!("pod_association[{i}].sources"),
                "`k8s.pod.name` and `k8s.namespace.name` identify a pod only together".into(),
            ));
        }
    }
    if c.filter.node.is_some() && c.filter.node_from_env_var.is_some() {
        out.push((
            "filter.node_from_env_var".into(),
            "conflicts with filter.node: set only one".into(),
        ));
    }
    for (i, l) in c.filter.labels.iter().enumerate() {
        let needs_value = matches!(l.op, K8sFilterOp::Equals | K8sFilterOp::NotEquals);
        if needs_value != l.value.is_some() {
            out.push((
                format!("filter.labels[{i}]"),
                if needs_value {
                    "`value` is required with op equals / not-equals".into()
                } else {
                    "`value` is not allowed with op exists / does-not-exist".into()
                },
            ));
        }
    }
    for (i, f) in c.filter.fields.iter().enumerate() {
        if !matches!(f.op, K8sFilterOp::Equals | K8sFilterOp::NotEquals) {
            out.push((
                format!("filter.fields[{i}].op"),
                "field selectors support only equals and not-equals".into(),
            ));
        }
    }
    if c.wait_for_metadata && c.wait_for_metadata_timeout.is_zero() {
        out.push((
            "wait_for_metadata_timeout".into(),
            "must be greater than 0".into(),
        ));
    }
    out
}

/// Resource attributes `pod_association` can look pods up by.
pub const K8S_ASSOCIATION_ATTRIBUTES: &[&str] = &[
    "k8s.pod.ip",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.namespace.name",
    "host.name",
];

pub(crate) fn validate_loadbalancing(c: &LoadBalancingConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.routing_key != "traceID" {
        out.push((
            "routing_key".into(),
            format!(
                "`{}` is not supported: tail sampling needs every span of a trace at one gateway, use `traceID`",
                c.routing_key
            ),
        ));
    }
    let r = &c.resolver;
    let set = [r.static_.is_some(), r.dns.is_some(), r.k8s.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        out.push((
            "resolver".into(),
            "set exactly one of `static`, `dns`, `k8s`".into(),
        ));
    }
    if let Some(s) = &r.static_
        && s.hostnames.is_empty()
    {
        out.push((
            "resolver.static.hostnames".into(),
            "must not be empty".into(),
        ));
    }
    if let Some(d) = &r.dns {
        if d.hostname.trim().is_empty() {
            out.push(("resolver.dns.hostname".into(), "must not be empty".into()));
        }
        if d.interval.is_zero() {
            out.push((
                "resolver.dns.interval".into(),
                "must be greater than 0".into(),
            ));
        }
    }
    if let Some(k) = &r.k8s {
        if k.service.trim().is_empty() {
            out.push(("resolver.k8s.service".into(), "must not be empty".into()));
        }
        if k.ports.is_empty() {
            out.push(("resolver.k8s.ports".into(), "must not be empty".into()));
        }
    }
    if c.queue_limit_mib == 0 {
        out.push(("queue_limit_mib".into(), "must be greater than 0".into()));
    }
    out
}
