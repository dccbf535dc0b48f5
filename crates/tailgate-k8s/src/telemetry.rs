//! Metric names of the Kubernetes enrichment (documented in `docs/metrics.md`).

/// Gauge: pods the store holds (this node's, plus deleted ones in their grace period).
pub const K8S_PODS: &str = "tailgate_k8s_pods";
/// Counter `{processor, outcome}`: resources seen — `enriched`, `no_identifier` (no association
/// had its values), `pod_unknown` (identified, but no such pod), `passthrough`.
pub const K8S_RESOURCES: &str = "tailgate_k8s_resources_total";
/// Counter `{kind}`: complete listings received (start and every relist, e.g. after 410 Gone).
pub const K8S_LISTINGS: &str = "tailgate_k8s_listings_total";
/// Counter `{kind}`: failed list/watch calls (retried with backoff).
pub const K8S_WATCH_ERRORS: &str = "tailgate_k8s_watch_errors_total";
/// Counter `{processor}`: times `wait_for_metadata` gave up waiting for the first listing.
pub const K8S_METADATA_WAIT_TIMEOUTS: &str = "tailgate_k8s_metadata_wait_timeouts_total";
/// Gauge: pods seen but not indexed because the store was at `PODS_MAX` (their spans pass
/// unenriched). Non-zero means the pod watch is not filtered to this node.
pub const K8S_PODS_OVER_LIMIT: &str = "tailgate_k8s_pods_over_limit";
