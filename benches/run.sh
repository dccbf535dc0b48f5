#!/usr/bin/env bash
# One command for the figures in docs/performance.md: builds release binaries and the reference
# collector (tests/peers/), installs rotel if it is missing, then runs P1 (Tailgate beside the
# collector's tail_sampling on the same YAML, and rotel), P2, P4, P3 (handoff), replication's cost
# (replication_factor 2 beside 1) and the agent's
# cost (the Tailgate agent beside the collector on the same agent YAML, a forward-only agent and
# rotel), then P1 at a fixed rate under each compression (none, gzip, zstd) and `scale` (the
# gateway on 1, 2, 4, 8 cores where the machine has them, with P4's lateness at 80% of each
# maximum). Extra arguments go to the first P1 run, e.g. `benches/run.sh --seconds 10 --rounds 1`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p tailgate -p tailgate-bench
if ! python3 -c 'import rotel' 2>/dev/null; then
    python3 -m pip install --quiet --pre rotel || echo "rotel could not be installed: P1 runs without it"
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required to pin processes"; exit 1; }

rotel_flag=()
python3 -c 'import rotel' 2>/dev/null || rotel_flag=(--no-rotel)
collector_flag=()
if collector=$(bash tests/peers/build-collector.sh | tail -1); then
    collector_flag=(--collector "$collector")
else
    echo "the reference collector could not be built (is Go installed?): P1 runs without it"
fi
./target/release/tailgate-bench gateway "${rotel_flag[@]}" "${collector_flag[@]}" "$@"
./target/release/tailgate-bench memory
./target/release/tailgate-bench latency
./target/release/tailgate-bench handoff
./target/release/tailgate-bench replication
./target/release/tailgate-bench agent "${rotel_flag[@]}" "${collector_flag[@]}"
for compression in none gzip zstd; do
    ./target/release/tailgate-bench gateway "${rotel_flag[@]}" "${collector_flag[@]}" \
        --rate 3000 --seconds 15 --rounds 2 --compression "$compression"
done
./target/release/tailgate-bench scale
