//! The agent's `loadbalancing` exporter: every span to its trace's owning gateway.
//!
//! ```text
//! Resolver (static | dns | k8s EndpointSlices) ──endpoints──► RingWatcher (WatchRing, newest epoch)
//!            │                                                     │
//!            └──────────────► Routes::choose (ring, else hash over endpoints) ◄┘
//!                                      │
//! LoadBalancer::consume ─ byte budget ─► split by endpoint ─► OTLP/gRPC per endpoint
//!                                      ▲                         │ retryable failure:
//!                                      └── backoff, re-resolve, route again by the newest routes
//! ```
//!
//! `routes` is pure (unit-tested); the rest runs on tokio time and the pipeline's
//! `net::Network`, so the simulator can drive it.

pub mod balancer;
pub mod collector_ring;
pub mod resolver;
pub mod ring_watch;
pub mod routes;
pub mod telemetry;

pub use balancer::LoadBalancer;

/// The OTLP/gRPC port an endpoint without one is reached at (the collector's default).
pub const OTLP_GRPC_PORT: u16 = 4317;
pub use routes::{ClusterRing, Routes};
