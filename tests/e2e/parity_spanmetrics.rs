//! Goal: RED metrics from Tailgate's `spanmetrics` connector equal the collector's, series
//! for series, from the same traffic and the same config — the user's form: a traces
//! pipeline for sampling, a second traces pipeline from the same receiver into the
//! connector, a metrics pipeline into `prometheus`; and every exemplar Tailgate serves names
//! a trace it exported. Method: one config in both systems (two connectors: one with
//! dimensions and exemplars, one with a cardinality limit small enough to overflow); the
//! parity corpus to both; both scrape endpoints read once the counts have settled; every
//! series' value compared, `collector_instance_id` aside.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::parity::{corpus, reference_collector, start};
use crate::support::{BIN, Sink, free_port, scrape};

const CONFIG: &str = r"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:${env:PARITY_OTLP_PORT}
processors:
  tail_sampling:
    decision_wait: 1s
    policies:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
      - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 10}}
connectors:
  spanmetrics:
    dimensions:
      - name: http.route
      - name: tier
        default: free
    exemplars:
      enabled: true
    metrics_flush_interval: 1s
  spanmetrics/limited:
    namespace: limited
    aggregation_cardinality_limit: 4
    histogram:
      explicit:
        buckets: [5ms, 50ms, 500ms, 5s]
    metrics_flush_interval: 1s
exporters:
  otlp:
    endpoint: 127.0.0.1:${env:PARITY_SINK_PORT}
    tls:
      insecure: true
    sending_queue:
      queue_size: 10000
  prometheus:
    endpoint: 127.0.0.1:${env:PARITY_PROM_PORT}
    enable_open_metrics: true
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [otlp]
    traces/spanmetrics:
      receivers: [otlp]
      exporters: [spanmetrics, spanmetrics/limited]
    metrics:
      receivers: [spanmetrics, spanmetrics/limited]
      exporters: [prometheus]
";

/// Series (name and labels, `collector_instance_id` left out) → value.
type Samples = BTreeMap<String, f64>;

/// The samples of a Prometheus text exposition, and the exemplars' trace IDs.
fn parse(text: &str) -> (Samples, BTreeSet<String>) {
    let mut samples = Samples::new();
    let mut exemplars = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (sample, exemplar) = match line.split_once(" # ") {
            Some((s, e)) => (s, Some(e)),
            None => (line, None),
        };
        if let Some(e) = exemplar
            && let Some(at) = e.find("trace_id=\"")
        {
            exemplars.insert(e[at + 10..at + 42].to_string());
        }
        let (series, value) = sample.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if name.ends_with("_created") || name == "target_info" {
            continue;
        }
        let labels: Vec<&str> = split_labels(labels)
            .into_iter()
            .filter(|l| !l.starts_with("collector_instance_id="))
            .collect();
        let le_normalised: Vec<String> = labels
            .iter()
            .map(|l| match l.strip_prefix("le=\"") {
                Some(v) => format!("le=\"{}\"", v.trim_end_matches('"').trim_end_matches(".0")),
                None => (*l).to_string(),
            })
            .collect();
        samples.insert(
            format!("{name}{{{}}}", le_normalised.join(",")),
            value.parse().expect("a number"),
        );
    }
    (samples, exemplars)
}

/// `a="x",b="y,z"` → its pairs (commas inside quotes kept).
fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            '\\' if quoted => escaped = !escaped,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

struct Outcome {
    samples: Samples,
    exemplars: BTreeSet<String>,
    exported_traces: BTreeSet<String>,
}

async fn run(
    program: &std::path::Path,
    args: &[&str],
    dir: &std::path::Path,
    name: &str,
) -> Outcome {
    let (sink, sink_addr) = Sink::start().await;
    let otlp_port = free_port();
    let prom_port = free_port();
    let prom = prom_port.to_string();
    let running = start(
        program,
        args,
        otlp_port,
        sink_addr.port(),
        &[("PARITY_PROM_PORT", &prom)],
        dir,
        name,
    )
    .await;
    for r in corpus(7, 800) {
        crate::otlp::send_grpc(&format!("http://127.0.0.1:{otlp_port}"), r)
            .await
            .unwrap_or_else(|e| panic!("{name} refused the corpus: {e}\n{}", running.log()));
    }
    // Counts settle once two flushes (1 s apart) have passed without new spans; decisions
    // are due 1 s after each trace's first span.
    let mut last = Samples::new();
    let mut stable = 0;
    let mut text = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        text = scrape(prom_port, false).await;
        let (now, _) = parse(&text);
        stable = if now == last && !now.is_empty() {
            stable + 1
        } else {
            0
        };
        last = now;
        if stable >= 3 {
            break;
        }
    }
    assert!(
        stable >= 3,
        "{name}'s metrics did not settle:\n{text}\n{}",
        running.log()
    );
    let (_, exemplars) = parse(&scrape(prom_port, true).await);
    let exported_traces = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    drop(running);
    Outcome {
        samples: last,
        exemplars,
        exported_traces,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go to build the reference collector (tests/peers/build-collector.sh); .ci/run runs it where Go exists"]
async fn span_metrics_match_the_collector_series_for_series_and_exemplars_are_kept_traces() {
    let collector = tokio::task::spawn_blocking(reference_collector)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spanmetrics.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let collector_args = ["--config", config];
    let tailgate_args = ["gateway", "--config", config];
    let (theirs, ours) = tokio::join!(
        run(&collector, &collector_args, dir.path(), "collector"),
        run(
            std::path::Path::new(BIN),
            &tailgate_args,
            dir.path(),
            "tailgate"
        ),
    );
    let only = |a: &Samples, b: &Samples| -> Vec<String> {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .take(8)
            .map(|(k, v)| format!("{k} = {v} (other: {:?})", b.get(k)))
            .collect()
    };
    let calls: f64 = theirs
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("traces_span_metrics_calls_total{"))
        .map(|(_, v)| v)
        .sum();
    let overflow = theirs
        .samples
        .keys()
        .any(|k| k.contains("otel_metric_overflow=\"true\""));
    eprintln!(
        "collector: {} samples, {calls} calls; tailgate: {} samples; {} exemplars",
        theirs.samples.len(),
        ours.samples.len(),
        ours.exemplars.len()
    );
    assert!(
        calls > 1000.0 && overflow,
        "the corpus exercises the connector"
    );
    assert!(
        theirs.samples == ours.samples,
        "series differ.\nonly or different in the collector:\n{}\nonly or different in tailgate:\n{}",
        only(&theirs.samples, &ours.samples).join("\n"),
        only(&ours.samples, &theirs.samples).join("\n")
    );
    assert!(!ours.exemplars.is_empty(), "exemplars are served");
    let not_exported: Vec<&String> = ours
        .exemplars
        .iter()
        .filter(|t| !ours.exported_traces.contains(*t))
        .collect();
    assert!(
        not_exported.is_empty(),
        "exemplars naming traces tailgate did not export: {not_exported:?}"
    );
}
