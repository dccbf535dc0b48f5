#!/usr/bin/env bash
# Builds the reference OpenTelemetry Collector (tests/peers/collector: collector modules from
# the Go module proxy, all at one release) or reuses the build, and prints the binary's
# absolute path as its last line. Needs Go (go.mod's version); the Go build cache makes a
# rebuild after a clean checkout take seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/collector"
out="$(cd "$here/../.." && pwd)/target/peers/otelcol-reference"
if [[ -x "$out" && "$out" -nt "$src/go.mod" && "$out" -nt "$src/go.sum" && "$out" -nt "$src/main.go" ]]; then
    echo "$out"
    exit 0
fi
command -v go >/dev/null || { echo "build-collector.sh: Go is needed to build the reference collector" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
(cd "$src" && go build -mod=readonly -trimpath -o "$out.tmp" . && mv "$out.tmp" "$out") >&2
echo "$out"
