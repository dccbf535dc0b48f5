//! Goal: every kind of config mistake yields one exact, actionable message naming the file,
//! the YAML path and what is allowed. Method: table of (config text, expected errors).

use crate::components::Compression;
use crate::*;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Each error as `file: path: message` (locations are checked on their own below).
fn errors(text: &str) -> Vec<String> {
    located_errors(text)
        .into_iter()
        .map(|e| format!("{}: {}: {}", e.file, e.path, e.message))
        .collect()
}

fn located_errors(text: &str) -> Vec<ConfigError> {
    match load_str(text, "test.yaml", &no_env) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.0,
    }
}

#[test]
fn two_typos_in_one_processor_are_both_reported_with_line_column_and_a_suggestion() {
    let text = format!(
        "receivers:\n  otlp:\nprocessors:\n  batch:\n    send_batch_sise: 10\n    timeuot: 1s\nexporters:\n  debug:\n{MINIMAL_SERVICE}"
    );
    let got: Vec<String> = located_errors(&text)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            "test.yaml:5:5: processors.batch.send_batch_sise: unknown field `send_batch_sise`, expected one of `send_batch_size`, `send_batch_max_size`, `timeout`; did you mean `send_batch_size`?",
            "test.yaml:6:5: processors.batch.timeuot: unknown field `timeuot`, expected one of `send_batch_size`, `send_batch_max_size`, `timeout`; did you mean `timeout`?",
        ]
    );
}

#[test]
fn semantic_errors_carry_the_line_and_column_of_their_key() {
    // A pipeline naming an exporter nobody defined: found after parsing, still placed.
    let text = "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debgu]\n";
    let got = located_errors(text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].location, Some((9, 7)), "{}", got[0]);
    assert!(
        got[0]
            .to_string()
            .starts_with("test.yaml:9:7: service.pipelines.traces.exporters")
    );
}

#[test]
fn unknown_types_and_top_level_keys_get_a_did_you_mean() {
    let text = format!(
        "reciever:\n  otlp:\nreceivers:\n  otlp:\nexporters:\n  debug:\n  otpl:\n{MINIMAL_SERVICE}"
    );
    let got = errors(&text);
    assert!(
        got.iter().any(
            |e| e.contains("exporters.otpl: unknown exporter type `otpl`")
                && e.ends_with("did you mean `otlp`?")
        ),
        "{got:#?}"
    );
    assert!(
        got.iter().any(
            |e| e.starts_with("test.yaml: reciever: unknown top-level key")
                && e.ends_with("did you mean `receivers`?")
        ),
        "{got:#?}"
    );
}

#[test]
fn syntax_error_snippets_name_the_file() {
    let got = errors("receivers:\n  otlp: [\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("test.yaml"), "{}", got[0]);
    assert!(!got[0].contains("<input>"), "{}", got[0]);
}

const MINIMAL_SERVICE: &str = "
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
";

#[test]
fn minimal_config_gets_collector_defaults() {
    let text = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\nexporters:\n  debug:\n{MINIMAL_SERVICE}"
    );
    let cfg = load_str(&text, "test.yaml", &no_env).unwrap();
    let ReceiverConfig::Otlp(otlp) = &cfg.receivers[&ComponentId::parse("otlp").unwrap()];
    let grpc = otlp
        .protocols
        .grpc
        .as_ref()
        .expect("grpc enabled by presence");
    assert_eq!(grpc.endpoint, "0.0.0.0:4317");
    assert_eq!(grpc.max_recv_msg_size_mib, 4);
    assert!(otlp.protocols.http.is_none());
    assert_eq!(cfg.service.telemetry.metrics.address, "0.0.0.0:8888");
    assert_eq!(cfg.service.pipelines.len(), 1);
}

#[test]
fn bad_configs_give_exact_errors() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        // 1. unknown component type
        (
            format!("receivers:\n  otlp:\nexporters:\n  debug:\n  kafka:\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: exporters.kafka: unknown exporter type `kafka`; supported: debug, file, loadbalancing, otlp, otlphttp, prometheus"],
        ),
        // 2. unknown key inside a component
        (
            format!("receivers:\n  otlp:\nprocessors:\n  batch:\n    send_batch_sise: 10\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
            vec![
                "test.yaml: processors.batch.send_batch_sise: unknown field `send_batch_sise`, expected one of `send_batch_size`, `send_batch_max_size`, `timeout`; did you mean `send_batch_size`?",
            ],
        ),
        // 3. wrong value type
        (
            format!("receivers:\n  otlp:\nprocessors:\n  batch:\n    send_batch_size: lots\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: processors.batch.send_batch_size: invalid type: string \"lots\", expected usize"],
        ),
        // 4. bad duration
        (
            format!("receivers:\n  otlp:\nprocessors:\n  batch:\n    timeout: 5 seconds\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: processors.batch.timeout: invalid duration `5 seconds`: unknown unit ` seconds` (use ns, us, ms, s, m or h)"],
        ),
        // 5. dangling pipeline reference
        (
            "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [otlp/tempo]\n".into(),
            vec!["test.yaml: service.pipelines.traces.exporters[0]: exporter `otlp/tempo` is not defined; defined exporters: debug"],
        ),
        // 6. unknown top-level key
        (
            format!("receivers:\n  otlp:\nexporters:\n  debug:\nrecievers: {{}}\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: recievers: unknown top-level key; allowed: receivers, processors, exporters, extensions, connectors, service, cluster; did you mean `receivers`?"],
        ),
        // 7. metrics pipeline
        (
            "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    metrics:\n      receivers: [otlp]\n      exporters: [debug]\n".into(),
            vec![
                "test.yaml: service.pipelines.metrics.receivers[0]: receiver `otlp` does not receive metrics in Tailgate: a metrics pipeline's receivers are connectors, such as spanmetrics",
                "test.yaml: service.pipelines.metrics.exporters[0]: exporter `debug` does not export metrics; metrics exporters: otlp, prometheus",
                "test.yaml: service.pipelines: no traces pipeline: define `service.pipelines.traces`",
            ],
        ),
        // 8. OTTL outside the subset
        (
            format!(
                "receivers:\n  otlp:\nprocessors:\n  filter:\n    traces:\n      span:\n        - 'attributes[\"a\"] == \"b\"'\n        - 'Concat(name) == \"x\"'\nexporters:\n  debug:\n{MINIMAL_SERVICE}"
            ),
            vec![
                "test.yaml: processors.filter.traces.span[1]: invalid OTTL condition `Concat(name) == \"x\"` at column 1: unsupported function or enum `Concat`; supported: IsMatch, SPAN_KIND_*, STATUS_CODE_*",
            ],
        ),
        // 9. memory_limiter without a limit, and out of order
        (
            "receivers:\n  otlp:\nprocessors:\n  batch:\n  memory_limiter:\n    check_interval: 1s\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch, memory_limiter]\n      exporters: [debug]\n".into(),
            vec![
                "test.yaml: processors.memory_limiter.limit_mib: set one of limit_mib or limit_percentage",
                "test.yaml: service.pipelines.traces.processors[1]: memory_limiter must be the first processor of a pipeline",
            ],
        ),
        // 10. attribute action missing its value
        (
            format!("receivers:\n  otlp:\nprocessors:\n  attributes/redact:\n    actions:\n      - key: db.statement\n        action: update\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: processors.attributes/redact.actions[0]: set exactly one of value or from_attribute"],
        ),
        // 11. unknown action
        (
            format!("receivers:\n  otlp:\nprocessors:\n  attributes:\n    actions:\n      - key: a\n        action: remove\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
            vec![
                "test.yaml: processors.attributes.actions[0].action: unknown variant `remove`, expected one of `insert`, `update`, `upsert`, `delete`, `hash`, `extract`",
            ],
        ),
        // 12. otlphttp without a scheme
        (
            format!("receivers:\n  otlp:\nexporters:\n  debug:\n  otlphttp:\n    endpoint: tempo:4318\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: exporters.otlphttp.endpoint: `tempo:4318` must start with http:// or https://"],
        ),
        // 13. a k8sattributes metadata name the processor does not know
        (
            format!("receivers:\n  otlp:\nprocessors:\n  k8sattributes:\n    extract:\n      metadata: [k8s.pod.nmae]\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: processors.k8sattributes.extract.metadata[0]: unknown metadata `k8s.pod.nmae`; supported: k8s.pod.name, k8s.pod.uid, k8s.pod.start_time, k8s.pod.ip, k8s.namespace.name, k8s.node.name, k8s.deployment.name, k8s.deployment.uid, k8s.replicaset.name, k8s.replicaset.uid, k8s.statefulset.name, k8s.statefulset.uid, k8s.daemonset.name, k8s.daemonset.uid, k8s.job.name, k8s.job.uid, k8s.cronjob.name, k8s.cronjob.uid, k8s.container.name, container.image.name, container.image.tag"],
        ),
        // 14. not YAML at all
        ("receivers: [otlp\n".into(), vec![]),
        // 15. missing service
        ("receivers:\n  otlp:\nexporters:\n  debug:\n".into(), vec!["test.yaml: service: missing: a config needs `service.pipelines.traces`"]),
        // 16. TLS halves
        (
            format!("receivers:\n  otlp:\nexporters:\n  debug:\n  otlp:\n    endpoint: tempo:4317\n    tls:\n      cert_file: c.pem\n{MINIMAL_SERVICE}"),
            vec!["test.yaml: exporters.otlp.tls: cert_file and key_file must be set together"],
        ),
    ];
    for (text, want) in cases {
        let got = errors(&text);
        if want.is_empty() {
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                got[0].starts_with("test.yaml: (document): not valid YAML"),
                "{got:?}"
            );
        } else {
            assert_eq!(got, want, "config:\n{text}");
        }
    }
}

#[test]
fn env_substitution_fills_typed_fields() {
    let text = "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: ${env:GRPC_ADDR:-127.0.0.1:0}\n        max_recv_msg_size_mib: ${env:MAX_MIB}\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";
    let env = |n: &str| (n == "MAX_MIB").then(|| "16".to_string());
    let cfg = load_str(text, "t.yaml", &env).unwrap();
    let ReceiverConfig::Otlp(otlp) = cfg.receivers.values().next().unwrap();
    let grpc = otlp.protocols.grpc.as_ref().unwrap();
    assert_eq!(grpc.endpoint, "127.0.0.1:0");
    assert_eq!(grpc.max_recv_msg_size_mib, 16);
}

/// The repository's verbatim copies of the reference article's configs.
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/configs/");

#[test]
fn the_reference_gateway_config_loads_unchanged() {
    let text = std::fs::read_to_string(format!("{REFERENCE}collector-gateway-config.yaml"))
        .expect("tests/configs holds the article's gateway config");
    let cfg = load_str(&text, "gateway.yaml", &no_env).unwrap_or_else(|e| panic!("{e}"));
    let ProcessorConfig::TailSampling(t) =
        &cfg.processors[&ComponentId::parse("tail_sampling").unwrap()]
    else {
        panic!("tail_sampling")
    };
    assert_eq!(t.decision_wait.0, std::time::Duration::from_secs(10));
    assert_eq!(t.num_traces, 50_000);
    let names: Vec<&str> = t.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "keep-errors",
            "keep-slow",
            "keep-debug-flagged",
            "sample-normal"
        ]
    );
}

#[test]
fn the_reference_agent_config_loads_unchanged() {
    use crate::agent::{K8sAssociationFrom, K8sAuthType, K8sExtractFrom};
    let text = std::fs::read_to_string(format!("{REFERENCE}collector-agent-config.yaml"))
        .expect("tests/configs holds the article's agent config");
    let cfg = load_str(&text, "agent.yaml", &no_env).unwrap_or_else(|e| panic!("{e}"));
    let ProcessorConfig::K8sAttributes(k) =
        &cfg.processors[&ComponentId::parse("k8sattributes").unwrap()]
    else {
        panic!("k8sattributes")
    };
    assert_eq!(k.auth_type, K8sAuthType::ServiceAccount);
    assert_eq!(k.extract.metadata.len(), 5);
    assert_eq!(k.extract.labels[0].tag_name.as_deref(), Some("app.version"));
    assert_eq!(k.extract.labels[1].from, K8sExtractFrom::Pod);
    assert_eq!(k.pod_association.len(), 2);
    assert_eq!(
        k.pod_association[1].sources[0].from,
        K8sAssociationFrom::Connection
    );
    let ExporterConfig::LoadBalancing(lb) =
        &cfg.exporters[&ComponentId::parse("loadbalancing").unwrap()]
    else {
        panic!("loadbalancing")
    };
    assert!(lb.protocol.otlp.tls.insecure);
    let k8s = lb.resolver.k8s.as_ref().unwrap();
    assert_eq!(k8s.service, "otel-gateway-collector-headless");
    assert_eq!(k8s.ports, vec![4317]);
    assert_eq!(lb.routing_key, "traceID");
}

#[test]
fn agent_component_mistakes_give_exact_errors() {
    let lb = |body: &str| {
        format!(
            "receivers:\n  otlp:\nexporters:\n  loadbalancing:\n{body}service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [loadbalancing]\n"
        )
    };
    let cases = [
        (
            lb(
                "    routing_key: service\n    protocol:\n      otlp: {}\n    resolver:\n      static:\n        hostnames: [a:4317]\n",
            ),
            "test.yaml: exporters.loadbalancing.routing_key: `service` is not supported: tail sampling needs every span of a trace at one gateway, use `traceID`",
        ),
        (
            lb(
                "    protocol:\n      otlp: {}\n    resolver:\n      static:\n        hostnames: [a:4317]\n      dns:\n        hostname: gw\n",
            ),
            "test.yaml: exporters.loadbalancing.resolver: set exactly one of `static`, `dns`, `k8s`",
        ),
        (
            lb(
                "    protocol:\n      otlp:\n        endpoint: x:4317\n    resolver:\n      static:\n        hostnames: [a:4317]\n",
            ),
            "test.yaml: exporters.loadbalancing.protocol.otlp.endpoint: does not apply here: the resolver gives each gateway's endpoint",
        ),
        (
            format!(
                "receivers:\n  otlp:\nprocessors:\n  k8sattributes:\n    pod_association:\n      - sources:\n          - from: resource_attribute\n            name: k8s.pod.name\nexporters:\n  debug:\n{MINIMAL_SERVICE}"
            ),
            "test.yaml: processors.k8sattributes.pod_association[0].sources: `k8s.pod.name` and `k8s.namespace.name` identify a pod only together",
        ),
        (
            format!(
                "receivers:\n  otlp:\nprocessors:\n  k8sattributes:\n    extract:\n      labels:\n        - tag_name: t\nexporters:\n  debug:\n{MINIMAL_SERVICE}"
            ),
            "test.yaml: processors.k8sattributes.extract.labels[0]: set exactly one of `key` or `key_regex`",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(errors(&text), vec![want.to_string()], "config:\n{text}");
    }
}

#[test]
fn tail_sampling_mistakes_give_exact_errors() {
    let wrap = |policies: &str| {
        format!(
            "receivers:\n  otlp:\nprocessors:\n  tail_sampling:\n    policies:\n{policies}exporters:\n  debug:\n{MINIMAL_SERVICE}"
        )
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            wrap("      - name: slow\n        type: latency\n        latency_ms: 5\n"),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].latency_ms: unknown field `latency_ms`, expected one of `name`, `type`, `latency`, `numeric_attribute`, `probabilistic`, `status_code`, `string_attribute`, `boolean_attribute`, `rate_limiting`, `bytes_limiting`, `span_count`, `trace_state`, `ottl_condition`, `and`, `not`, `drop`, `composite`, `throughput_target`; did you mean `latency`?",
            ],
        ),
        (
            wrap("      - name: slow\n        type: latency\n"),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].latency: missing: a policy of type `latency` needs its settings under `latency`",
            ],
        ),
        (
            wrap(
                "      - name: flag\n        type: boolean_attribute\n        string_attribute: {key: a, values: [b]}\n",
            ),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].string_attribute: `string_attribute` does not apply to a policy of type `boolean_attribute`; its settings go under `boolean_attribute`",
                "test.yaml: processors.tail_sampling.policies[0].boolean_attribute: missing: a policy of type `boolean_attribute` needs its settings under `boolean_attribute`",
            ],
        ),
        (
            wrap(
                "      - name: p\n        type: probabilistic\n        probabilistic: {sampling_percentage: 150}\n      - name: p\n        type: always_sample\n",
            ),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].probabilistic.sampling_percentage: must be between 0 and 100",
                "test.yaml: processors.tail_sampling.policies[1].name: duplicate policy name `p`",
            ],
        ),
        (
            wrap(
                "      - name: c\n        type: composite\n        composite:\n          max_total_spans_per_second: 100\n          policy_order: [a, b]\n          composite_sub_policy:\n            - name: a\n              type: always_sample\n          rate_allocation:\n            - {policy: a, percent: 120}\n            - {policy: b, percent: 0}\n",
            ),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].composite.rate_allocation[1].policy: `b` is not a composite_sub_policy",
                "test.yaml: processors.tail_sampling.policies[0].composite.rate_allocation: percentages add up to 120, more than 100",
            ],
        ),
        (
            wrap(
                "      - name: s\n        type: string_attribute\n        string_attribute: {key: k, values: ['(unclosed'], enabled_regex_matching: true}\n",
            ),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].string_attribute.values: invalid regex `(unclosed`: regex parse error:\n    (unclosed\n    ^\nerror: unclosed group",
            ],
        ),
        (
            wrap(
                "      - name: t\n        type: throughput_target\n        throughput_target: {traces_per_second: 0, adjustment_interval: 500ms, max_keys: 0, fingerprint_attributes: []}\n",
            ),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].throughput_target.traces_per_second: must be a number greater than 0",
                "test.yaml: processors.tail_sampling.policies[0].throughput_target.adjustment_interval: must be at least 1s: shorter windows hold too few traces to estimate rates",
                "test.yaml: processors.tail_sampling.policies[0].throughput_target.max_keys: must be greater than 0",
                "test.yaml: processors.tail_sampling.policies[0].throughput_target.fingerprint_attributes: at least one attribute is required",
            ],
        ),
        (
            wrap(
                "      - name: e\n        type: status_code\n        status_code: {status_codes: [FAILED]}\n",
            ),
            vec![
                "test.yaml: processors.tail_sampling.policies[0].status_code.status_codes[0]: unknown variant `FAILED`, expected one of `UNSET`, `OK`, `ERROR`",
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(errors(&text), want, "config:\n{text}");
    }
}

#[test]
fn set_overrides_win_over_the_file_and_create_what_is_missing() {
    let path = std::env::temp_dir().join(format!("tailgate-set-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!("receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 0.0.0.0:4317\nexporters:\n  debug:\n{MINIMAL_SERVICE}"),
    )
    .unwrap();
    let overrides = [
        "receivers::otlp::protocols::grpc::endpoint=127.0.0.1:14317".to_string(),
        "receivers::otlp::protocols::http::endpoint=127.0.0.1:14318".to_string(),
        "service::telemetry::metrics::address=127.0.0.1:18888".to_string(),
    ];
    let cfg = load_file_with_overrides(path.to_str().unwrap(), &overrides);
    let bad = load_file_with_overrides(path.to_str().unwrap(), &["receivers".to_string()]);
    std::fs::remove_file(&path).unwrap();
    let cfg = cfg.unwrap();
    let ReceiverConfig::Otlp(otlp) = &cfg.receivers[&ComponentId::parse("otlp").unwrap()];
    assert_eq!(
        otlp.protocols.grpc.as_ref().unwrap().endpoint,
        "127.0.0.1:14317"
    );
    assert_eq!(
        otlp.protocols.http.as_ref().unwrap().endpoint,
        "127.0.0.1:14318"
    );
    assert_eq!(cfg.service.telemetry.metrics.address, "127.0.0.1:18888");
    let errors = bad.unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.contains("expected KEY=VALUE"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_replication_factor_other_than_one_or_two_is_refused_at_its_key() {
    let text = format!(
        "receivers:\n  otlp:\nexporters:\n  debug:\n{MINIMAL_SERVICE}cluster:\n  replication_factor: 3\n"
    );
    assert_eq!(
        errors(&text),
        vec!["test.yaml: cluster.replication_factor: must be 1 or 2, got 3"]
    );
    let text = format!(
        "receivers:\n  otlp:\nexporters:\n  debug:\n{MINIMAL_SERVICE}cluster:\n  replication_factor: 2\n"
    );
    let cfg = load_str(&text, "test.yaml", &no_env).unwrap();
    assert_eq!(cfg.cluster.unwrap().replication_factor, 2);
}

#[test]
fn the_span_metrics_form_users_write_loads_and_its_mistakes_are_named() {
    let good = "receivers:\n  otlp:\nprocessors:\n  tail_sampling:\n    policies: [{name: all, type: always_sample}]\nconnectors:\n  spanmetrics:\n    dimensions: [{name: http.route}]\n    exemplars: {enabled: true}\nexporters:\n  otlp:\n    endpoint: backend:4317\n  prometheus:\n    endpoint: 0.0.0.0:8889\n    enable_open_metrics: true\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [tail_sampling]\n      exporters: [otlp]\n    traces/spanmetrics:\n      receivers: [otlp]\n      exporters: [spanmetrics]\n    metrics:\n      receivers: [spanmetrics]\n      exporters: [prometheus, otlp]\n";
    let cfg = load_str(good, "test.yaml", &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.pipelines(Signal::Traces).count(), 2);
    assert_eq!(cfg.pipelines(Signal::Metrics).count(), 1);
    let bad = good
        .replace("      exporters: [spanmetrics]\n", "      exporters: [spanmetrics, prometheus]\n")
        .replace("    dimensions: [{name: http.route}]\n", "    dimensions: [{name: span.kind}, {glob: 'http.*'}]\n    histogram: {exponential: {max_size: 160}}\n");
    assert_eq!(
        errors(&bad),
        [
            "test.yaml: connectors.spanmetrics.dimensions[0].name: duplicate dimension name `span.kind`",
            "test.yaml: connectors.spanmetrics.dimensions[1].glob: glob dimensions are not supported by Tailgate; list the attribute names",
            "test.yaml: connectors.spanmetrics.histogram.exponential: exponential histograms are not supported by Tailgate; use `explicit` buckets",
            "test.yaml: service.pipelines.traces/spanmetrics.exporters[1]: exporter `prometheus` exports metrics, not traces; use it in a metrics pipeline",
        ]
    );
    let unused = good
        .replace(
            "      receivers: [spanmetrics]\n      exporters: [prometheus, otlp]\n",
            "      receivers: [spanmetrics]\n      exporters: [prometheus]\n",
        )
        .replace(
            "    traces/spanmetrics:\n      receivers: [otlp]\n      exporters: [spanmetrics]\n",
            "",
        );
    assert_eq!(
        errors(&unused),
        [
            "test.yaml: connectors.spanmetrics: connector `spanmetrics` is a metrics pipeline's receiver but no traces pipeline's exporter"
        ]
    );
}

#[test]
fn every_collector_compression_name_loads_and_framed_snappy_on_grpc_is_refused() {
    let config = |otlp: &str, otlphttp: &str| {
        format!(
            "receivers:\n  otlp:\nexporters:\n  otlp:\n    endpoint: backend:4317\n    compression: {otlp}\n  otlphttp:\n    endpoint: http://backend:4318\n    compression: {otlphttp}\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [otlp, otlphttp]\n"
        )
    };
    for (name, want) in [
        ("gzip", Compression::Gzip),
        ("zstd", Compression::Zstd),
        ("snappy", Compression::Snappy),
        ("none", Compression::None),
        ("\"\"", Compression::None),
    ] {
        let cfg = load_str(&config(name, name), "test.yaml", &no_env)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for exporter in cfg.exporters.values() {
            let got = match exporter {
                ExporterConfig::Otlp(c) => c.compression,
                ExporterConfig::OtlpHttp(c) => c.compression,
                other => panic!("{other:?}"),
            };
            assert_eq!(got, want, "{name}");
        }
    }
    load_str(&config("zstd", "x-snappy-framed"), "test.yaml", &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        errors(&config("x-snappy-framed", "zstd")),
        vec![
            "test.yaml: exporters.otlp.compression: x-snappy-framed is an OTLP/HTTP encoding; gRPC's snappy is already the framing format: use snappy"
        ]
    );
}
