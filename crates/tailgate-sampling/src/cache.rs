//! The decision cache: which traces were kept or dropped, remembered after their spans are
//! gone so late spans follow the decision. Bounded (oldest entries leave first) and expiring.
//! Evicted IDs are remembered a while longer, more cheaply, so a late span whose decision was
//! forgotten is counted apart from a genuinely new trace.
//!
//! Kept decisions also remember the IDs of the spans already released (up to
//! [`RELEASED_IDS_MAX`] per trace): a span that arrives again — a resent forward or handoff
//! whose acknowledgement was lost — is recognised and not exported twice.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tailgate_otlp::{SpanId, TraceId};

use crate::tracestate::Threshold;
use crate::{IdMap, IdSet};

/// Most span IDs remembered per kept trace (8 bytes each).
pub const RELEASED_IDS_MAX: usize = 4096;

/// A remembered decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDecision {
    pub keep: bool,
    pub decided_at: Duration,
    /// Index of the deciding policy, for `record_policy` on late spans.
    pub policy: Option<usize>,
    /// The effective threshold of a kept trace (thresholds on), recorded on late spans too.
    pub threshold: Option<Threshold>,
}

#[derive(Debug)]
struct Bounded {
    capacity: usize,
    map: IdMap<TraceId, CachedDecision>,
    order: VecDeque<(TraceId, Duration)>,
}

impl Bounded {
    fn new(capacity: usize) -> Self {
        Bounded {
            capacity,
            map: IdMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Inserts; returns the IDs evicted to make room.
    fn insert(&mut self, id: TraceId, d: CachedDecision, evicted: &mut Vec<TraceId>) {
        if self.capacity == 0 {
            evicted.push(id);
            return;
        }
        self.map.insert(id, d);
        self.order.push_back((id, d.decided_at));
        while self.map.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            // Only evict if this queue entry is the live one (re-inserted IDs have newer
            // entries). One lookup: the map is large and each probe a likely cache miss.
            if let Entry::Occupied(e) = self.map.entry(old)
                && e.get().decided_at == at
            {
                e.remove();
                evicted.push(old);
            }
        }
    }

    fn expire(&mut self, now: Duration, ttl: Duration, evicted: &mut Vec<TraceId>) {
        while let Some(&(id, at)) = self.order.front() {
            if now.saturating_sub(at) <= ttl {
                break;
            }
            self.order.pop_front();
            if let Entry::Occupied(e) = self.map.entry(id)
                && e.get().decided_at == at
            {
                e.remove();
                evicted.push(id);
            }
        }
    }
}

#[derive(Debug)]
pub struct DecisionCache {
    kept: Bounded,
    dropped: Bounded,
    /// Span IDs released for kept traces (sorted), while their decision is remembered.
    released: IdMap<TraceId, Vec<SpanId>>,
    ttl: Duration,
    forgotten: IdSet<TraceId>,
    forgotten_order: VecDeque<TraceId>,
    forgotten_capacity: usize,
}

impl DecisionCache {
    pub fn new(kept_capacity: usize, dropped_capacity: usize, ttl: Duration) -> Self {
        DecisionCache {
            kept: Bounded::new(kept_capacity),
            dropped: Bounded::new(dropped_capacity),
            released: IdMap::default(),
            ttl,
            forgotten: IdSet::default(),
            forgotten_order: VecDeque::new(),
            forgotten_capacity: (kept_capacity + dropped_capacity).max(1024),
        }
    }

    pub fn len(&self) -> usize {
        self.kept.map.len() + self.dropped.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers evicted IDs as forgotten. `from_kept`: they left the kept map, so the span
    /// IDs released for them go too; IDs leaving the dropped map never have any (released
    /// IDs are recorded only while a trace is in the kept map, and dropped with it).
    fn forget(&mut self, ids: Vec<TraceId>, from_kept: bool) {
        for id in ids {
            if from_kept {
                self.released.remove(&id);
            }
            if self.forgotten.insert(id) {
                self.forgotten_order.push_back(id);
            }
            while self.forgotten_order.len() > self.forgotten_capacity {
                if let Some(old) = self.forgotten_order.pop_front() {
                    self.forgotten.remove(&old);
                }
            }
        }
    }

    pub fn insert(&mut self, id: TraceId, d: CachedDecision) {
        let mut evicted = Vec::new();
        if d.keep {
            self.kept.insert(id, d, &mut evicted);
        } else {
            self.dropped.insert(id, d, &mut evicted);
        }
        // A forgotten ID decided again stays in `forgotten`: `was_forgotten` looks past it
        // while the decision is remembered (cheaper than a removal per decision).
        self.forget(evicted, d.keep);
    }

    /// The decision for `id` if remembered and not expired.
    pub fn get(&self, id: &TraceId, now: Duration) -> Option<CachedDecision> {
        let d = self.kept.map.get(id).or_else(|| self.dropped.map.get(id))?;
        (now.saturating_sub(d.decided_at) <= self.ttl).then_some(*d)
    }

    /// True when `id` was decided once but its decision has been forgotten.
    pub fn was_forgotten(&self, id: &TraceId) -> bool {
        self.forgotten.contains(id)
            && !self.kept.map.contains_key(id)
            && !self.dropped.map.contains_key(id)
    }

    /// Drops expired entries.
    pub fn expire(&mut self, now: Duration) {
        let mut evicted = Vec::new();
        self.kept.expire(now, self.ttl, &mut evicted);
        self.forget(evicted, true);
        let mut evicted = Vec::new();
        self.dropped.expire(now, self.ttl, &mut evicted);
        self.forget(evicted, false);
    }

    /// Remembers that these spans of a kept trace were released.
    pub fn record_released(&mut self, id: TraceId, spans: impl IntoIterator<Item = SpanId>) {
        if !self.kept.map.contains_key(&id) {
            return;
        }
        let ids = self.released.entry(id).or_default();
        for s in spans {
            if ids.len() >= RELEASED_IDS_MAX {
                break;
            }
            if let Err(at) = ids.binary_search(&s) {
                ids.insert(at, s);
            }
        }
    }

    /// Whether this span of a kept trace was released already.
    pub fn was_released(&self, id: &TraceId, span: &SpanId) -> bool {
        self.released
            .get(id)
            .is_some_and(|ids| ids.binary_search(span).is_ok())
    }

    /// The span IDs released for a kept trace (for its new owner).
    pub fn released_of(&self, id: &TraceId) -> Vec<SpanId> {
        self.released.get(id).cloned().unwrap_or_default()
    }

    /// Decisions matching `filter`, for handing them to a trace's new owner.
    pub fn matching(&self, filter: &dyn Fn(&TraceId) -> bool) -> Vec<(TraceId, CachedDecision)> {
        let mut out: Vec<(TraceId, CachedDecision)> = self
            .kept
            .map
            .iter()
            .chain(self.dropped.map.iter())
            .filter(|(id, _)| filter(id))
            .map(|(id, d)| (*id, *d))
            .collect();
        // Deterministic order regardless of hash-map iteration.
        out.sort_by_key(|(id, d)| (d.decided_at, *id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TraceId {
        TraceId([n; 16])
    }

    #[test]
    fn bounded_expiring_and_remembers_what_it_forgot() {
        let mut c = DecisionCache::new(2, 1, Duration::from_secs(10));
        let at = |s| CachedDecision {
            keep: true,
            decided_at: Duration::from_secs(s),
            policy: None,
            threshold: None,
        };
        c.insert(id(1), at(1));
        c.insert(id(2), at(2));
        c.insert(id(3), at(3));
        assert_eq!(
            c.get(&id(1), Duration::from_secs(3)),
            None,
            "oldest evicted at capacity"
        );
        assert!(c.was_forgotten(&id(1)));
        assert!(c.get(&id(3), Duration::from_secs(3)).is_some());
        c.insert(
            id(4),
            CachedDecision {
                keep: false,
                decided_at: Duration::from_secs(4),
                policy: None,
                threshold: None,
            },
        );
        assert_eq!(
            c.get(&id(4), Duration::from_secs(4)).map(|d| d.keep),
            Some(false)
        );
        assert_eq!(
            c.get(&id(3), Duration::from_secs(14)),
            None,
            "expired by ttl"
        );
        c.expire(Duration::from_secs(14));
        assert!(c.was_forgotten(&id(2)));
        assert_eq!(
            c.len(),
            1,
            "the drop decision of id 4 is exactly ttl old: still remembered"
        );
    }

    #[test]
    fn zero_capacity_disables() {
        let mut c = DecisionCache::new(0, 0, Duration::from_secs(10));
        c.insert(
            id(1),
            CachedDecision {
                keep: true,
                decided_at: Duration::ZERO,
                policy: None,
                threshold: None,
            },
        );
        assert_eq!(c.get(&id(1), Duration::ZERO), None);
        assert!(c.was_forgotten(&id(1)));
    }
}
