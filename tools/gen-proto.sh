#!/usr/bin/env bash
# Generates the Python wire code (messages, gRPC stubs, type stubs) beside the
# .proto files. With --check, generates into a scratch folder and fails when
# the committed code differs: the protos changed and `make proto` was not run.
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
dir=${1:-proto/oomtrace/v1}
bin=.venv/bin
out=proto
if ((check)); then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; mkdir -p "$out/oomtrace/v1"; fi
# protoc-gen-mypy chats about every file it writes; keep its output for failures only.
if ! log=$("$bin/python" -m grpc_tools.protoc -Iproto \
    --python_out="$out" --grpc_python_out="$out" \
    --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" --mypy_out="$out" \
    --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" --mypy_grpc_out="$out" \
    "$dir"/*.proto 2>&1); then
    echo "$log" >&2
    exit 1
fi
if ((check)); then
    for f in "$out"/oomtrace/v1/*; do
        name=$(basename "$f")
        if ! cmp -s "$f" "$dir/$name"; then
            echo "proto-check: $dir/$name is stale; run 'make proto' and commit the result" >&2
            exit 1
        fi
    done
    echo "proto-check: generated code is up to date"
fi
