#!/usr/bin/env bash
# Builds the test OpenTelemetry Collector (tools/otelcol: OTLP receiver and the
# contrib file exporter) with the venv's Go, at the release pinned in
# tools/otelcol/go.mod, into var/otelcol/otelcol-<release>; prints its path.
# The binary is kept under var/ (keyed by release and source), so a second run
# is instant; Go's build cache is the one the Go test workloads share
# (tests/integration/containers.py) and its module cache the usual one, both
# outside the work tree, so a fresh clone on the same machine rebuilds in
# seconds and with no network (go.sum pins every module).
set -euo pipefail
# Go's caches live under $HOME; a service's environment may have none.
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
repo="$(cd "$(dirname "$0")/.." && pwd)"
src="$repo/tools/otelcol"
go="${GO:-$repo/.venv/lib/python3.11/site-packages/go/bin/go}"
release="$(awk '$1 == "go.opentelemetry.io/collector/otelcol" {print $2}' "$src/go.mod")"
key="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)"
out="$repo/var/otelcol/otelcol-$release-$key"
if [[ ! -x "$out" ]]; then
    mkdir -p "$repo/var/otelcol"
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
    export GOCACHE="${XDG_CACHE_HOME:-$HOME/.cache}/oomtrace-go-build"
    (cd "$src" && "$go" build -trimpath -ldflags="-s -w" -o "$repo/var/otelcol/.build.tmp" .)
    rm -f "$repo"/var/otelcol/otelcol-*  # builds of an earlier pin or source
    mv "$repo/var/otelcol/.build.tmp" "$out"
fi
echo "$out"
