//! [`Routes`]: which endpoint each trace goes to. Pure.
//!
//! With a gateway cluster the agent routes by the cluster's ring — the same `Ring` (owners,
//! epoch, 128 virtual nodes, `trace_key`) the gateways compute, so the agent sends each span
//! straight to its owner. Against plain OTLP backends (no `WatchRing`), or before the first
//! ring arrives, it hashes over the resolved endpoints exactly as the collector's
//! `loadbalancing` exporter does ([`CollectorRing`]), so collector and Tailgate agents in one
//! fleet send every trace to the same backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use tailgate_otlp::EncodedSpan;
use tailgate_ring::Ring;

use crate::collector_ring::CollectorRing;

/// A ring from `WatchRing`: owner names and their OTLP addresses.
#[derive(Debug, Clone)]
pub struct ClusterRing {
    pub ring: Arc<Ring>,
    /// Owner name → OTLP `host:port`.
    pub addrs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub enum Routes {
    /// Route by the gateways' ring (epoch > 0).
    Cluster(ClusterRing),
    /// The collector's consistent hashing over the resolved endpoints (epoch 0).
    Endpoints(Arc<CollectorRing>),
    /// Nothing resolved yet.
    Nothing,
}

impl Routes {
    /// The cluster's ring if there is one, else hashing over `endpoints`.
    pub fn choose(ring: Option<&ClusterRing>, endpoints: &[String]) -> Routes {
        match ring {
            Some(r) if !r.ring.is_empty() => Routes::Cluster(r.clone()),
            _ if !endpoints.is_empty() => {
                Routes::Endpoints(Arc::new(CollectorRing::new(endpoints)))
            }
            _ => Routes::Nothing,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Routes::Cluster(r) => r.ring.epoch(),
            _ => 0,
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Routes::Cluster(_) => "ring",
            Routes::Endpoints(_) => "hash",
            Routes::Nothing => "none",
        }
    }

    /// The endpoint (`host:port`) a trace goes to.
    pub fn endpoint_for(&self, span: &EncodedSpan) -> Option<&str> {
        match self {
            Routes::Cluster(r) => {
                let owner = r.ring.owner(&span.meta.trace_id)?;
                r.addrs.get(owner).map(String::as_str)
            }
            Routes::Endpoints(ring) => ring.endpoint_for(&span.meta.trace_id.0),
            Routes::Nothing => None,
        }
    }

    /// Spans grouped by endpoint (ordered), and the spans no endpoint takes.
    pub fn split(
        &self,
        spans: Vec<EncodedSpan>,
    ) -> (BTreeMap<String, Vec<EncodedSpan>>, Vec<EncodedSpan>) {
        let mut groups: BTreeMap<String, Vec<EncodedSpan>> = BTreeMap::new();
        let mut unroutable = Vec::new();
        for span in spans {
            match self.endpoint_for(&span) {
                Some(ep) => match groups.get_mut(ep) {
                    Some(g) => g.push(span),
                    None => {
                        groups.insert(ep.to_string(), vec![span]);
                    }
                },
                None => unroutable.push(span),
            }
        }
        (groups, unroutable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailgate_otlp::{ResourceScope, SpanId, SpanMeta, StatusCode, TraceId};

    fn span(trace: u8, id: u8) -> EncodedSpan {
        let mut t = [0u8; 16];
        t[15] = trace;
        t[3] = trace.wrapping_mul(31);
        EncodedSpan::new(
            Arc::new(ResourceScope::default()),
            Default::default(),
            SpanMeta {
                trace_id: TraceId(t),
                span_id: SpanId([id; 8]),
                parent_span_id: None,
                start_time_unix_nano: 0,
                end_time_unix_nano: 0,
                status_code: StatusCode::UNSET,
                kind: 0,
                flags: 0,
            },
        )
    }

    #[test]
    fn every_span_of_a_trace_goes_to_the_owner_the_gateways_compute() {
        let owners = ["g0", "g1", "g2"].map(String::from);
        let ring = Ring::new(7, owners.clone());
        let addrs = owners
            .iter()
            .enumerate()
            .map(|(i, o)| (o.clone(), format!("10.0.0.{i}:4317")))
            .collect();
        let ring = Arc::new(ring);
        let routes = Routes::choose(
            Some(&ClusterRing {
                ring: Arc::clone(&ring),
                addrs,
            }),
            &[],
        );
        assert_eq!(routes.epoch(), 7);
        let spans: Vec<EncodedSpan> = (0..200u8)
            .flat_map(|t| (1..4).map(move |s| span(t, s)))
            .collect();
        let (groups, unroutable) = routes.split(spans);
        assert!(unroutable.is_empty());
        assert_eq!(groups.len(), 3, "200 traces spread over all owners");
        for (ep, spans) in &groups {
            for s in spans {
                let owner = ring.owner(&s.meta.trace_id).unwrap();
                let i = owners.iter().position(|o| o == owner).unwrap();
                assert_eq!(ep, &format!("10.0.0.{i}:4317"));
            }
        }
    }

    #[test]
    fn without_a_ring_traces_hash_over_the_endpoints_and_nothing_resolved_routes_nothing() {
        let eps = vec!["a:4317".to_string(), "b:4317".to_string()];
        let routes = Routes::choose(None, &eps);
        assert_eq!(routes.mode(), "hash");
        let (groups, _) = routes.split((0..50u8).map(|t| span(t, 1)).collect());
        let again = Routes::choose(None, &eps);
        for (ep, spans) in groups {
            for s in spans {
                assert_eq!(again.endpoint_for(&s), Some(ep.as_str()), "stable");
            }
        }
        let (g, un) = Routes::choose(None, &[]).split(vec![span(1, 1)]);
        assert!(g.is_empty());
        assert_eq!(un.len(), 1);
    }
}
