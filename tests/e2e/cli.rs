//! Goal: the command line says clearly what is valid, what is not, and what is not built yet.

use std::process::Command;

use crate::support::{BIN, tests_path};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn validate_prints_the_resolved_pipeline_of_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        "receivers:\n  otlp:\n    protocols:\n      grpc:\nprocessors:\n  batch:\nexporters:\n  otlp/tempo:\n    endpoint: tempo:4317\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch]\n      exporters: [otlp/tempo]\n",
    )
    .unwrap();
    let (code, out, _) = run(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("pipeline traces"), "{out}");
    assert!(
        out.contains("  processor batch: 8192 spans or 200ms"),
        "{out}"
    );
    assert!(
        out.contains("  exporter  otlp/tempo: OTLP/gRPC to tempo:4317"),
        "{out}"
    );
}

#[test]
fn validate_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "receivers:\n  otlp:\nprocessors:\n  batch:\n    timeout: soon\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug, otlp/x]\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["validate", "--config", p]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains(&format!(
            "{p}:5:5: processors.batch.timeout: invalid duration `soon`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{p}:12:7: service.pipelines.traces.exporters[1]: exporter `otlp/x` is not defined"
        )),
        "{err}"
    );
    assert!(err.contains(": 2 error(s)"), "{err}");
}

#[test]
fn the_reference_agent_config_validates_and_shows_its_pipeline() {
    let path = tests_path("configs/collector-agent-config.yaml");
    let (code, out, err) = run(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("processor k8sattributes: 5 metadata, 2 label(s)"),
        "{out}"
    );
    assert!(
        out.contains("exporter  loadbalancing: by trace ID to the owning gateway (k8s service otel-gateway-collector-headless)"),
        "{out}"
    );
}

#[test]
fn the_collectors_feature_gates_flag_is_taken_and_an_unknown_gate_is_named() {
    let path = tests_path("configs/collector-gateway-config.yaml");
    let path = path.to_str().unwrap();
    let gate = "--feature-gates=processor.tailsamplingprocessor.recordpolicy";
    let (code, _, err) = run(&["validate", "--config", path, gate]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&[
        "gateway",
        "--config",
        path,
        "--feature-gates=processor.tailsamplingprocessor.nosuch",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no such feature gate `processor.tailsamplingprocessor.nosuch`"),
        "{err}"
    );
}

#[test]
fn an_agent_with_a_broken_config_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        "receivers:\n  otlp:\nexporters:\n  loadbalancing:\n    routing_key: service\n    protocol:\n      otlp: {}\n    resolver:\n      static:\n        hostnames: [a]\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [loadbalancing]\n",
    )
    .unwrap();
    let (code, _, err) = run(&["agent", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("exporters.loadbalancing.routing_key: `service` is not supported"),
        "{err}"
    );
}

#[test]
fn dev_demo_runs_the_article_pipeline_and_reports_decisions() {
    // The README's first command, shortened: a local cluster (an agent, three gateways)
    // driven by the built-in load generator, one gateway rolled halfway, with every
    // listener on a free port so it can run beside other tests.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["dev", "--demo", "--demo-duration", "4s"])
        .args([
            "--grpc-endpoint",
            "127.0.0.1:0",
            "--http-endpoint",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-endpoint",
            "127.0.0.1:0",
            "--health-endpoint",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("local cluster ready (1 agent, 3 gateways)"),
        "{stdout}"
    );
    assert!(stdout.contains("rolling gateway-2"), "{stdout}");
    // Readable by someone who never heard of an epoch, and plain text in a pipe.
    assert!(
        stdout.contains("(epoch: the version of the ring"),
        "{stdout}"
    );
    assert!(stdout.contains("gateway-2 has left"), "{stdout}");
    assert!(stdout.contains("gateway-2 is back"), "{stdout}");
    assert!(
        stdout.contains("  sent "),
        "the load summary is a sentence:\n{stdout}"
    );
    assert!(!stdout.contains("LOADGEN"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "no ANSI codes in a pipe"
    );
    let handed_off: u64 = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("cluster: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no cluster summary:\n{stdout}"));
    assert!(
        handed_off > 0,
        "rolling a gateway handed nothing off:\n{stdout}"
    );
    assert!(
        stdout.contains("keep-errors"),
        "decisions reported by policy:\n{stdout}"
    );
    assert!(stdout.contains("unredacted secrets found: 0"), "{stdout}");
    let mut written = 0;
    for i in 0..3 {
        let path = dir
            .path()
            .join(format!("tailgate-data/traces-gateway-{i}.jsonl"));
        let file = std::fs::read_to_string(path).unwrap();
        written += file.lines().count();
        assert!(!file.contains("secret-token"));
    }
    assert!(written > 0, "kept traces were written");
}

#[test]
fn validate_shows_the_memory_limiters_configured_spike_and_where_it_refuses() {
    let path = tests_path("configs/collector-gateway-config.yaml");
    let (code, out, err) = run(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("processor memory_limiter: check every 1s, limit 2048 MiB, spike 512 MiB: refuses at 1536 MiB live, or 2048 MiB RSS"),
        "{out}"
    );
}

#[test]
fn validate_reports_both_typos_of_one_processor_at_their_lines_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typos.yaml");
    std::fs::write(
        &path,
        "receivers:\n  otlp:\nprocessors:\n  batch:\n    send_batch_sise: 10\n    timeuot: 1s\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch]\n      exporters: [debug]\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, _, err) = run(&["validate", "--config", p]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{p}:5:5: processors.batch.send_batch_sise")),
        "{err}"
    );
    assert!(err.contains("did you mean `send_batch_size`?"), "{err}");
    assert!(
        err.contains(&format!("{p}:6:5: processors.batch.timeuot")),
        "{err}"
    );
    assert!(err.contains("did you mean `timeout`?"), "{err}");
}

/// `tailgate dev` on free ports in `dir`, with SIGINT ignored as a non-interactive shell's
/// background job inherits it (`trap '' INT`).
fn dev_with_sigint_ignored(dir: &std::path::Path) -> std::process::Child {
    let free = || crate::support::free_port().to_string();
    let script = format!(
        "trap '' INT; exec {BIN} dev --grpc-endpoint 127.0.0.1:{} --http-endpoint 127.0.0.1:{} --metrics-endpoint 127.0.0.1:{} --health-endpoint 127.0.0.1:{}",
        free(),
        free(),
        free(),
        free()
    );
    Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit (panics after `timeout`).
fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sigint_right_after_start_stops_dev_even_when_inherited_as_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = dev_with_sigint_ignored(dir.path());
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut child, std::time::Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn dev_names_the_flag_that_moves_a_taken_port_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let free = || format!("127.0.0.1:{}", crate::support::free_port());
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["dev", "--grpc-endpoint", &addr])
        .args(["--http-endpoint", &free(), "--metrics-endpoint", &free()])
        .args(["--health-endpoint", &free()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{addr} is taken")) && err.contains("move it with --grpc-endpoint"),
        "{err}"
    );
    assert!(
        !dir.path().join("tailgate-data").exists(),
        "a failed start left its data folder behind"
    );
}

#[test]
fn help_says_what_dev_runs_and_what_the_gateway_seed_seeds() {
    let (code, out, _) = run(&["dev", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("an agent in front of three gateways"), "{out}");
    let (code, out, _) = run(&["gateway", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("not replayable from this seed"),
        "the help does not promise reproducible gateway runs:\n{out}"
    );
    assert!(out.contains("--set <KEY=VALUE>"), "{out}");
}
