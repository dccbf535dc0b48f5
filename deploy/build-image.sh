#!/usr/bin/env bash
# Builds the `tailgate` container image with no registry access: a FROM-scratch image holding
# the binary, the shared libraries it links (glibc, libgcc_s; found with ldd) and the CA
# bundle. Nothing is pulled.
#
#   deploy/build-image.sh                 # release build, image tailgate:latest
#   deploy/build-image.sh --tag tailgate:test --binary target/debug/tailgate
#
# With registry access, deploy/Dockerfile (multi-stage, distroless, non-root) builds the same
# image from source.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="tailgate:latest"
binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        *) echo "usage: $0 [--tag NAME:TAG] [--binary PATH]" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    cargo build --release -p tailgate
    binary=target/release/tailgate
fi
command -v docker >/dev/null || { echo "docker is required" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/rootfs/etc/ssl/certs" "$root/rootfs/tmp" "$root/rootfs/data"
# Debug info stays on the build machine (a debug build is ~400 MB with it).
strip --strip-debug -o "$root/rootfs/tailgate" "$binary"
chmod 0755 "$root/rootfs/tailgate"
# The dynamic loader and every library the binary links, at the paths ldd names.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    mkdir -p "$root/rootfs$(dirname "$lib")"
    cp -L "$lib" "$root/rootfs$lib"
done
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/rootfs/etc/ssl/certs/"
# A non-root user (65532, as distroless' nonroot) for the image's USER.
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' > "$root/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/rootfs/etc/group"
cp deploy/Dockerfile.scratch "$root/Dockerfile"
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$root" >/dev/null 2>&1 || DOCKER_BUILDKIT=0 docker build -t "$tag" "$root"
echo "built $tag ($(docker image inspect "$tag" --format '{{.Size}}') bytes)"
