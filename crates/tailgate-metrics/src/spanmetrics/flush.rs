//! A flush: each series' data point for the interval, exemplars resolved among its
//! candidates, then what expired forgotten.

use std::sync::Arc;
use std::time::Duration;

use tailgate_otlp::TraceId;

use super::series::{Buckets, Count, Series, Table};
use super::{Fate, SCOPE_NAME, SpanMetrics};
use crate::model::*;

impl SpanMetrics {
    /// The metrics of this interval. `fate` says what became of each exemplar candidate's
    /// trace; candidates whose story ends here (attached, dropped, expired) go to `finished`.
    pub fn flush(
        &mut self,
        now: Duration,
        unix_nano: u64,
        fate: &mut dyn FnMut(&TraceId, Duration) -> Fate,
        finished: &mut Vec<TraceId>,
    ) -> MetricsBatch {
        let s = &self.settings;
        let mut batch = MetricsBatch::default();
        let mut at = Interval {
            temporality: s.temporality,
            max_exemplars: s.exemplars.unwrap_or(0),
            now,
            unix_nano,
            fate,
            finished,
        };
        for state in self.resources.values_mut() {
            let mut metrics = Vec::with_capacity(3);
            let calls = sum_points(&mut state.calls, &mut at);
            metrics.push(Metric {
                name: s.calls_name.clone(),
                unit: "",
                temporality: s.temporality,
                data: MetricData::Sum(calls),
            });
            if let Some((bounds, unit)) = &s.histogram {
                let points = histogram_points(&mut state.durations, &mut at);
                metrics.push(Metric {
                    name: s.duration_name.clone(),
                    unit,
                    temporality: s.temporality,
                    data: MetricData::Histogram {
                        bounds: Arc::clone(bounds),
                        points,
                    },
                });
            }
            if s.events {
                let events = sum_points(&mut state.events, &mut at);
                metrics.push(Metric {
                    name: s.events_name.clone(),
                    unit: "",
                    temporality: s.temporality,
                    data: MetricData::Sum(events),
                });
            }
            batch.resources.push(ResourceMetrics {
                resource: Arc::clone(&state.attributes),
                scope_name: SCOPE_NAME,
                metrics,
            });
        }
        self.expire(now, finished);
        self.last_flush = now;
        batch
    }

    /// Delta: series without data this interval go. Cumulative: series and resources idle
    /// past their expiration go.
    fn expire(&mut self, now: Duration, finished: &mut Vec<TraceId>) {
        let s = &self.settings;
        let idle =
            |last: Duration, limit: Duration| !limit.is_zero() && now.saturating_sub(last) >= limit;
        let delta = s.temporality == Temporality::Delta;
        let limit = s.series_expiration;
        let since = self.last_flush;
        let keep = |last_seen: Duration| {
            if delta {
                last_seen >= since
            } else {
                !idle(last_seen, limit)
            }
        };
        for state in self.resources.values_mut() {
            let gone_calls = state.calls.retain(|x| keep(x.last_seen));
            let gone_events = state.events.retain(|x| keep(x.last_seen));
            let gone_durations = state.durations.retain(|x| keep(x.last_seen));
            forget(&gone_calls, finished);
            forget(&gone_events, finished);
            forget(&gone_durations, finished);
        }
        self.resources.retain(|_, state| {
            let expired = !delta && idle(state.last_seen, s.metrics_expiration);
            let empty =
                state.calls.is_empty() && state.durations.is_empty() && state.events.is_empty();
            if expired {
                forget(&state.calls.series, finished);
                forget(&state.events.series, finished);
                forget(&state.durations.series, finished);
            }
            !(expired || empty)
        });
    }
}

/// The candidates of series that are gone: their traces are watched no more.
pub(super) fn forget<V>(gone: &[Series<V>], finished: &mut Vec<TraceId>) {
    for series in gone {
        finished.extend(series.candidates.iter().map(|c| c.trace_id));
    }
}

/// What every series' data point of one flush needs.
pub(super) struct Interval<'f> {
    temporality: Temporality,
    max_exemplars: usize,
    now: Duration,
    unix_nano: u64,
    fate: &'f mut dyn FnMut(&TraceId, Duration) -> Fate,
    finished: &'f mut Vec<TraceId>,
}

impl Interval<'_> {
    /// The exemplars of kept traces among a series' candidates; undecided ones wait
    /// (cumulative) unless the series is reset (delta), the rest are finished.
    fn exemplars<V>(&mut self, series: &mut Series<V>) -> Vec<Exemplar> {
        let keep_waiting = self.temporality == Temporality::Cumulative;
        let mut exemplars = Vec::new();
        let mut waiting = Vec::new();
        for c in series.candidates.drain(..) {
            match (self.fate)(&c.trace_id, self.now.saturating_sub(c.seen_at)) {
                Fate::Kept if exemplars.len() < self.max_exemplars => {
                    exemplars.push(Exemplar {
                        trace_id: c.trace_id,
                        span_id: c.span_id,
                        value: c.value,
                        time_unix_nano: self.unix_nano,
                    });
                    self.finished.push(c.trace_id);
                }
                Fate::Undecided if keep_waiting => waiting.push(c),
                _ => self.finished.push(c.trace_id),
            }
        }
        series.candidates = waiting;
        exemplars
    }

    /// The point's start: the series' for cumulative, the last flush for delta (and the
    /// next interval starts now).
    fn start<V>(&self, series: &mut Series<V>) -> u64 {
        match self.temporality {
            Temporality::Cumulative => series.start_unix_nano,
            Temporality::Delta => {
                std::mem::replace(&mut series.interval_start_unix_nano, self.unix_nano)
            }
        }
    }
}

pub(super) fn sum_points(table: &mut Table<Count>, at: &mut Interval<'_>) -> Vec<SumPoint> {
    let mut out = Vec::with_capacity(table.series.len());
    for series in &mut table.series {
        let exemplars = at.exemplars(series);
        let start = at.start(series);
        let value = match at.temporality {
            Temporality::Cumulative => {
                let value = if series.first { 0 } else { series.value.0 };
                series.first = false;
                value
            }
            Temporality::Delta => std::mem::take(&mut series.value.0),
        };
        if value == 0 && at.temporality == Temporality::Delta {
            continue;
        }
        out.push(SumPoint {
            attributes: Arc::clone(&series.attributes),
            start_unix_nano: start,
            time_unix_nano: at.unix_nano,
            value,
            exemplars,
        });
    }
    out
}

pub(super) fn histogram_points(
    table: &mut Table<Buckets>,
    at: &mut Interval<'_>,
) -> Vec<HistogramPoint> {
    let mut out = Vec::with_capacity(table.series.len());
    for series in &mut table.series {
        let exemplars = at.exemplars(series);
        let start = at.start(series);
        if series.value.count == 0 && at.temporality == Temporality::Delta {
            continue;
        }
        out.push(HistogramPoint {
            attributes: Arc::clone(&series.attributes),
            start_unix_nano: start,
            time_unix_nano: at.unix_nano,
            count: series.value.count,
            sum: series.value.sum,
            bucket_counts: series.value.counts.clone(),
            exemplars,
        });
        if at.temporality == Temporality::Delta {
            let bounds = series.value.counts.len() - 1;
            series.value = Buckets::new(bounds);
        }
    }
    out
}
