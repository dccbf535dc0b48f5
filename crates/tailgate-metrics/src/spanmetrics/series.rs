//! Series of one metric of one resource: a table keyed by the label key, with the
//! collector's cardinality limit (new keys past it count in one overflow series) and the
//! exemplar candidates each series holds until their traces are decided.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tailgate_otlp::{SpanId, TraceId};

use crate::model::{AttrValue, Attributes};

/// The overflow series' only attribute, as in the collector.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";
/// The overflow series' key (no real key starts with 0xff: keys start with UTF-8 text).
const OVERFLOW_KEY: &[u8] = b"\xffoverflow";

/// A span whose trace may be kept: it becomes an exemplar if it is.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub value: f64,
    pub seen_at: Duration,
}

#[derive(Debug)]
pub struct Series<V> {
    pub attributes: Attributes,
    pub start_unix_nano: u64,
    /// Delta: the start of the current interval (the last flush).
    pub interval_start_unix_nano: u64,
    pub last_seen: Duration,
    /// Cumulative sums report 0 at their first flush, as the collector's do, so Prometheus
    /// sees the series start from zero rather than appear at its first value.
    pub first: bool,
    pub value: V,
    pub candidates: Vec<Candidate>,
}

impl<V> Series<V> {
    fn new(attributes: Attributes, value: V, start_unix_nano: u64, now: Duration) -> Series<V> {
        Series {
            attributes,
            start_unix_nano,
            interval_start_unix_nano: start_unix_nano,
            last_seen: now,
            first: true,
            value,
            candidates: Vec::new(),
        }
    }
}

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Count(pub u64);

/// An explicit-bucket histogram.
#[derive(Debug)]
pub struct Buckets {
    pub count: u64,
    pub sum: f64,
    pub counts: Vec<u64>,
}

impl Buckets {
    pub fn new(bounds: usize) -> Buckets {
        Buckets {
            count: 0,
            sum: 0.0,
            counts: vec![0; bounds + 1],
        }
    }

    /// `n` observations of `value`: the first bucket whose bound is at least the value.
    pub fn observe(&mut self, bounds: &[f64], value: f64, n: u64) {
        self.sum += value * n as f64;
        self.count += n;
        let i = bounds.partition_point(|b| *b < value);
        self.counts[i] += n;
    }
}

#[derive(Debug)]
pub struct Table<V> {
    index: HashMap<Box<[u8]>, usize, foldhash::fast::RandomState>,
    pub series: Vec<Series<V>>,
    limit: usize,
}

impl<V> Table<V> {
    /// `limit` series at most (0 = no limit), then the overflow series.
    pub fn new(limit: usize) -> Table<V> {
        Table {
            index: HashMap::default(),
            series: Vec::new(),
            limit,
        }
    }

    /// The index of the series for `key` (marked seen `now`), created with `attributes()` and
    /// `value()` when new; the flag says the limit sent it to the overflow series (which
    /// takes no exemplars).
    pub fn get_or_create(
        &mut self,
        key: &[u8],
        attributes: impl FnOnce() -> Attributes,
        value: impl FnOnce() -> V,
        start_unix_nano: u64,
        now: Duration,
    ) -> (usize, bool) {
        let (i, overflowed) = match self.index.get(key) {
            Some(i) => (*i, false),
            None if self.limit > 0 && self.index.len() >= self.limit => {
                let i = match self.index.get(OVERFLOW_KEY) {
                    Some(i) => *i,
                    None => {
                        let attrs: Attributes = Arc::from(vec![(
                            OVERFLOW_ATTRIBUTE.to_string(),
                            AttrValue::Bool(true),
                        )]);
                        self.insert(OVERFLOW_KEY, attrs, value(), start_unix_nano, now)
                    }
                };
                (i, true)
            }
            None => (
                self.insert(key, attributes(), value(), start_unix_nano, now),
                false,
            ),
        };
        self.series[i].last_seen = now;
        (i, overflowed)
    }

    /// Makes sure a follower table has series `i`: a table kept in lockstep with a leader table keyed the
    /// same (every span updates both, in the same order, so a new key gets the same index in
    /// both, and they expire together). It has no index of its own; a new series takes the
    /// leader's attributes.
    pub fn follow(
        &mut self,
        i: usize,
        attributes: &Attributes,
        value: impl FnOnce() -> V,
        start_unix_nano: u64,
        now: Duration,
    ) {
        assert!(
            i <= self.series.len() && self.index.is_empty(),
            "a follower table out of step with its leader"
        );
        if i == self.series.len() {
            self.series.push(Series::new(
                Arc::clone(attributes),
                value(),
                start_unix_nano,
                now,
            ));
        }
        self.series[i].last_seen = now;
    }

    fn insert(
        &mut self,
        key: &[u8],
        attributes: Attributes,
        value: V,
        start_unix_nano: u64,
        now: Duration,
    ) -> usize {
        let i = self.series.len();
        self.series
            .push(Series::new(attributes, value, start_unix_nano, now));
        self.index.insert(key.into(), i);
        i
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Drops the series `keep` rejects, returning them (for their exemplar candidates).
    pub fn retain(&mut self, mut keep: impl FnMut(&Series<V>) -> bool) -> Vec<Series<V>> {
        if self.series.iter().all(&mut keep) {
            return Vec::new();
        }
        if self.index.is_empty() {
            // A follower: its leader re-indexes; keeping the same series keeps them in step.
            let (kept, removed) = std::mem::take(&mut self.series)
                .into_iter()
                .partition(|series| keep(series));
            self.series = kept;
            return removed;
        }
        let mut kept_index = Vec::with_capacity(self.series.len());
        let mut removed = Vec::new();
        let mut keys: Vec<(Box<[u8]>, usize)> = self.index.drain().collect();
        keys.sort_by_key(|(_, i)| *i);
        let old = std::mem::take(&mut self.series);
        for ((key, _), series) in keys.into_iter().zip(old) {
            if keep(&series) {
                kept_index.push(key);
                self.series.push(series);
            } else {
                removed.push(series);
            }
        }
        self.index = kept_index
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i))
            .collect();
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(s: &str) -> Attributes {
        Arc::from(vec![("k".to_string(), AttrValue::Str(s.into()))])
    }

    #[test]
    fn past_the_limit_new_keys_share_the_overflow_series() {
        let mut t: Table<Count> = Table::new(2);
        let now = Duration::ZERO;
        for key in ["a", "b", "c", "d", "a"] {
            let (i, over) = t.get_or_create(key.as_bytes(), || attrs(key), Count::default, 0, now);
            t.series[i].value.0 += 1;
            assert_eq!(over, key == "c" || key == "d", "{key}");
        }
        let counts: Vec<(String, u64)> = t
            .series
            .iter()
            .map(|s| (s.attributes[0].0.clone(), s.value.0))
            .collect();
        assert_eq!(
            counts,
            [
                ("k".into(), 2),
                ("k".into(), 1),
                (OVERFLOW_ATTRIBUTE.into(), 2)
            ]
        );
        let removed = t.retain(|s| s.value.0 != 1);
        assert_eq!(removed.len(), 1);
        let (i, over) = t.get_or_create(b"a", || attrs("a"), Count::default, 0, now);
        assert!(!over);
        assert_eq!(t.series[i].value.0, 2, "the index follows the kept series");
    }

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket() {
        let bounds = [2.0, 4.0];
        let mut b = Buckets::new(bounds.len());
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            b.observe(&bounds, v, 1);
        }
        assert_eq!(b.counts, [2, 2, 1]);
        assert_eq!(b.sum, 15.0);
    }
}
