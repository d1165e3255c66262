#!/bin/sh
# Runs inside the guest kernel (booted by tools/test-kernels.sh): the
# privileged suite that adapts to the kernel, against the host's working tree
# (shared read-only). Results go to OUT, the one folder the guest may write.
#   guest-tests.sh OUT REPO CGROUP(v1|v2) HEADERS(dir|none)
out=$1
repo=$2
cgroup=${3:-v2}
headers=${4:-none}
cd "$repo" || exit 2
if [ "$cgroup" = v1 ]; then
    # virtme-ng's init mounts cgroup2; a node on v1 has one hierarchy per
    # controller instead. Nothing has enabled a controller in v2 yet, so each
    # is free to mount as v1.
    umount /sys/fs/cgroup 2>/dev/null
    mount -t tmpfs cgroup_root /sys/fs/cgroup
    for c in memory pids cpu,cpuacct; do
        mkdir -p "/sys/fs/cgroup/$c"
        mount -t cgroup -o "$c" "$c" "/sys/fs/cgroup/$c" || echo "guest: cannot mount v1 $c" >&2
    done
elif [ -f /sys/fs/cgroup/cgroup.subtree_control ]; then
    # A v2 root delegates the memory controller to its children on real nodes
    # (systemd does it); virtme-ng's init does not.
    echo +memory > /sys/fs/cgroup/cgroup.subtree_control
fi
if [ "$headers" != none ]; then
    # A kernel of another release: its headers as one tree (test-kernels.sh).
    BCC_KERNEL_SOURCE=$headers
    export BCC_KERNEL_SOURCE
fi
export PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
uname -r > "$out/kernel"
.venv/bin/oomtrace doctor --json > "$out/doctor.json" 2> "$out/doctor.log"
.venv/bin/python -m pytest -p no:cacheprovider -o timeout=1200 -rA \
    tests/integration/test_kills.py tests/integration/test_cgroup_v2.py \
    tests/integration/test_pressure.py tests/integration/test_go.py \
    tests/integration/test_kernel_log.py \
    --junitxml="$out/report.xml" > "$out/pytest.log" 2>&1
echo $? > "$out/rc"
