#!/usr/bin/env bash
# The memory report's scenario on release binaries: the article's gateway config with
# `limit_mib: 256`, `spike_limit_mib: 64`, `decision_wait: 10s`, pinned to core 0; one raw
# load generator core (core 1) as fast as it goes for BURST_SECONDS (default 60); then
# 15 s of quiet and a light OpenTelemetry SDK load, which must be accepted in full. Prints the
# gateway's memory (RSS, live, buffered, queued) every 5 s and the counts of each phase.
# Needs release binaries (`cargo build --release -p tailgate -p tailgate-bench`) and the
# Python SDK (`pip install -r tests/python/requirements.txt`).
set -euo pipefail
cd "$(dirname "$0")/.."
burst_seconds="${BURST_SECONDS:-60}"
bin=target/release
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(free_port); metrics=$(free_port); sink=$(free_port); health=$(free_port); pprof=$(free_port)
sed -e "s/limit_mib: 2048/limit_mib: 256/" -e "s/spike_limit_mib: 512/spike_limit_mib: 64/" \
    -e "s/0.0.0.0:4317/127.0.0.1:$grpc/" -e "s/tempo:4317/127.0.0.1:$sink/" \
    -e "s/0.0.0.0:13133/127.0.0.1:$health/" -e "s/0.0.0.0:1777/127.0.0.1:$pprof/" \
    -e "s/^service:/service:\n  telemetry:\n    metrics:\n      address: 127.0.0.1:$metrics/" \
    tests/configs/collector-gateway-config.yaml > "$work/gateway.yaml"

taskset -c 1 "$bin/tailgate-bench" sink --port "$sink" &
taskset -c 0 "$bin/tailgate" gateway --config "$work/gateway.yaml" 2> "$work/gateway.log" &
for _ in $(seq 100); do curl -sf "127.0.0.1:$health/" >/dev/null && break; sleep 0.1; done

metric() { curl -s "127.0.0.1:$metrics/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%.0f", s}'; }
mib() { echo $(( $(metric "$1") / 1048576 )); }
report() {
    printf '%-10s RSS %4s MiB  live %4s MiB  buffered %4s MiB  export queue %3s MiB  limiter refusing %s  accepted %s  refused %s\n' \
        "$1" "$(mib otelcol_process_memory_rss)" "$(mib otelcol_process_runtime_heap_alloc_bytes)" \
        "$(mib tailgate_sampling_buffered_bytes)" "$(mib tailgate_exporter_queue_bytes)" \
        "$(metric tailgate_memory_limiter_refusing)" "$(metric otelcol_receiver_accepted_spans_total)" \
        "$(metric otelcol_receiver_refused_spans_total)"
}

report "idle"
taskset -c 1 "$bin/tailgate" loadgen --endpoint "http://127.0.0.1:$grpc" --duration "${burst_seconds}s" \
    --concurrency 8 --compression none > "$work/loadgen.out" &
loadgen=$!
for t in $(seq 5 5 "$burst_seconds"); do sleep 5; report "burst ${t}s"; done
wait "$loadgen" || true
grep LOADGEN "$work/loadgen.out"
for t in 5 10 15; do sleep 5; report "quiet ${t}s"; done
accepted=$(metric otelcol_receiver_accepted_spans_total); refused=$(metric otelcol_receiver_refused_spans_total)
sent=$(python3 tests/python/send_traces.py --protocol grpc --endpoint "http://127.0.0.1:$grpc" --traces 200 \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(len(t["span_ids"]) for t in d["traces"]), d["export_failures"])')
report "light load"
echo "light SDK load: $(echo "$sent" | cut -d' ' -f1) spans sent ($(echo "$sent" | cut -d' ' -f2) failed exports); accepted $(( $(metric otelcol_receiver_accepted_spans_total) - accepted )), refused $(( $(metric otelcol_receiver_refused_spans_total) - refused ))"
echo "memory releases: $(metric tailgate_memory_releases_total), $(( $(metric tailgate_memory_released_bytes_total) / 1048576 )) MiB given back"
