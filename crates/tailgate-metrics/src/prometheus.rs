//! What the `prometheus` exporter holds and serves: the latest value of every series the
//! metrics pipelines sent (deltas added up), rendered in the Prometheus text format or, when
//! asked and enabled, OpenMetrics with exemplars — names and labels translated as the
//! collector's exporter does (`traces.span.metrics.calls` → `traces_span_metrics_calls_total`,
//! attributes' dots → underscores, `job`/`instance` from the resource, `otel_scope_*`,
//! `target_info`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tailgate_config::connectors::PrometheusExporterConfig;

use crate::model::*;

/// Sorted `(label, value)` pairs.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Histogram,
}

#[derive(Debug)]
struct SeriesState {
    /// Counter value, or histogram count.
    value: f64,
    sum: f64,
    /// Per bound, then +Inf: counts (not cumulative).
    buckets: Vec<u64>,
    start_unix_nano: u64,
    time_unix_nano: u64,
    exemplars: Vec<Exemplar>,
    updated: Duration,
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    bounds: Arc<[f64]>,
    series: BTreeMap<Labels, SeriesState>,
}

/// The `prometheus` exporter's state.
pub struct PrometheusStore {
    cfg: PrometheusExporterConfig,
    families: BTreeMap<String, Family>,
    /// `target_info` labels per resource, with when it was last seen.
    targets: BTreeMap<Labels, Duration>,
}

impl PrometheusStore {
    pub fn new(cfg: &PrometheusExporterConfig) -> PrometheusStore {
        PrometheusStore {
            cfg: cfg.clone(),
            families: BTreeMap::new(),
            targets: BTreeMap::new(),
        }
    }

    /// Takes one flush's metrics: cumulative points replace, delta points add.
    pub fn apply(&mut self, batch: &MetricsBatch, now: Duration) {
        for r in &batch.resources {
            let resource = ResourceLabels::new(&r.resource);
            if let Some(target) = resource.target_info() {
                self.targets.insert(target, now);
            }
            for m in &r.metrics {
                self.apply_metric(m, &resource, r.scope_name, now);
            }
        }
    }

    fn apply_metric(&mut self, m: &Metric, resource: &ResourceLabels, scope: &str, now: Duration) {
        let (kind, bounds) = match &m.data {
            MetricData::Sum(_) => (Kind::Counter, Arc::from(Vec::new())),
            MetricData::Histogram { bounds, .. } => (Kind::Histogram, Arc::clone(bounds)),
        };
        let name = metric_name(&self.cfg, &m.name, m.unit, kind);
        let labels = |attrs: &[(String, AttrValue)]| self.labels(attrs, resource, scope);
        let delta = m.temporality == Temporality::Delta;
        let mut points: Vec<(Labels, SeriesState)> = Vec::new();
        match &m.data {
            MetricData::Sum(ps) => {
                for p in ps {
                    points.push((
                        labels(&p.attributes),
                        SeriesState {
                            value: p.value as f64,
                            sum: 0.0,
                            buckets: Vec::new(),
                            start_unix_nano: p.start_unix_nano,
                            time_unix_nano: p.time_unix_nano,
                            exemplars: p.exemplars.clone(),
                            updated: now,
                        },
                    ));
                }
            }
            MetricData::Histogram { points: ps, .. } => {
                for p in ps {
                    points.push((
                        labels(&p.attributes),
                        SeriesState {
                            value: p.count as f64,
                            sum: p.sum,
                            buckets: p.bucket_counts.clone(),
                            start_unix_nano: p.start_unix_nano,
                            time_unix_nano: p.time_unix_nano,
                            exemplars: p.exemplars.clone(),
                            updated: now,
                        },
                    ));
                }
            }
        }
        let family = self.families.entry(name).or_insert_with(|| Family {
            kind,
            bounds,
            series: BTreeMap::new(),
        });
        for (labels, point) in points {
            match family.series.get_mut(&labels) {
                Some(existing) if delta => {
                    existing.value += point.value;
                    existing.sum += point.sum;
                    for (e, p) in existing.buckets.iter_mut().zip(&point.buckets) {
                        *e += p;
                    }
                    existing.time_unix_nano = point.time_unix_nano;
                    existing.updated = now;
                    if !point.exemplars.is_empty() {
                        existing.exemplars = point.exemplars;
                    }
                }
                Some(existing) => {
                    // A flush without exemplars for the series keeps the last ones: each
                    // exemplar stays until a newer one replaces it.
                    let exemplars = if point.exemplars.is_empty() {
                        std::mem::take(&mut existing.exemplars)
                    } else {
                        point.exemplars.clone()
                    };
                    *existing = SeriesState { exemplars, ..point };
                }
                None => {
                    family.series.insert(labels, point);
                }
            }
        }
    }

    /// A data point's labels: its attributes, the scope, the resource's job and instance
    /// (and all its attributes with `resource_to_telemetry_conversion`), `const_labels`.
    fn labels(
        &self,
        attrs: &[(String, AttrValue)],
        resource: &ResourceLabels,
        scope: &str,
    ) -> Labels {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        if self.cfg.resource_to_telemetry_conversion.enabled {
            for (k, v) in resource.attributes {
                out.insert(label_name(k), v.as_label());
            }
        }
        for (k, v) in attrs {
            out.insert(label_name(k), v.as_label());
        }
        if !self.cfg.without_scope_info {
            out.insert("otel_scope_name".into(), scope.to_string());
            out.insert("otel_scope_version".into(), String::new());
            out.insert("otel_scope_schema_url".into(), String::new());
        }
        if let Some(job) = &resource.job {
            out.insert("job".into(), job.clone());
        }
        if let Some(instance) = &resource.instance {
            out.insert("instance".into(), instance.clone());
        }
        for (k, v) in &self.cfg.const_labels {
            out.insert(label_name(k), v.clone());
        }
        out.into_iter().collect()
    }

    /// Forgets series and targets not updated within `metric_expiration`.
    pub fn expire(&mut self, now: Duration) {
        let limit = self.cfg.metric_expiration.0;
        let fresh = |updated: Duration| now.saturating_sub(updated) < limit;
        for family in self.families.values_mut() {
            family.series.retain(|_, s| fresh(s.updated));
        }
        self.families.retain(|_, f| !f.series.is_empty());
        self.targets.retain(|_, updated| fresh(*updated));
    }

    /// The Prometheus text format (0.0.4), or OpenMetrics 1.0 with exemplars and `_created`.
    pub fn render(&self, open_metrics: bool) -> String {
        let mut out = String::new();
        if !self.targets.is_empty() {
            let _ = writeln!(out, "# HELP target_info Target metadata");
            let _ = writeln!(out, "# TYPE target_info gauge");
            for labels in self.targets.keys() {
                let _ = writeln!(out, "target_info{} 1", label_set(labels, None));
            }
        }
        for (name, family) in &self.families {
            match family.kind {
                Kind::Counter => render_counter(
                    &mut out,
                    name,
                    family,
                    open_metrics,
                    self.cfg.send_timestamps,
                ),
                Kind::Histogram => render_histogram(
                    &mut out,
                    name,
                    family,
                    open_metrics,
                    self.cfg.send_timestamps,
                ),
            }
        }
        if open_metrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

/// The resource's `job` (`service.namespace/service.name`), `instance` (`service.instance.id`)
/// and attributes.
struct ResourceLabels<'a> {
    attributes: &'a [(String, AttrValue)],
    job: Option<String>,
    instance: Option<String>,
}

impl<'a> ResourceLabels<'a> {
    fn new(attributes: &'a [(String, AttrValue)]) -> ResourceLabels<'a> {
        let get = |key: &str| {
            attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_label())
        };
        let job = get("service.name").map(|name| match get("service.namespace") {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        });
        ResourceLabels {
            attributes,
            job,
            instance: get("service.instance.id"),
        }
    }

    /// `target_info`'s labels: the attributes `job` and `instance` do not already carry.
    fn target_info(&self) -> Option<Labels> {
        let mut out: BTreeMap<String, String> = self
            .attributes
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "service.name" | "service.namespace" | "service.instance.id"
                )
            })
            .map(|(k, v)| (label_name(k), v.as_label()))
            .collect();
        if out.is_empty() {
            return None;
        }
        if let Some(job) = &self.job {
            out.insert("job".into(), job.clone());
        }
        if let Some(instance) = &self.instance {
            out.insert("instance".into(), instance.clone());
        }
        Some(out.into_iter().collect())
    }
}

/// The collector's metric name: non-alphanumeric runs become one `_`, then the unit's word
/// and, for counters, `_total` (with `add_metric_suffixes`), after the exporter's namespace.
fn metric_name(cfg: &PrometheusExporterConfig, name: &str, unit: &str, kind: Kind) -> String {
    let mut tokens: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    if cfg.add_metric_suffixes {
        let unit_word = match unit {
            "ms" => Some("milliseconds"),
            "s" => Some("seconds"),
            "By" => Some("bytes"),
            _ => None,
        };
        if let Some(word) = unit_word
            && !tokens.contains(&word)
        {
            tokens.push(word);
        }
        if kind == Kind::Counter && tokens.last() != Some(&"total") {
            tokens.push("total");
        }
    }
    let mut out = tokens.join("_");
    if !cfg.namespace.is_empty() {
        out = format!("{}_{out}", label_name(&cfg.namespace));
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// An attribute key as a label name: invalid characters become `_`, a leading digit gets
/// `key_` before it.
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

/// `{a="1",b="2"}` with `extra` last (`le`); empty braces left out.
fn label_set(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)`, which the collector's exposition uses.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..21).contains(&exp) {
        let s = format!("{v:e}");
        let (mantissa, e) = s.split_once('e').expect("exponent form");
        let e: i32 = e.parse().expect("exponent");
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", e.abs());
    }
    format_double(v)
}

/// OpenMetrics wants floats that look like floats (`2.0`, not `2`).
fn om_float(v: f64) -> String {
    let s = go_float(v);
    if s.contains(['.', 'e', 'I', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn seconds(unix_nano: u64) -> f64 {
    unix_nano as f64 / 1e9
}

fn exemplar_suffix(e: &Exemplar) -> String {
    format!(
        " # {{span_id=\"{}\",trace_id=\"{}\"}} {} {}",
        hex(&e.span_id.0),
        hex(&e.trace_id.0),
        om_float(e.value),
        om_float(seconds(e.time_unix_nano))
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn timestamp(s: &SeriesState, send: bool) -> String {
    if send {
        format!(" {}", s.time_unix_nano / 1_000_000)
    } else {
        String::new()
    }
}

fn render_counter(out: &mut String, name: &str, family: &Family, om: bool, send_ts: bool) {
    let base = name.strip_suffix("_total").unwrap_or(name);
    let _ = writeln!(out, "# TYPE {} counter", if om { base } else { name });
    for (labels, s) in &family.series {
        let ls = label_set(labels, None);
        if om {
            let exemplar = s.exemplars.last().map(exemplar_suffix).unwrap_or_default();
            let _ = writeln!(
                out,
                "{base}_total{ls} {}{}{exemplar}",
                om_float(s.value),
                timestamp(s, send_ts)
            );
            if s.start_unix_nano > 0 {
                let _ = writeln!(
                    out,
                    "{base}_created{ls} {}",
                    om_float(seconds(s.start_unix_nano))
                );
            }
        } else {
            let _ = writeln!(
                out,
                "{name}{ls} {}{}",
                go_float(s.value),
                timestamp(s, send_ts)
            );
        }
    }
}

fn render_histogram(out: &mut String, name: &str, family: &Family, om: bool, send_ts: bool) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    let float = if om { om_float } else { go_float };
    for (labels, s) in &family.series {
        let mut cumulative = 0u64;
        for (i, count) in s.buckets.iter().enumerate() {
            cumulative += count;
            let le = family
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| float(*b));
            // An exemplar goes on the bucket its value falls in.
            let exemplar = if om {
                let lower = i
                    .checked_sub(1)
                    .map_or(f64::NEG_INFINITY, |j| family.bounds[j]);
                let upper = family.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                s.exemplars
                    .iter()
                    .rfind(|e| e.value > lower && e.value <= upper)
                    .map(exemplar_suffix)
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{name}_bucket{} {}{}{exemplar}",
                label_set(labels, Some(("le", &le))),
                if om {
                    om_int(cumulative)
                } else {
                    cumulative.to_string()
                },
                timestamp(s, send_ts)
            );
        }
        let ls = label_set(labels, None);
        let _ = writeln!(
            out,
            "{name}_sum{ls} {}{}",
            float(s.sum),
            timestamp(s, send_ts)
        );
        let count = s.value as u64;
        let _ = writeln!(
            out,
            "{name}_count{ls} {}{}",
            if om { om_int(count) } else { count.to_string() },
            timestamp(s, send_ts)
        );
        if om && s.start_unix_nano > 0 {
            let _ = writeln!(
                out,
                "{name}_created{ls} {}",
                om_float(seconds(s.start_unix_nano))
            );
        }
    }
}

fn om_int(v: u64) -> String {
    v.to_string()
}

#[cfg(test)]
mod tests;
