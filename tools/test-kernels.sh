#!/usr/bin/env bash
# `make test-kernels`: the privileged tests again on the kernels users run,
# each booted with virtme-ng under QEMU's software emulation (this VM's
# /dev/kvm does not boot stock kernels), one after another:
#   5.10     Debian 11's (bullseye-security), cgroup v2
#   5.10-v1  the same kernel booted with cgroup v1 hierarchies (6.12 cannot:
#            Debian builds it without CONFIG_MEMCG_V1), the kill, pressure
#            and kernel-log tests only
#   6.1      Debian 12's, cgroup v2
#   6.12     Debian 12's backports, cgroup v2
# KERNELS="5.10" (or "6.1 6.12") runs a choice; CI runs all four. One boot
# per kernel, BPF compiled once in it, all its tests sharing it; each guest's
# report and exit code come back to the host (var/guest/<kernel>/).
#
# Every package is pinned. 6.1 is installed from the host's own release; the
# others are fetched with a private apt state (apt-get download) and unpacked
# with dpkg -x under var/kernels/ (cached between runs): nothing of another
# release is installed on the host. Their modules are shown to the guest at
# /lib/modules through a mount namespace, and their headers given to BCC as
# one merged tree (BCC_KERNEL_SOURCE).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
kernels=${KERNELS:-"5.10 5.10-v1 6.1 6.12"}

declare -A KVER=([5.10]=5.10.0-46-amd64 [6.1]=6.1.0-56-amd64 [6.12]=6.12.95+deb12-amd64)
declare -A PKGVER=([5.10]=5.10.262-1 [6.1]="" [6.12]=6.12.95-1~bpo12+1)
declare -A SUITE=(
    [5.10]="deb http://deb.debian.org/debian-security bullseye-security main"
    [6.1]=""
    [6.12]="deb http://deb.debian.org/debian bookworm-backports main"
)
declare -A CGROUP=([5.10]=v2 [5.10-v1]=v1 [6.1]=v2 [6.12]=v2)
# The suite each boot runs (guest-tests.sh): all of it, or the part that
# differs between cgroup versions.
declare -A TESTS=([5.10]=all [5.10-v1]=v1 [6.1]=all [6.12]=all)

need=(qemu-system-x86 busybox-static linux-image-6.1.0-56-amd64 linux-headers-6.1.0-56-amd64)
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

# A kernel of another release, unpacked under var/kernels/<label>/root.
fetch() {
    local label=$1 kver=${KVER[$1]} version=${PKGVER[$1]} dir=$repo/var/kernels/$1
    [ -f "$dir/.complete" ] && return 0
    rm -rf "$dir" && mkdir -p "$dir/apt/lists/partial" "$dir/apt/archives/partial" "$dir/debs"
    printf '%s\n' "${SUITE[$label]}" > "$dir/apt/sources.list"
    local apt=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=-
        -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt"
        -o "Dir::State::status=/dev/null" -o Acquire::Check-Valid-Until=false -qq)
    apt-get "${apt[@]}" update
    local pkgs=("linux-image-$kver=$version" "linux-headers-$kver=$version"
        "linux-headers-${kver%-amd64}-common=$version")
    (cd "$dir/debs" && apt-get "${apt[@]}" download "${pkgs[@]}")
    for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
    # What the package's postinst would make: modprobe in the guest needs it.
    depmod -b "$dir/root" "$kver"
    # One tree of headers for BCC: Debian splits them in common + amd64.
    local h=$dir/headers
    mkdir -p "$h"
    cp -a "$dir/root/usr/src/linux-headers-${kver%-amd64}-common/." "$h/"
    cp -a "$dir/root/usr/src/linux-headers-$kver/." "$h/"
    rm -rf "$dir/apt" "$dir/debs"
    touch "$dir/.complete"
    echo "test-kernels: unpacked $kver ($version) under $dir" >&2
}

# The Go workloads, built here: the guest cannot write the repository, and
# builds slowly under emulation (tests/integration/containers.py reuses these).
.venv/bin/python -c 'import tempfile, pathlib
from tests.integration.containers import build_every_oomgo
build_every_oomgo(pathlib.Path(tempfile.mkdtemp()))'
# The JVM tests' classes likewise: javac under emulation took over 300 s.
.venv/bin/python -c 'import tempfile, pathlib
from tests.integration.test_runtimes import compile_every_grow
compile_every_grow(pathlib.Path(tempfile.mkdtemp()))'

# A real userspace OOM killer for the guests (test_userspace_killers.py):
# Debian's earlyoom, unpacked under var/earlyoom, never installed, so no
# daemon of it ever runs on this machine.
if [ ! -x "$repo/var/earlyoom/usr/bin/earlyoom" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq earlyoom) && dpkg -x "$tmp"/earlyoom_*.deb "$repo/var/earlyoom"
    rm -rf "$tmp"
fi

rc=0
summary=()
for label in $kernels; do
    base=${label%-v1}
    kver=${KVER[$base]:?unknown kernel $label (known: ${!CGROUP[*]})}
    out=$(mktemp -d /tmp/oomtrace-guest-XXXXXX)
    if [ -n "${SUITE[$base]}" ]; then
        fetch "$base"
        image=$repo/var/kernels/$base/root/boot/vmlinuz-$kver
        modules=$repo/var/kernels/$base/root/lib/modules/$kver
        headers=$repo/var/kernels/$base/headers
    else
        image=/boot/vmlinuz-$kver
        modules=""
        headers=""
    fi
    echo "test-kernels: booting $kver, cgroup ${CGROUP[$label]} (software emulation: expect minutes)" >&2
    started=$(date +%s)
    # GUEST_TESTS=path/to/test_x.py runs only that in each guest (by hand).
    guest="/bin/sh $repo/tools/guest-tests.sh $out $repo ${CGROUP[$label]} ${headers:-none} ${GUEST_TESTS:-${TESTS[$label]}}"
    # No setsid between timeout and vng: qemu must die with the timeout. The
    # kernel's modules appear at /lib/modules in a mount namespace of vng's
    # own, which its root export shows the guest.
    # A guest that dies before it starts its tests (seen once: vng exit 255
    # within seconds, an empty console) is booted once more.
    for attempt in 1 2; do
        set +e
        if [ -n "$modules" ]; then
            unshare -m --propagation private sh -c '
                mount -t tmpfs oomtrace-modules /lib/modules &&
                mkdir "/lib/modules/$1" && mount --bind "$2" "/lib/modules/$1" &&
                shift 2 && exec "$@"' sh "$kver" "$modules" \
                timeout -k 10 1500 vng --disable-kvm --memory 2G --cpus 2 --rwdir="$out" \
                -r "$image" -- "$guest" </dev/null >"$out/console.log" 2>&1
        else
            timeout -k 10 1500 vng --disable-kvm --memory 2G --cpus 2 --rwdir="$out" \
                -r "$image" -- "$guest" </dev/null >"$out/console.log" 2>&1
        fi
        vng_rc=$?
        set -e
        took=$(($(date +%s) - started))
        echo "test-kernels: $kver finished in $took s (vng exit $vng_rc)" >&2
        if [ "$attempt" = 1 ] && [ ! -f "$out/kernel" ]; then
            echo "test-kernels: the $kver guest never started its tests; booting it again" >&2
            tail -n 20 "$out/console.log" >&2
            started=$(date +%s)
            continue
        fi
        break
    done
    mkdir -p "var/guest/$label"
    if [ ! -f "$out/rc" ]; then
        echo "test-kernels: the $kver guest did not finish its tests; console:" >&2
        tail -n 40 "$out/console.log" >&2
        summary+=("$label ($kver): did not finish, ${took} s")
        rc=1
        continue
    fi
    echo "=== guest kernel $(cat "$out/kernel") (cgroup ${CGROUP[$label]}): pytest report ==="
    cat "$out/pytest.log"
    cp "$out"/{pytest.log,report.xml,doctor.json,kernel} "var/guest/$label/" 2>/dev/null || true
    guest_rc=$(cat "$out/rc")
    summary+=("$label ($kver, cgroup ${CGROUP[$label]}): exit $guest_rc, ${took} s")
    [ "$guest_rc" = 0 ] || rc=1
done
printf 'test-kernels: %s\n' "${summary[@]}" >&2
exit "$rc"
