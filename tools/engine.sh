#!/usr/bin/env bash
# The container engine `make image` and `make test-deploy` use: Debian's
# dockerd at its default paths (/var/lib/docker, /run/docker.sock), as a
# node's would be, so the deploy test's agent finds Docker's state where the
# DaemonSet mounts it. A dockerd already answering there is used as it is.
#
#   tools/engine.sh start   start one unless one answers (idempotent)
#   tools/engine.sh stop    stop the one this script started (by its pid file)
#
# Started with no bridge, NAT or iptables rules: containers here use the
# host's network or share one another's, and the machine's firewall is left
# alone. Its containers' cgroups go under /oomtrace-engine (not dockerd's
# default /docker, which it never removes), removed when it stops. Its log:
# var/engine/dockerd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/var/engine
sock=/run/docker.sock
docker=(/usr/bin/docker -H "unix://$sock")

answers() { "${docker[@]}" version >/dev/null 2>&1; }

case "${1:-}" in
start)
    answers && exit 0
    [ "$(id -u)" -eq 0 ] || { echo "engine: starting dockerd needs root" >&2; exit 1; }
    mkdir -p "$dir"
    setsid dockerd --host "unix://$sock" --pidfile "$dir/dockerd.pid" \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
        --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent /oomtrace-engine \
        >"$dir/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 300); do
        answers && { echo "engine: dockerd started (pid $(cat "$dir/dockerd.pid"))" >&2; exit 0; }
        kill -0 $! 2>/dev/null || break
        sleep 0.2
    done
    echo "engine: dockerd did not come up; its log:" >&2
    tail -n 20 "$dir/dockerd.log" >&2
    exit 1
    ;;
stop)
    [ -f "$dir/dockerd.pid" ] || exit 0
    pid=$(cat "$dir/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null && grep -qa dockerd "/proc/$pid/cmdline"; then
        kill "$pid"
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$dir/dockerd.pid"
    # The cgroups its containers had: empty now (rmdir removes only empty ones).
    for tree in /sys/fs/cgroup/*/oomtrace-engine /sys/fs/cgroup/oomtrace-engine; do
        if [ -d "$tree" ]; then
            find "$tree" -depth -type d -exec rmdir {} + 2>/dev/null || true
        fi
    done
    ;;
*)
    echo "usage: tools/engine.sh start|stop" >&2
    exit 2
    ;;
esac
