//! Checks serde cannot express: relationships between fields of one component. Each check
//! returns `(path below the component, message)`.

use crate::components::*;
use crate::load::{ExporterConfig, ProcessorConfig};

type Problems = Vec<(String, String)>;

pub(crate) fn processor(p: &ProcessorConfig) -> Problems {
    let mut out = Problems::new();
    match p {
        ProcessorConfig::MemoryLimiter(m) => {
            if m.check_interval.is_zero() {
                out.push(("check_interval".into(), "must be greater than 0".into()));
            }
            match (m.limit_mib, m.limit_percentage) {
                (0, 0) => out.push((
                    "limit_mib".into(),
                    "set one of limit_mib or limit_percentage".into(),
                )),
                (mib, pct) if mib > 0 && pct > 0 => out.push((
                    "limit_percentage".into(),
                    "conflicts with limit_mib: set only one".into(),
                )),
                (0, pct) if pct > 100 => {
                    out.push(("limit_percentage".into(), "must be at most 100".into()))
                }
                _ => {}
            }
            if let Some(spike) = m.spike_limit_mib
                && m.limit_mib > 0
                && spike >= m.limit_mib
            {
                out.push((
                    "spike_limit_mib".into(),
                    format!("must be less than limit_mib ({})", m.limit_mib),
                ));
            }
            if m.limit_percentage > 0 && m.spike_limit_percentage >= m.limit_percentage {
                out.push((
                    "spike_limit_percentage".into(),
                    "must be less than limit_percentage".into(),
                ));
            }
        }
        ProcessorConfig::Batch(b) => {
            if b.send_batch_size == 0 {
                out.push(("send_batch_size".into(), "must be greater than 0".into()));
            }
            if b.send_batch_max_size != 0 && b.send_batch_max_size < b.send_batch_size {
                out.push((
                    "send_batch_max_size".into(),
                    format!(
                        "must be 0 (no limit) or at least send_batch_size ({})",
                        b.send_batch_size
                    ),
                ));
            }
        }
        ProcessorConfig::Attributes(a) => actions(&a.actions, "actions", &mut out),
        ProcessorConfig::Resource(r) => actions(&r.attributes, "attributes", &mut out),
        ProcessorConfig::Filter(f) => {
            if f.traces.span.is_empty() && f.traces.spanevent.is_empty() {
                out.push((
                    "traces".into(),
                    "no conditions: set traces.span or traces.spanevent".into(),
                ));
            }
        }
    }
    out
}

fn actions(list: &[AttributeAction], field: &str, out: &mut Problems) {
    if list.is_empty() {
        out.push((field.into(), "at least one action is required".into()));
    }
    for (i, a) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let needs_key = |out: &mut Problems| {
            if a.key.as_deref().unwrap_or("").is_empty() {
                out.push((
                    format!("{at}.key"),
                    format!("required for action `{:?}`", a.action).to_lowercase(),
                ));
            }
        };
        match a.action {
            ActionKind::Insert | ActionKind::Update | ActionKind::Upsert => {
                needs_key(out);
                if a.value.is_some() == a.from_attribute.is_some() {
                    out.push((
                        at.clone(),
                        "set exactly one of value or from_attribute".into(),
                    ));
                }
                if a.pattern.is_some() {
                    out.push((
                        format!("{at}.pattern"),
                        "only delete, hash and extract take a pattern".into(),
                    ));
                }
            }
            ActionKind::Delete | ActionKind::Hash => {
                if a.key.is_some() == a.pattern.is_some() {
                    out.push((at.clone(), "set exactly one of key or pattern".into()));
                }
                if a.value.is_some() || a.from_attribute.is_some() {
                    out.push((
                        at.clone(),
                        "delete and hash take no value or from_attribute".into(),
                    ));
                }
            }
            ActionKind::Extract => {
                needs_key(out);
                match &a.pattern {
                    None => out.push((
                        format!("{at}.pattern"),
                        "required for action `extract`".into(),
                    )),
                    Some(p) if p.0.capture_names().flatten().next().is_none() => out.push((
                        format!("{at}.pattern"),
                        "extract needs at least one named group, e.g. (?P<name>...)".into(),
                    )),
                    _ => {}
                }
            }
        }
    }
}

pub(crate) fn exporter(e: &ExporterConfig) -> Problems {
    let mut out = Problems::new();
    match e {
        ExporterConfig::Otlp(c) => {
            if c.endpoint.trim().is_empty() {
                out.push(("endpoint".into(), "must not be empty".into()));
            }
            tls(&c.tls, &mut out);
            retry(&c.retry_on_failure, &mut out);
            queue(&c.sending_queue, &mut out);
        }
        ExporterConfig::OtlpHttp(c) => {
            match (&c.endpoint, &c.traces_endpoint) {
                (None, None) => {
                    out.push(("endpoint".into(), "set endpoint or traces_endpoint".into()))
                }
                (e, t) => {
                    for (name, url) in [("endpoint", e), ("traces_endpoint", t)] {
                        if let Some(url) = url
                            && !(url.starts_with("http://") || url.starts_with("https://"))
                        {
                            out.push((
                                name.into(),
                                format!("`{url}` must start with http:// or https://"),
                            ));
                        }
                    }
                }
            }
            tls(&c.tls, &mut out);
            retry(&c.retry_on_failure, &mut out);
            queue(&c.sending_queue, &mut out);
        }
        ExporterConfig::File(f) => {
            if f.path.trim().is_empty() {
                out.push(("path".into(), "must not be empty".into()));
            }
        }
        ExporterConfig::Debug(_) => {}
    }
    out
}

fn tls(t: &ClientTlsConfig, out: &mut Problems) {
    if t.cert_file.is_some() != t.key_file.is_some() {
        out.push((
            "tls".into(),
            "cert_file and key_file must be set together".into(),
        ));
    }
    if t.insecure && (t.ca_file.is_some() || t.cert_file.is_some()) {
        out.push((
            "tls.insecure".into(),
            "insecure: true conflicts with ca_file/cert_file".into(),
        ));
    }
}

fn retry(r: &RetryConfig, out: &mut Problems) {
    if !r.enabled {
        return;
    }
    if r.initial_interval.is_zero() {
        out.push((
            "retry_on_failure.initial_interval".into(),
            "must be greater than 0".into(),
        ));
    }
    if r.max_interval < r.initial_interval {
        out.push((
            "retry_on_failure.max_interval".into(),
            "must be at least initial_interval".into(),
        ));
    }
    if r.multiplier < 1.0 {
        out.push((
            "retry_on_failure.multiplier".into(),
            "must be at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&r.randomization_factor) {
        out.push((
            "retry_on_failure.randomization_factor".into(),
            "must be between 0 and 1".into(),
        ));
    }
}

fn queue(q: &QueueConfig, out: &mut Problems) {
    if q.enabled && q.queue_size == 0 {
        out.push((
            "sending_queue.queue_size".into(),
            "must be greater than 0".into(),
        ));
    }
    if q.enabled && q.num_consumers == 0 {
        out.push((
            "sending_queue.num_consumers".into(),
            "must be greater than 0".into(),
        ));
    }
}
