//! Metric names of the agent's routing (documented in `docs/metrics.md`). Sent and failed
//! spans use the collector's exporter metrics with `exporter="loadbalancing"`.

/// Gauge: the ring epoch the agent routes by (0 = hashing over endpoints).
pub const ROUTING_EPOCH: &str = "tailgate_routing_epoch";
/// Gauge: 1 while routing by the gateways' ring, 0 while hashing over resolved endpoints.
pub const ROUTING_MODE_RING: &str = "tailgate_routing_ring_mode";
/// Counter: ring updates adopted.
pub const ROUTING_RING_UPDATES: &str = "tailgate_routing_ring_updates_total";
/// Gauge: endpoints the resolver returned.
pub const ROUTING_ENDPOINTS: &str = "tailgate_routing_endpoints";
/// Counter `{resolver}`: failed resolutions (the last endpoints stay in use).
pub const ROUTING_RESOLVE_FAILURES: &str = "tailgate_routing_resolve_failures_total";
/// Counter `{exporter}`: spans routed again after a retryable send failure.
pub const ROUTING_REROUTED_SPANS: &str = "tailgate_routing_rerouted_spans_total";
/// Counter `{exporter}`: spans that waited because no endpoint was known.
pub const ROUTING_NO_ROUTE_WAITS: &str = "tailgate_routing_no_route_waits_total";
/// Gauge `{exporter}`: bytes of spans held (queued, in flight, waiting to retry).
pub const ROUTING_QUEUE_BYTES: &str = "tailgate_routing_queue_bytes";
