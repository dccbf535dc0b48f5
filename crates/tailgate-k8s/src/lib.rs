//! Kubernetes metadata for spans: the `k8sattributes` processor.
//!
//! ```text
//! kube watchers (watch) ──► MetadataStore (store) ◄── K8sAttributesStage (processor)
//!   pods of this node          compact records,         pod_association → pod →
//!   ReplicaSets / Jobs         IP / uid / name index    Extractor (extract) → attributes
//!   namespaces / nodes                                   appended to the encoded resource
//! ```
//!
//! `store` and `extract` are pure (time passed in), so unit tests and the simulator drive
//! them directly; `watch` is the only part that talks to the API server, through `kube`.
//! `client` turns `auth_type` into a `kube::Client`; `endpoints` watches a Service's
//! EndpointSlices for the `loadbalancing` exporter's `k8s` resolver; `fake_api` is an
//! in-process API server speaking the real list/watch protocol, for tests.

pub mod client;
pub mod endpoints;
pub mod extract;
pub mod fake_api;
pub mod processor;
pub mod store;
pub mod telemetry;
pub mod watch;

pub use processor::{Enricher, K8sAttributesStage};
pub use store::MetadataStore;
pub use watch::KubeMetadata;
