#!/usr/bin/env bash
# Builds Jaeger v2 (tests/peers/jaeger: `cmd/jaeger` as a Go tool from the module proxy, pinned
# in go.mod) or reuses the build, and prints the binary's absolute path as its last line. A Go
# tool, not `go install`: Jaeger's go.mod has replace directives, which `go install pkg@v`
# refuses. The Go build cache makes a rebuild after a clean checkout take seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/jaeger"
out="$(cd "$here/../.." && pwd)/target/peers/jaeger"
if [[ -x "$out" && "$out" -nt "$src/go.mod" && "$out" -nt "$src/go.sum" ]]; then
    echo "$out"
    exit 0
fi
command -v go >/dev/null || { echo "build-jaeger.sh: Go is needed to build Jaeger" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
(cd "$src" && go build -mod=readonly -trimpath -o "$out.tmp" github.com/jaegertracing/jaeger/cmd/jaeger \
    && mv "$out.tmp" "$out") >&2
echo "$out"
