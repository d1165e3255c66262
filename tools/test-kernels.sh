#!/usr/bin/env bash
# `make test-kernels`: the privileged tests on a second kernel, Debian's 6.1
# (cgroup v2, kprobes, fentry), booted with virtme-ng under QEMU's software
# emulation (this VM's /dev/kvm does not boot stock kernels). One boot, BPF
# compiled once, all tests sharing it; the guest's report and exit code come
# back to the host.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# Pinned: the image must match the headers BCC compiles against in the guest.
kver=6.1.0-56-amd64
need=(qemu-system-x86 busybox-static "linux-image-$kver" "linux-headers-$kver")
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "test-kernels: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="$repo/.venv/bin:$PATH"
command -v vng >/dev/null || .venv/bin/python -m pip install -q virtme-ng

# The Go workloads, built here: the guest cannot write the repository, and
# builds slowly under emulation (tests/integration/containers.py reuses these).
.venv/bin/python -c 'import tempfile, pathlib
from tests.integration.containers import build_every_oomgo
build_every_oomgo(pathlib.Path(tempfile.mkdtemp()))'

out=$(mktemp -d /tmp/oomtrace-guest-XXXXXX)
echo "test-kernels: booting $kver (software emulation: expect minutes)" >&2
started=$(date +%s)
# No setsid between timeout and vng: qemu must die with the timeout.
set +e
timeout -k 10 1500 vng --disable-kvm --memory 2G --cpus 2 --rwdir="$out" \
    -r "/boot/vmlinuz-$kver" -- "/bin/sh $repo/tools/guest-tests.sh $out $repo" </dev/null \
    > "$out/console.log" 2>&1
vng_rc=$?
set -e
echo "test-kernels: guest finished in $(( $(date +%s) - started )) s (vng exit $vng_rc)" >&2
if [ ! -f "$out/rc" ]; then
    echo "test-kernels: the guest did not finish its tests; console:" >&2
    tail -n 40 "$out/console.log" >&2
    exit 1
fi
echo "=== guest kernel $(cat "$out/kernel"): pytest report ==="
cat "$out/pytest.log"
mkdir -p var/guest
cp "$out"/{pytest.log,report.xml,doctor.json,kernel} var/guest/ 2>/dev/null || true
exit "$(cat "$out/rc")"
