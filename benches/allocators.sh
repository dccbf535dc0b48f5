#!/usr/bin/env bash
# The allocator comparison in docs/performance.md: P1 with jemalloc (the default build) beside
# glibc's malloc (`--no-default-features`), A B in turn on the same load and sink; CPU per
# span, peak RSS and RSS against what the gateway holds. Extra arguments go to the P1 run,
# e.g. `benches/allocators.sh --seconds 10 --rounds 3`.
set -euo pipefail
cd "$(dirname "$0")/.."

builds=target/allocators
mkdir -p "$builds"
cargo build --release -p tailgate --no-default-features
cp target/release/tailgate "$builds/tailgate-glibc"
# The default build last: the load generator and the other benchmarks use it.
cargo build --release -p tailgate -p tailgate-bench
cp target/release/tailgate "$builds/tailgate-jemalloc"
command -v taskset >/dev/null || { echo "taskset (util-linux) is required to pin processes"; exit 1; }

./target/release/tailgate-bench gateway --no-rotel \
    --tailgate-bin "jemalloc=$builds/tailgate-jemalloc" \
    --tailgate-bin "glibc=$builds/tailgate-glibc" "$@"
