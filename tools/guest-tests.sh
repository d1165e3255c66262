#!/bin/sh
# Runs inside the guest kernel (booted by tools/test-kernels.sh): the
# privileged suite that adapts to the kernel, against the host's working tree
# (shared read-only). Results go to OUT, the one folder the guest may write.
#   guest-tests.sh OUT REPO CGROUP(v1|v2) HEADERS(dir|none) TESTS(all|v1)
out=$1
repo=$2
cgroup=${3:-v2}
headers=${4:-none}
tests=${5:-all}
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
    # As systemd sets it on v1 nodes: a parent's limit covers its children.
    # (Before 5.11 a fresh v1 root is not hierarchical; later, always is.)
    [ -f /sys/fs/cgroup/memory/memory.use_hierarchy ] &&
        echo 1 > /sys/fs/cgroup/memory/memory.use_hierarchy
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
# Each agent start compiles BPF, a minute or more under emulation: what does
# not depend on the kernel (one agent per state directory, a lock) runs on the
# host only, and the cgroup v1 boot runs what differs between versions. Of the
# heap-profile tests, the guests run one build (the walk and its tail calls
# are the kernel's part; the builds differ only in user space).
# Tests that run the machine's own memory out: only ever in a guest.
OOMTRACE_GUEST=1
export OOMTRACE_GUEST
# The kernel's reports of test_breakdown.py's kills, for fixtures named by
# release (GUEST_TESTS=tests/integration/test_breakdown.py: not yet in the
# default suite, its v2 run is not green yet).
OOMTRACE_FIXTURE_DIR=$out/fixtures
export OOMTRACE_FIXTURE_DIR
if [ "${tests#tests/}" != "$tests" ]; then
    suite=$tests  # one file, by hand (GUEST_TESTS)
elif [ "$tests" = v1 ]; then
    suite="tests/integration/test_kills.py tests/integration/test_pressure.py
        tests/integration/test_kernel_log.py::test_live_record_carries_the_kernels_report"
else
    suite="tests/integration/test_kills.py tests/integration/test_cgroup_v2.py
        tests/integration/test_pressure.py tests/integration/test_go.py
        tests/integration/test_go_heap.py::test_the_profile_names_the_code_that_held_the_memory[newest-normal]
        tests/integration/test_go_heap.py::test_many_stacks_and_stacks_too_deep_are_counted
        tests/integration/test_go_heap.py::test_a_profile_before_the_kill_shows_what_grew
        tests/integration/test_userspace_killers.py
        tests/integration/test_runtimes.py
        tests/integration/test_kernel_log.py
        --deselect tests/integration/test_kernel_log.py::test_a_second_agent_on_the_same_state_directory_is_refused"
fi
# shellcheck disable=SC2086 # the suite is a list of paths
.venv/bin/python -m pytest -p no:cacheprovider -o timeout=1200 -rA $suite \
    --junitxml="$out/report.xml" > "$out/pytest.log" 2>&1
echo $? > "$out/rc"
