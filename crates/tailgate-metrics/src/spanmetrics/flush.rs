//! A flush: each series' data point for the interval, exemplars resolved among its
//! candidates, then what expired forgotten.

use std::sync::Arc;
use std::time::Duration;

use tailgate_otlp::TraceId;

use super::series::{Buckets, Count, Series, Table};
use super::{Fate, SCOPE_NAME, Settings, SpanMetrics};
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
        for state in self.resources.values_mut() {
            let mut metrics = Vec::with_capacity(3);
            let calls = sum_points(s, &mut state.calls, now, unix_nano, fate, finished);
            metrics.push(Metric {
                name: s.calls_name.clone(),
                unit: "",
                temporality: s.temporality,
                data: MetricData::Sum(calls),
            });
            if let Some((bounds, unit)) = &s.histogram {
                let points =
                    histogram_points(s, &mut state.durations, now, unix_nano, fate, finished);
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
                let events = sum_points(s, &mut state.events, now, unix_nano, fate, finished);
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

/// The exemplars of kept traces among a series' candidates; undecided ones wait (cumulative)
/// unless the series is reset (delta), the rest are finished.
pub(super) fn resolve<V>(
    series: &mut Series<V>,
    max: usize,
    keep_waiting: bool,
    now: Duration,
    unix_nano: u64,
    fate: &mut dyn FnMut(&TraceId, Duration) -> Fate,
    finished: &mut Vec<TraceId>,
) -> Vec<Exemplar> {
    let mut exemplars = Vec::new();
    let mut waiting = Vec::new();
    for c in series.candidates.drain(..) {
        match fate(&c.trace_id, now.saturating_sub(c.seen_at)) {
            Fate::Kept if exemplars.len() < max => {
                exemplars.push(Exemplar {
                    trace_id: c.trace_id,
                    span_id: c.span_id,
                    value: c.value,
                    time_unix_nano: unix_nano,
                });
                finished.push(c.trace_id);
            }
            Fate::Undecided if keep_waiting => waiting.push(c),
            _ => finished.push(c.trace_id),
        }
    }
    series.candidates = waiting;
    exemplars
}

pub(super) fn sum_points(
    s: &Settings,
    table: &mut Table<Count>,
    now: Duration,
    unix_nano: u64,
    fate: &mut dyn FnMut(&TraceId, Duration) -> Fate,
    finished: &mut Vec<TraceId>,
) -> Vec<SumPoint> {
    let max = s.exemplars.unwrap_or(0);
    let mut out = Vec::with_capacity(table.series.len());
    for series in &mut table.series {
        let exemplars = resolve(
            series,
            max,
            s.temporality == Temporality::Cumulative,
            now,
            unix_nano,
            fate,
            finished,
        );
        let (start, value) = match s.temporality {
            Temporality::Cumulative => {
                let value = if series.first { 0 } else { series.value.0 };
                series.first = false;
                (series.start_unix_nano, value)
            }
            Temporality::Delta => {
                let value = std::mem::take(&mut series.value.0);
                let start = std::mem::replace(&mut series.interval_start_unix_nano, unix_nano);
                if value == 0 {
                    continue;
                }
                (start, value)
            }
        };
        out.push(SumPoint {
            attributes: Arc::clone(&series.attributes),
            start_unix_nano: start,
            time_unix_nano: unix_nano,
            value,
            exemplars,
        });
    }
    out
}

pub(super) fn histogram_points(
    s: &Settings,
    table: &mut Table<Buckets>,
    now: Duration,
    unix_nano: u64,
    fate: &mut dyn FnMut(&TraceId, Duration) -> Fate,
    finished: &mut Vec<TraceId>,
) -> Vec<HistogramPoint> {
    let max = s.exemplars.unwrap_or(0);
    let mut out = Vec::with_capacity(table.series.len());
    for series in &mut table.series {
        let exemplars = resolve(
            series,
            max,
            s.temporality == Temporality::Cumulative,
            now,
            unix_nano,
            fate,
            finished,
        );
        let start = match s.temporality {
            Temporality::Cumulative => series.start_unix_nano,
            Temporality::Delta => {
                std::mem::replace(&mut series.interval_start_unix_nano, unix_nano)
            }
        };
        if series.value.count == 0 && s.temporality == Temporality::Delta {
            continue;
        }
        out.push(HistogramPoint {
            attributes: Arc::clone(&series.attributes),
            start_unix_nano: start,
            time_unix_nano: unix_nano,
            count: series.value.count,
            sum: series.value.sum,
            bucket_counts: series.value.counts.clone(),
            exemplars,
        });
        if s.temporality == Temporality::Delta {
            let bounds = series.value.counts.len() - 1;
            series.value = Buckets::new(bounds);
        }
    }
    out
}
