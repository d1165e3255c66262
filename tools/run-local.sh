#!/usr/bin/env bash
# `make run`: a collector on its SQLite file and the agent beside it; prints
# each OOM kill as the collector records it. Ctrl-C stops all three, by pid.
set -euo pipefail
data=$1
listen=$2
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
if [ "$(id -u)" -ne 0 ]; then
    echo "make run: the agent loads BPF programs; run as root" >&2
    exit 1
fi
mkdir -p "$data"
pids=()
cleanup() {
    # SIGTERM: background jobs of a non-interactive shell ignore SIGINT.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Plaintext on a loopback address (--insecure refuses any other): one user's
# machine. In a cluster the collector serves mutual TLS (deploy/README.md).
"$bin/oomtrace" collector --listen "$listen" --insecure --db "$data/collector.db" \
    2>>"$data/collector.log" &
pids+=($!)
"$bin/oomtrace" agent --collector "$listen" --spool "$data/spool" \
    --status-file "$data/agent-status.json" 2>>"$data/agent.log" &
pids+=($!)

for _ in $(seq 1 100); do
    grep -q agent.ready "$data/agent.log" 2>/dev/null && break
    if ! kill -0 "${pids[1]}" 2>/dev/null; then
        echo "make run: the agent did not start; its log:" >&2
        tail -n 20 "$data/agent.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "oomtrace: collector on $listen (store $data/collector.db), agent recording."
echo "          logs in $data/*.log; in another shell try: make oom"
echo "          doctor: $bin/oomtrace doctor --no-load --status-file $data/agent-status.json"
# Say when the agent loses its collector (it spools meanwhile) and regains it.
"$bin/python" "$(dirname "$0")/agent_link.py" "$data/agent.log" &
pids+=($!)
"$bin/oomtrace" watch --collector "$listen" &
pids+=($!)
wait "${pids[3]}"
