//! The `spanmetrics` connector's aggregation, as the collector v0.161.0 does it: per resource
//! (all its attributes, or `resource_metrics_key_attributes`), a `calls` sum and a
//! `duration` histogram per label set — `service.name`, `span.name`, `span.kind`,
//! `status.code`, `collector.instance.id` and the configured dimensions — and an `events`
//! sum when enabled. Spans stay encoded: only the fields the labels need are read.
//!
//! Differences, on purpose: exemplars are chosen at flush among spans of traces the gateway
//! **kept** (the caller says which, see [`Fate`]) instead of the first spans seen, so every
//! exemplar opens a trace the backend has; glob dimensions and exponential histograms are
//! refused at load.
//!
//! **Invariant:** no I/O and no clock: `now` (for expirations) and the flush's wall-clock
//! timestamp are passed in.

mod flush;
mod labels;
mod series;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tailgate_config::connectors::{
    DEFAULT_BUCKETS_MS, Dimension, HistogramUnit, SpanMetricsConfig,
    Temporality as ConfigTemporality,
};
use tailgate_otlp::{AnyValueRef, EncodedSpan, RESOURCE_ATTRIBUTES, ResourceScope, TraceId};

use crate::model::*;
use crate::tracestate_count::adjusted_count;
use labels::{Dim, attr_value, build_attributes, build_key, is_scalar, scan_span};
use series::{Buckets, Candidate, Count, Series, Table};

pub use series::OVERFLOW_ATTRIBUTE;

/// Resource keys remembered (cleared when full: they are a cache).
const RESOURCE_KEYS_CACHED_MAX: usize = 4096;
/// The instrumentation scope of emitted metrics, as the collector names it.
pub const SCOPE_NAME: &str = "spanmetricsconnector";
/// Exemplar candidates a series holds per exemplar it may carry: most spans seen belong to
/// traces that will be dropped, so many per slot are watched (at 5% sampling, 32 per slot
/// leave a series without a kept one about once in 5,000 flushes).
pub const CANDIDATES_PER_EXEMPLAR: usize = 32;
const KEY_SEPARATOR: u8 = 0;
const SPAN_KIND_NAMES: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUS_CODE_NAMES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

/// What became of an exemplar candidate's trace, as the caller knows it at flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Kept: the exporter has the whole trace.
    Kept,
    /// Not decided yet: ask again at the next flush.
    Undecided,
    /// Dropped, or not known here and too old to wait for.
    Gone,
}

struct Settings {
    calls_name: String,
    duration_name: String,
    events_name: String,
    /// Every dimension name, once: what is read per span.
    dim_names: Vec<String>,
    /// A searcher per dimension name: a span whose bytes do not hold any name anywhere has
    /// none of those attributes, and is not walked.
    dim_finders: Vec<memchr::memmem::Finder<'static>>,
    dims: Vec<Dim>,
    calls_dims: Vec<Dim>,
    histogram_dims: Vec<Dim>,
    /// Neither `calls` nor `duration` has dimensions of its own: both are keyed alike, and
    /// the durations table follows the calls table (one lookup per span).
    durations_follow_calls: bool,
    event_dims: Vec<Dim>,
    /// `exclude_dimensions` of service.name, span.name, span.kind, status.code.
    exclude: [bool; 4],
    instance_id: String,
    temporality: Temporality,
    /// Bounds in the histogram's unit, and the unit; `None` when disabled.
    histogram: Option<(Arc<[f64]>, &'static str)>,
    /// Nanoseconds per histogram unit (exemplar values use it even with the histogram off).
    unit_nanos: f64,
    /// Exemplars per data point; `None` when disabled.
    exemplars: Option<usize>,
    cardinality_limit: usize,
    key_attributes: Vec<String>,
    include_scopes: Vec<String>,
    sampling_method: bool,
    events: bool,
    series_expiration: Duration,
    metrics_expiration: Duration,
}

struct ResourceState {
    attributes: Attributes,
    calls: Table<Count>,
    durations: Table<Buckets>,
    events: Table<Count>,
    last_seen: Duration,
}

/// One connector's series.
pub struct SpanMetrics {
    settings: Settings,
    resources: BTreeMap<Vec<u8>, ResourceState>,
    /// For rounding counts scaled by a sampling threshold (`ot=th`) at random, as the
    /// collector does; seeded, so runs repeat.
    rng: u64,
    key: Vec<u8>,
    /// Resource keys by the resource's encoded bytes: working a resource's key out reads and
    /// sorts all its attributes, and requests repeat the same few resources.
    resource_keys: HashMap<Bytes, Option<Vec<u8>>, foldhash::fast::RandomState>,
    /// When the last flush ran: a delta series not seen since is forgotten (one seen since
    /// keeps its interval start, as the collector's timestamp cache does).
    last_flush: Duration,
}

/// Per-span facts every metric's key and labels start from.
struct SpanFacts<'a> {
    service: &'a str,
    /// Raw bytes: not checked for UTF-8 unless a new series is labelled with it.
    name: &'a [u8],
    span: &'a EncodedSpan,
    scope: Option<(&'a str, &'a str)>,
    /// Each dimension name's span attribute, by slot.
    span_values: &'a [Option<AnyValueRef<'a>>],
    /// Each dimension name's resource attribute, by slot.
    resource_values: &'a [Option<AnyValueRef<'a>>],
    count: u64,
    adjusted: bool,
}

impl SpanMetrics {
    /// `instance_id` is this process's `collector.instance.id`; `seed` drives rounding.
    pub fn new(cfg: &SpanMetricsConfig, instance_id: String, seed: u64) -> SpanMetrics {
        let mut dim_names = Vec::new();
        let mut dims = |list: &[Dimension]| -> Vec<Dim> {
            list.iter()
                .map(|d| Dim::from_config(d, &mut dim_names))
                .collect()
        };
        let (plain, calls, histogram, events) = (
            dims(&cfg.dimensions),
            dims(&cfg.calls_dimensions),
            dims(&cfg.histogram.dimensions),
            dims(&cfg.events.dimensions),
        );
        let unit = cfg.histogram.unit;
        let bounds: Arc<[f64]> = match &cfg.histogram.explicit {
            Some(e) => e
                .buckets
                .iter()
                .map(|d| d.0.as_nanos() as f64 / unit.nanos())
                .collect(),
            None => DEFAULT_BUCKETS_MS
                .iter()
                .map(|ms| match unit {
                    HistogramUnit::Milliseconds => *ms,
                    HistogramUnit::Seconds => ms / 1000.0,
                })
                .collect(),
        };
        let name = |n: &str| {
            if cfg.namespace.is_empty() {
                n.to_string()
            } else {
                format!("{}.{n}", cfg.namespace)
            }
        };
        let excluded = |d: &str| cfg.exclude_dimensions.iter().any(|e| e == d);
        SpanMetrics {
            settings: Settings {
                calls_name: name("calls"),
                duration_name: name("duration"),
                events_name: name("events"),
                dim_finders: dim_names
                    .iter()
                    .map(|n| memchr::memmem::Finder::new(n.as_bytes()).into_owned())
                    .collect(),
                dim_names,
                dims: plain,
                durations_follow_calls: calls.is_empty() && histogram.is_empty(),
                calls_dims: calls,
                histogram_dims: histogram,
                event_dims: events,
                exclude: ["service.name", "span.name", "span.kind", "status.code"].map(excluded),
                instance_id,
                temporality: match cfg.aggregation_temporality {
                    ConfigTemporality::Cumulative => Temporality::Cumulative,
                    ConfigTemporality::Delta => Temporality::Delta,
                },
                histogram: (!cfg.histogram.disable).then(|| (bounds, unit.ucum())),
                unit_nanos: unit.nanos(),
                exemplars: cfg
                    .exemplars
                    .enabled
                    .then_some(cfg.exemplars.max_per_data_point),
                cardinality_limit: cfg.aggregation_cardinality_limit,
                key_attributes: cfg.resource_metrics_key_attributes.clone(),
                include_scopes: cfg.include_instrumentation_scope.clone(),
                sampling_method: cfg.enable_metrics_sampling_method,
                events: cfg.events.enabled,
                series_expiration: cfg.series_expiration.0,
                metrics_expiration: cfg.metrics_expiration.0,
            },
            resources: BTreeMap::new(),
            rng: seed | 1,
            key: Vec::with_capacity(256),
            resource_keys: HashMap::default(),
            last_flush: Duration::ZERO,
        }
    }

    /// Counts `spans`. `watched` receives the trace IDs of new exemplar candidates (the
    /// caller learns their fate before the next flush).
    pub fn ingest(
        &mut self,
        spans: &[EncodedSpan],
        now: Duration,
        unix_nano: u64,
        watched: &mut Vec<TraceId>,
    ) {
        let mut span_values = Vec::with_capacity(self.settings.dim_names.len());
        // Spans of one request come in runs sharing their resource and scope.
        for run in spans.chunk_by(|a, b| Arc::ptr_eq(&a.context, &b.context)) {
            let context = &run[0].context;
            // The collector skips resources without `service.name`.
            let Some(resource_key) = self.resource_for(context, now) else {
                continue;
            };
            let Some(service) = run[0].service_name() else {
                continue;
            };
            let SpanMetrics {
                settings,
                resources,
                rng,
                key,
                ..
            } = self;
            let resource_values: Vec<Option<AnyValueRef<'_>>> = settings
                .dim_names
                .iter()
                .map(|n| {
                    tailgate_otlp::find_attribute(&context.resource, RESOURCE_ATTRIBUTES, n)
                        .filter(|v| is_scalar(*v))
                })
                .collect();
            let scope = scope_of(settings, &run[0]);
            let state = resources.get_mut(&resource_key).expect("created above");
            for span in run {
                let (name, trace_state) = scan_span(span, settings, &mut span_values);
                let (count, adjusted) = adjusted_count(trace_state, rng);
                let facts = SpanFacts {
                    service,
                    name,
                    span,
                    scope,
                    span_values: &span_values,
                    resource_values: &resource_values,
                    count,
                    adjusted,
                };
                record(settings, state, key, &facts, now, unix_nano, watched);
            }
        }
    }

    /// The resource's key, its state created (again, after an expiry) when missing; `None`
    /// without `service.name`.
    fn resource_for(&mut self, context: &ResourceScope, now: Duration) -> Option<Vec<u8>> {
        if let Some(known) = self.resource_keys.get(&context.resource) {
            let key = known.clone()?;
            if let Some(state) = self.resources.get_mut(&key) {
                state.last_seen = now;
                return Some(key);
            }
        }
        if self.resource_keys.len() >= RESOURCE_KEYS_CACHED_MAX {
            self.resource_keys.clear();
        }
        let key = self.resource_state(context, now);
        self.resource_keys
            .insert(context.resource.clone(), key.clone());
        key
    }

    /// Works out a resource's key and creates its state.
    fn resource_state(&mut self, context: &ResourceScope, now: Duration) -> Option<Vec<u8>> {
        let mut attributes: Vec<(String, AttrValue)> = Vec::new();
        tailgate_otlp::for_each_attribute(&context.resource, RESOURCE_ATTRIBUTES, |k, v| {
            if let Some(v) = attr_value(AnyValueRef::parse(v)) {
                attributes.push((k.to_string(), v));
            }
        });
        if !attributes
            .iter()
            .any(|(k, v)| k == "service.name" && matches!(v, AttrValue::Str(_)))
        {
            return None;
        }
        let mut keyed: Vec<&(String, AttrValue)> = attributes
            .iter()
            .filter(|(k, _)| {
                self.settings.key_attributes.is_empty() || self.settings.key_attributes.contains(k)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut key = Vec::new();
        for (k, v) in keyed {
            key.extend_from_slice(k.as_bytes());
            key.push(KEY_SEPARATOR);
            key.extend_from_slice(format!("{v:?}").as_bytes());
            key.push(KEY_SEPARATOR);
        }
        let limit = self.settings.cardinality_limit;
        let state = self
            .resources
            .entry(key.clone())
            .or_insert_with(|| ResourceState {
                attributes: attributes.into(),
                calls: Table::new(limit),
                durations: Table::new(limit),
                events: Table::new(limit),
                last_seen: now,
            });
        state.last_seen = now;
        Some(key)
    }

    /// Series held, over all resources and metrics.
    pub fn series(&self) -> usize {
        self.resources
            .values()
            .map(|r| r.calls.series.len() + r.durations.series.len() + r.events.series.len())
            .sum()
    }
}

/// The span's scope name and version, when `include_instrumentation_scope` names it.
fn scope_of<'a>(s: &Settings, span: &'a EncodedSpan) -> Option<(&'a str, &'a str)> {
    if s.include_scopes.is_empty() {
        return None;
    }
    let name = tailgate_otlp::string_field(&span.context.scope, 1).unwrap_or("");
    let version = tailgate_otlp::string_field(&span.context.scope, 2).unwrap_or("");
    (!name.is_empty() && s.include_scopes.iter().any(|s| s == name)).then_some((name, version))
}

/// One span into its series of every metric.
#[allow(clippy::too_many_arguments)]
fn record<'a>(
    s: &'a Settings,
    state: &mut ResourceState,
    key: &mut Vec<u8>,
    f: &SpanFacts<'a>,
    now: Duration,
    unix_nano: u64,
    watched: &mut Vec<TraceId>,
) {
    let meta = &f.span.meta;
    let traced = meta.trace_id.0 != [0; 16];
    let duration_nanos = meta.duration_nanos() as f64;
    let exemplar_slots = s.exemplars.map(|m| m * CANDIDATES_PER_EXEMPLAR);

    build_key(key, s, f, &s.calls_dims, None);
    let (i, overflowed) = state.calls.get_or_create(
        key,
        || build_attributes(s, f, &s.calls_dims, None),
        Count::default,
        unix_nano,
        now,
    );
    let calls = &mut state.calls.series[i];
    calls.value.0 += f.count;
    let value = duration_nanos / s.unit_nanos;
    if traced && !overflowed {
        watch(calls, exemplar_slots, f, value, now, watched);
    }

    if let Some((bounds, _)) = &s.histogram {
        let (j, overflowed) = if s.durations_follow_calls {
            let attributes = &state.calls.series[i].attributes;
            let bucket_count = bounds.len();
            state
                .durations
                .follow(i, attributes, || Buckets::new(bucket_count), unix_nano, now);
            (i, overflowed)
        } else {
            build_key(key, s, f, &s.histogram_dims, None);
            state.durations.get_or_create(
                &*key,
                || build_attributes(s, f, &s.histogram_dims, None),
                || Buckets::new(bounds.len()),
                unix_nano,
                now,
            )
        };
        let h = &mut state.durations.series[j];
        h.value.observe(bounds, value, f.count);
        if traced && !overflowed {
            watch(h, exemplar_slots, f, value, now, watched);
        }
    }

    if s.events {
        for event in f.span.events() {
            build_key(key, s, f, &s.event_dims, Some(event));
            let (j, overflowed) = state.events.get_or_create(
                &*key,
                || build_attributes(s, f, &s.event_dims, Some(event)),
                Count::default,
                unix_nano,
                now,
            );
            let e = &mut state.events.series[j];
            e.value.0 += f.count;
            if traced && !overflowed {
                watch(e, exemplar_slots, f, value, now, watched);
            }
        }
    }
}

/// Adds the span as an exemplar candidate while the series has room.
fn watch<V>(
    series: &mut Series<V>,
    slots: Option<usize>,
    f: &SpanFacts<'_>,
    value: f64,
    now: Duration,
    watched: &mut Vec<TraceId>,
) {
    let Some(slots) = slots else { return };
    if series.candidates.len() >= slots {
        return;
    }
    series.candidates.push(Candidate {
        trace_id: f.span.meta.trace_id,
        span_id: f.span.meta.span_id,
        value,
        seen_at: now,
    });
    watched.push(f.span.meta.trace_id);
}

#[cfg(test)]
mod tests;
