//! Checks serde cannot express: relationships between fields of one component. Each check
//! returns `(path below the component, message)`.

use crate::components::*;
use crate::model::{ExporterConfig, ProcessorConfig, ReceiverConfig};
use crate::sampling::{CompositeConfig, Policy, PolicyKind, TailSamplingConfig};

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
                    out.push(("limit_percentage".into(), "must be at most 100".into()));
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
        ProcessorConfig::TailSampling(t) => sampling(t, &mut out),
        ProcessorConfig::K8sAttributes(k) => out.extend(crate::agent::validate_k8s(k)),
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

pub(crate) fn receiver(r: &ReceiverConfig) -> Problems {
    let ReceiverConfig::Otlp(otlp) = r;
    let mut out = Problems::new();
    let grpc = otlp.protocols.grpc.as_ref().and_then(|g| g.tls.as_ref());
    let http = otlp.protocols.http.as_ref().and_then(|h| h.tls.as_ref());
    if let Some(g) = &otlp.protocols.grpc {
        if g.max_concurrent_streams == 0 {
            out.push((
                "protocols.grpc.max_concurrent_streams".into(),
                "must be at least 1 (0, unlimited, would let one connection hold any number of requests)".into(),
            ));
        }
        if g.max_connections == 0 {
            out.push((
                "protocols.grpc.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        let k = &g.keepalive.server_parameters;
        for (name, d) in [
            ("max_connection_idle", Some(k.max_connection_idle)),
            ("max_connection_age", k.max_connection_age),
            ("time", k.time),
            ("timeout", k.timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                out.push((
                    format!("protocols.grpc.keepalive.server_parameters.{name}"),
                    "must be greater than 0".into(),
                ));
            }
        }
    }
    if let Some(h) = &otlp.protocols.http {
        if h.max_connections == 0 {
            out.push((
                "protocols.http.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        for (name, d) in [
            ("read_header_timeout", h.read_header_timeout),
            ("idle_timeout", h.idle_timeout),
        ] {
            if d.is_zero() {
                out.push((
                    format!("protocols.http.{name}"),
                    "must be greater than 0".into(),
                ));
            }
        }
    }
    for (protocol, tls) in [("grpc", grpc), ("http", http)] {
        if let Some(tls) = tls {
            out.extend(
                tls.problems()
                    .into_iter()
                    .map(|(path, msg)| (format!("protocols.{protocol}.{path}"), msg)),
            );
        }
    }
    out
}

pub(crate) fn exporter(e: &ExporterConfig) -> Problems {
    let mut out = Problems::new();
    match e {
        ExporterConfig::Prometheus(p) => {
            let has_port = p
                .endpoint
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
            if !has_port {
                out.push((
                    "endpoint".into(),
                    format!("`{}` is not `host:port`", p.endpoint),
                ));
            }
        }
        ExporterConfig::Otlp(c) => {
            if c.endpoint.trim().is_empty() {
                out.push((
                    "endpoint".into(),
                    "required: `host:port` or a URL of the receiving OTLP/gRPC server".into(),
                ));
            }
            otlp_client(c, &mut out);
        }
        ExporterConfig::OtlpHttp(c) => {
            match (&c.endpoint, &c.traces_endpoint) {
                (None, None) => {
                    out.push(("endpoint".into(), "set endpoint or traces_endpoint".into()));
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
            if c.tls.server_name_override.is_some() {
                out.push((
                    "tls.server_name_override".into(),
                    "not supported by otlphttp (its HTTPS client checks the URL's host); use a host the certificate names, or the otlp exporter".into(),
                ));
            }
            retry(&c.retry_on_failure, &mut out);
            queue(&c.sending_queue, &mut out);
        }
        ExporterConfig::File(f) => {
            if f.path.trim().is_empty() {
                out.push(("path".into(), "must not be empty".into()));
            }
        }
        ExporterConfig::Debug(_) => {}
        ExporterConfig::LoadBalancing(c) => {
            out.extend(crate::agent::validate_loadbalancing(c));
            let mut inner = Problems::new();
            if !c.protocol.otlp.endpoint.is_empty() {
                inner.push((
                    "endpoint".into(),
                    "does not apply here: the resolver gives each gateway's endpoint".into(),
                ));
            }
            otlp_client(&c.protocol.otlp, &mut inner);
            out.extend(
                inner
                    .into_iter()
                    .map(|(path, msg)| (format!("protocol.otlp.{path}"), msg)),
            );
        }
    }
    out
}

/// The client settings `otlp` shares with `loadbalancing`'s `protocol.otlp`.
fn otlp_client(c: &OtlpExporterConfig, out: &mut Problems) {
    if c.compression == Compression::SnappyFramed {
        out.push((
            "compression".into(),
            "x-snappy-framed is an OTLP/HTTP encoding; gRPC's snappy is already the framing format: use snappy".into(),
        ));
    }
    tls(&c.tls, out);
    retry(&c.retry_on_failure, out);
    queue(&c.sending_queue, out);
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

fn sampling(t: &TailSamplingConfig, out: &mut Problems) {
    if t.decision_wait.is_zero() {
        out.push(("decision_wait".into(), "must be greater than 0".into()));
    }
    if t.num_traces == 0 {
        out.push(("num_traces".into(), "must be greater than 0".into()));
    }
    if t.buffer_limit_mib == Some(0) {
        out.push(("buffer_limit_mib".into(), "must be greater than 0".into()));
    }
    if t.shards == Some(0) {
        out.push(("shards".into(), "must be greater than 0".into()));
    }
    if t.policies.is_empty() {
        out.push(("policies".into(), "at least one policy is required".into()));
    }
    policies(&t.policies, "policies", out);
}

fn policies(list: &[Policy], at: &str, out: &mut Problems) {
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if p.name.trim().is_empty() {
            out.push((format!("{here}.name"), "must not be empty".into()));
        } else if !names.insert(p.name.as_str()) {
            out.push((
                format!("{here}.name"),
                format!("duplicate policy name `{}`", p.name),
            ));
        }
        policy(&p.kind, &here, out);
    }
}

/// Checks between the fields of one policy's settings (its shape was checked at load).
fn policy(kind: &PolicyKind, here: &str, out: &mut Problems) {
    let mut problem =
        |sub: &str, message: &str| out.push((format!("{here}.{sub}"), message.into()));
    match kind {
        PolicyKind::Latency(l) => {
            if l.upper_threshold_ms != 0 && l.upper_threshold_ms < l.threshold_ms {
                problem(
                    "latency.upper_threshold_ms",
                    "must be 0 (none) or at least threshold_ms",
                );
            }
        }
        PolicyKind::NumericAttribute(n) => {
            if n.min_value == 0 && n.max_value == 0 {
                problem("numeric_attribute", "set min_value, max_value or both");
            }
            if n.max_value != 0 && n.min_value > n.max_value {
                problem("numeric_attribute.max_value", "must be at least min_value");
            }
        }
        PolicyKind::Probabilistic(p) => {
            if !(0.0..=100.0).contains(&p.sampling_percentage) {
                problem(
                    "probabilistic.sampling_percentage",
                    "must be between 0 and 100",
                );
            }
        }
        PolicyKind::StatusCode(s) => {
            if s.status_codes.is_empty() {
                problem(
                    "status_code.status_codes",
                    "at least one of OK, ERROR, UNSET",
                );
            }
        }
        PolicyKind::StringAttribute(s) => {
            if s.values.is_empty() {
                problem("string_attribute.values", "at least one value is required");
            }
        }
        PolicyKind::RateLimiting(r) => {
            if r.spans_per_second == 0 {
                problem("rate_limiting.spans_per_second", "must be greater than 0");
            }
        }
        PolicyKind::BytesLimiting(b) => {
            if b.bytes_per_second == 0 {
                problem("bytes_limiting.bytes_per_second", "must be greater than 0");
            }
        }
        PolicyKind::ThroughputTarget(t) => throughput_target(t, &mut problem),
        PolicyKind::SpanCount(c) => {
            if c.max_spans != 0 && c.max_spans < c.min_spans {
                problem(
                    "span_count.max_spans",
                    "must be 0 (none) or at least min_spans",
                );
            }
        }
        PolicyKind::TraceState(t) => {
            if t.values.is_empty() {
                problem("trace_state.values", "at least one value is required");
            }
        }
        PolicyKind::OttlCondition(o) => {
            if o.span.is_empty() && o.spanevent.is_empty() {
                problem("ottl_condition", "set span or spanevent conditions");
            }
        }
        PolicyKind::And(subs) => {
            if subs.is_empty() {
                problem("and.and_sub_policy", "at least one sub-policy is required");
            }
            policies(subs, &format!("{here}.and.and_sub_policy"), out);
        }
        PolicyKind::Not(sub) => policy(&sub.kind, &format!("{here}.not.not_sub_policy"), out),
        PolicyKind::Drop(subs) => {
            if subs.is_empty() {
                problem(
                    "drop.drop_sub_policy",
                    "at least one sub-policy is required",
                );
            }
            policies(subs, &format!("{here}.drop.drop_sub_policy"), out);
        }
        PolicyKind::Composite(c) => composite(c, &format!("{here}.composite"), out),
        PolicyKind::AlwaysSample | PolicyKind::TraceFlags | PolicyKind::BooleanAttribute(_) => {}
    }
}

fn composite(c: &CompositeConfig<Policy>, at: &str, out: &mut Problems) {
    if c.max_total_spans_per_second == 0 {
        out.push((
            format!("{at}.max_total_spans_per_second"),
            "must be greater than 0".into(),
        ));
    }
    policies(
        &c.composite_sub_policy,
        &format!("{at}.composite_sub_policy"),
        out,
    );
    let names: Vec<&str> = c
        .composite_sub_policy
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let mut total = 0;
    for (i, r) in c.rate_allocation.iter().enumerate() {
        if !names.contains(&r.policy.as_str()) {
            out.push((
                format!("{at}.rate_allocation[{i}].policy"),
                format!("`{}` is not a composite_sub_policy", r.policy),
            ));
        }
        total += r.percent;
    }
    if total > 100 {
        out.push((
            format!("{at}.rate_allocation"),
            format!("percentages add up to {total}, more than 100"),
        ));
    }
}

/// `throughput_target`'s settings.
fn throughput_target(
    t: &crate::sampling::ThroughputTargetConfig,
    problem: &mut impl FnMut(&str, &str),
) {
    if !(t.traces_per_second > 0.0 && t.traces_per_second.is_finite()) {
        problem(
            "throughput_target.traces_per_second",
            "must be a number greater than 0",
        );
    }
    if t.adjustment_interval.0 < std::time::Duration::from_secs(1) {
        problem(
            "throughput_target.adjustment_interval",
            "must be at least 1s: shorter windows hold too few traces to estimate rates",
        );
    }
    if t.max_keys == 0 {
        problem("throughput_target.max_keys", "must be greater than 0");
    }
    if t.fingerprint_attributes.is_empty() {
        problem(
            "throughput_target.fingerprint_attributes",
            "at least one attribute is required",
        );
    }
}
