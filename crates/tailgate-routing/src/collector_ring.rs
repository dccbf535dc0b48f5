//! The collector's `loadbalancing` ring, reproduced exactly, for routing to plain OTLP backends:
//! a fleet where some agents are collectors and some are Tailgate must send every trace to the
//! same backend, or traces split. Pure.
//!
//! As the collector v0.161.0 builds it (`exporter/loadbalancingexporter/consistent_hashing.go`,
//! pinned by a test against the reference collector itself, `tests/e2e/mixed_fleet.rs`):
//! each endpoint string — as its resolver spells it, a static hostname verbatim — gets
//! [`POINTS_PER_ENDPOINT`] points at `crc32(endpoint ‖ u32le(i)) mod` [`RING_POSITIONS`];
//! points are ordered by (position, hash, endpoint) and a point whose position is taken moves
//! to the next free one, at most [`COLLISION_PROBES_MAX`] steps on (else it is left out). A
//! trace goes to the first point at or after `crc32(its 16 ID bytes) mod RING_POSITIONS`,
//! wrapping to the first point.

use std::collections::HashSet;

/// Positions on the ring.
pub const RING_POSITIONS: u32 = 131_071;
/// Points each endpoint puts on the ring.
pub const POINTS_PER_ENDPOINT: u32 = 200;
/// How far a colliding point may move to a free position.
pub const COLLISION_PROBES_MAX: u32 = 10;

/// One point: its position and the endpoint that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Point {
    position: u32,
    endpoint: usize,
}

/// The ring over a set of endpoint strings.
#[derive(Debug, Clone)]
pub struct CollectorRing {
    endpoints: Vec<String>,
    /// Sorted by position, positions distinct.
    points: Vec<Point>,
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

impl CollectorRing {
    pub fn new(endpoints: &[String]) -> CollectorRing {
        let mut candidates: Vec<(u32, u32, usize)> = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            for i in 0..POINTS_PER_ENDPOINT {
                let hash = crc32(&[endpoint.as_bytes(), &i.to_le_bytes()]);
                candidates.push((hash % RING_POSITIONS, hash, index));
            }
        }
        candidates.sort_by(|a, b| (a.0, a.1, &endpoints[a.2]).cmp(&(b.0, b.1, &endpoints[b.2])));
        let mut taken: HashSet<u32> = HashSet::with_capacity(candidates.len());
        let mut points = Vec::with_capacity(candidates.len());
        for (position, _, endpoint) in candidates {
            let mut at = position;
            let mut probes = 0;
            while taken.contains(&at) && probes < COLLISION_PROBES_MAX {
                at = (at + 1) % RING_POSITIONS;
                probes += 1;
            }
            if probes >= COLLISION_PROBES_MAX {
                continue;
            }
            taken.insert(at);
            points.push(Point {
                position: at,
                endpoint,
            });
        }
        points.sort_by_key(|p| p.position);
        CollectorRing {
            endpoints: endpoints.to_vec(),
            points,
        }
    }

    /// The endpoint a trace goes to; `None` on an empty ring.
    pub fn endpoint_for(&self, trace_id: &[u8; 16]) -> Option<&str> {
        let position = crc32(&[trace_id]) % RING_POSITIONS;
        let at = self.points.partition_point(|p| p.position < position);
        let point = self.points.get(at).or_else(|| self.points.first())?;
        Some(&self.endpoints[point.endpoint])
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(eps: &[&str]) -> CollectorRing {
        CollectorRing::new(&eps.iter().map(ToString::to_string).collect::<Vec<_>>())
    }

    #[test]
    fn every_endpoint_gets_its_points_and_lookups_wrap_past_the_last() {
        let r = ring(&["gw-0:4317", "gw-1:4317", "gw-2:4317"]);
        assert_eq!(r.points.len(), 3 * POINTS_PER_ENDPOINT as usize);
        assert!(r.points.windows(2).all(|w| w[0].position < w[1].position));
        // A trace past the last point goes to the first point's endpoint.
        let last = r.points.last().unwrap().position;
        let beyond = (0u32..)
            .map(|n| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&n.to_le_bytes());
                id
            })
            .find(|id| crc32(&[id]) % RING_POSITIONS > last)
            .unwrap();
        assert_eq!(
            r.endpoint_for(&beyond),
            Some(r.endpoints[r.points[0].endpoint].as_str())
        );
    }

    #[test]
    fn endpoint_order_does_not_matter_and_traces_spread_over_all() {
        let a = ring(&["b:4317", "a:4317", "c:4317"]);
        let b = ring(&["c:4317", "b:4317", "a:4317"]);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0u32..300 {
            let mut id = [7u8; 16];
            id[12..].copy_from_slice(&n.to_be_bytes());
            assert_eq!(a.endpoint_for(&id), b.endpoint_for(&id));
            seen.insert(a.endpoint_for(&id).unwrap().to_string());
        }
        assert_eq!(seen.len(), 3);
        assert!(ring(&[]).endpoint_for(&[0; 16]).is_none());
    }
}
