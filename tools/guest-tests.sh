#!/bin/sh
# Runs inside the guest kernel (booted by tools/test-kernels.sh): the
# privileged suite that adapts to the kernel, against the host's working tree
# (shared read-only). Results go to OUT, the one folder the guest may write.
out=$1
repo=$2
cd "$repo" || exit 2
# A v2 root delegates the memory controller to its children on real nodes
# (systemd does it); virtme-ng's init does not.
if [ -f /sys/fs/cgroup/cgroup.subtree_control ]; then
    echo +memory > /sys/fs/cgroup/cgroup.subtree_control
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
