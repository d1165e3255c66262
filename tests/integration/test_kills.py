"""Real OOM kills in scratch memory cgroups, each record compared with the
kernel's own report of the same kill."""

from __future__ import annotations

from typing import Any

from oomtrace.agent.kernel.bcc_loader import OOM_CONTROL_HOOKS
from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    KmsgReader,
    assert_matches_kernel,
    scratch_cgroup,
)


def by_pid(pid: int) -> Any:
    return lambda r: r["victim"]["pid"] == pid


def test_allocator_killed_by_its_limit_is_recorded_as_the_kernel_reports_it(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        (rec,) = agent.take(1, where=by_pid(p.pid))
        kernel = kmsg.wait_kills({p.pid})[p.pid]
        _usage_after, limit = cg.usage_and_limit()

    assert_matches_kernel(rec, kernel)
    assert rec["trigger"]["pid"] == p.pid
    assert rec["victim"]["cmdline"].endswith("-c " + ALLOCATE_FOREVER.replace("\n", "\n"))
    assert rec["victim"]["exe"].startswith("/usr/bin/python3")
    c = rec["cgroup"]
    assert int(c["memory_limit_bytes"]) == limit == 64 * MIB
    assert int(c["oom_memcg_limit_bytes"]) == 64 * MIB
    # At the kill the cgroup sat at its limit; it cannot be above it.
    assert 60 * MIB <= int(c["memory_usage_bytes"]) <= 64 * MIB
    assert c["version"] == cg.version
    if set(OOM_CONTROL_HOOKS) & set(rec["hooks"]):
        # What only the kernel's oom_control gives.
        assert rec["constraint_source"] == "KERNEL"
        assert int(rec["oom_control"]["chosen_points"]) > 0
        assert int(rec["oom_control"]["total_bytes"]) >= 64 * MIB
    else:
        # The OOM killer's caller on the kernel stack (/proc/kallsyms is
        # readable to root) says memcg or global.
        assert rec["constraint_source"] == "KERNEL_STACK"
    assert int(rec["exit_ns"]) > 0
    assert rec["missing"] == []
    assert len(rec["id"]) == 32


def test_victim_that_is_not_the_trigger(agent: AgentProcess, kmsg: KmsgReader) -> None:
    """A big idle process (oom_score_adj 500) dies for a small allocator's charge."""
    hog = "import time\nb = bytearray(40 << 20)\nprint(flush=True)\ntime.sleep(600)"
    with scratch_cgroup(96 * MIB) as cg:
        big = cg.spawn(hog, oom_score_adj=500)
        _wait_usage(cg, 40 * MIB)
        small = cg.spawn(ALLOCATE_FOREVER)
        assert big.wait(30) == -9
        (rec,) = agent.take(1, where=by_pid(big.pid))
        kernel = kmsg.wait_kills({big.pid})[big.pid]
        small.kill()
        small.wait()

    assert_matches_kernel(rec, kernel)
    assert rec["trigger"]["pid"] == small.pid
    assert rec["trigger"]["pid"] != rec["victim"]["pid"]
    assert rec["victim"]["oom_score_adj"] == 500
    # The victim was not the task in mark_victim, so its argv came from /proc.
    assert "time.sleep(600)" in rec["victim"]["cmdline"]


def test_multithreaded_victim_is_recorded_by_thread_group(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    threaded = (
        "import threading, time\n"
        "def grow():\n"
        "    a = []\n"
        "    while True:\n"
        "        a.append(bytearray(1 << 20)); time.sleep(0.001)\n"
        "for _ in range(4): threading.Thread(target=grow).start()\n"
        "time.sleep(600)\n"
    )
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(threaded)
        assert p.wait(30) == -9
        (rec,) = agent.take(1, where=by_pid(p.pid))
        kernel = kmsg.wait_kills({p.pid})[p.pid]

    assert_matches_kernel(rec, kernel)
    assert rec["victim"]["pid"] == p.pid
    assert rec["victim"]["threads"] == 5
    # One of the allocating threads (not the main one) ran into the limit.
    assert rec["trigger"]["pid"] == p.pid
    assert rec["trigger"]["tid"] != p.pid


def test_limit_on_parent_victim_in_child(agent: AgentProcess, kmsg: KmsgReader) -> None:
    with scratch_cgroup(64 * MIB) as parent:
        child = parent.child("workload")
        p = child.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        (rec,) = agent.take(1, where=by_pid(p.pid))
        kernel = kmsg.wait_kills({p.pid})[p.pid]
        parent_rel, child_rel = parent.rel, child.rel

    assert_matches_kernel(rec, kernel)
    assert rec["cgroup"]["path"] == child_rel
    assert rec["cgroup"]["oom_memcg_path"] == parent_rel
    assert int(rec["cgroup"]["memory_limit_bytes"]) == 64 * MIB
    assert int(rec["cgroup"]["oom_memcg_limit_bytes"]) == 64 * MIB


def test_burst_of_fifty_kills_none_lost(agent: AgentProcess, kmsg: KmsgReader) -> None:
    """50 kills within a few seconds: as many records as the kernel's own
    oom_kill counters, each matching the kernel's report."""
    n_cgroups, per_cgroup = 10, 5
    with scratch_cgroup(None) as top:
        groups = []
        for i in range(n_cgroups):
            g = top.child(f"g{i}")
            g.limit(32 * MIB)
            groups.append(g)
        procs = [g.spawn(ALLOCATE_FOREVER) for g in groups for _ in range(per_cgroup)]
        for p in procs:
            assert p.wait(60) == -9
        pids = {p.pid for p in procs}
        # None lost, however slow: under a guest's software emulation each
        # record now also reads its cgroup's files where the kernel's report
        # was ratelimited (most of a burst's), so 50 can take over a minute.
        records = agent.take(len(pids), timeout=240, where=lambda r: r["victim"]["pid"] in pids)
        kernel = kmsg.wait_kills(pids)
        counted = sum(g.oom_kill_count() for g in groups)

    assert counted == len(pids) == 50
    assert {r["victim"]["pid"] for r in records} == pids
    assert len({r["id"] for r in records}) == 50
    for r in records:
        assert_matches_kernel(r, kernel[r["victim"]["pid"]], full_report=False)
    status_lost = [e for e in agent.logs if e.get("event") == "bpf.events_lost"]
    assert status_lost == []


def _wait_usage(cg: Any, nbytes: int, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while cg.usage_and_limit()[0] < nbytes:
        assert time.monotonic() < deadline, "the hog never reached its size"
        time.sleep(0.02)


def test_a_small_task_with_adj_1000_dies_before_the_one_that_used_the_memory(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    """As a BestEffort sidecar beside the process that grew (kubernetes#111356):
    a task holding 8 MiB with oom_score_adj 1000 is killed while one holding 40 MiB and
    the grower hold more. The record ranks the candidates as the kernel
    does, says the adj decided, and (where oom_kill_process is hooked) its
    points for the victim are the kernel's own."""
    hold = "import time\nb = bytearray({} << 20)\nprint(flush=True)\ntime.sleep(600)"
    with scratch_cgroup(96 * MIB) as cg:
        app = cg.spawn(hold.format(40))
        _wait_usage(cg, 40 * MIB)
        sidecar = cg.spawn(hold.format(8), oom_score_adj=1000)
        _wait_usage(cg, 48 * MIB)
        grower = cg.spawn(ALLOCATE_FOREVER)
        assert sidecar.wait(30) == -9
        (rec,) = agent.take(1, where=by_pid(sidecar.pid))
        kernel = kmsg.wait_kills({sidecar.pid})[sidecar.pid]
        for p in (grower, app):
            p.kill()
            p.wait()

    assert_matches_kernel(rec, kernel)
    ch = rec["choice"]
    assert ch["victim_rank"] == 1, ch
    assert ch["adj_decided"], ch
    first = ch["candidates"][0]
    assert (first["pid"], first["qos_class"], first["victim"]) == (sidecar.pid, "BestEffort", True)
    others = {c["pid"]: c for c in ch["candidates"][1:]}
    assert int(others[app.pid]["memory_bytes"]) > 2 * int(first["memory_bytes"]), ch
    (v,) = [v for v in rec["verdicts"] if v["code"] == "VICTIM_CHOSEN_BY_OOM_SCORE_ADJ"]
    assert f"[{sidecar.pid}]" in v["explanation"]
    if "kernel_chosen_points" in ch:
        assert int(first["points"]) == int(ch["kernel_chosen_points"]), ch


# A process that calls itself NAME (its comm, which is what the kernel
# knows a sender by), writes SAID to its stderr if given (as earlyoom logs
# its reason first), then sends SIG to PID: a stand-in for a userspace OOM
# killer, seen by the agent as one is: its writes and its kill(2).
SEND_AS = """
import ctypes, os, sys
name, sig, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
if len(sys.argv) > 4:
    os.write(2, sys.argv[4].encode() + b"\\n")
os.kill(pid, sig)
"""
# Catches SIGTERM and carries on (a signal ignored outright is not delivered,
# so the kernel does not count it as sent: the SIGKILL after it is the kill).
HOLD_THROUGH_TERM = (
    "import signal, time\nsignal.signal(signal.SIGTERM, lambda *_: None)\n"
    "b = bytearray(24 << 20)\nprint(flush=True)\nwhile True: time.sleep(1)"
)


def send_as(name: str, sig: int, pid: int, said: str = "") -> None:
    import subprocess
    import sys

    argv = [sys.executable, "-c", SEND_AS, name, str(sig), str(pid)]
    subprocess.run([*argv, said] if said else argv, check=True, stderr=subprocess.DEVNULL)


def test_a_userspace_oom_killers_kill_is_recorded_and_a_shells_is_not(
    agent: AgentProcess,
) -> None:
    """Three processes holding memory: one killed by `kill -9` from an
    ordinary process (never an OOM record), one sent SIGTERM then SIGKILL by
    a process named earlyoom (it catches SIGTERM and carries on: one record,
    the killer named, the signal it sent first, and the reason it wrote
    just before, its secret redacted), one sent SIGKILL by one named
    systemd-oomd (it wrote nothing). The records come in kill order: none
    for the first."""
    import signal

    with scratch_cgroup(256 * MIB) as cg:
        plain, termed, killed = (cg.spawn(HOLD_THROUGH_TERM) for _ in range(3))
        _wait_usage(cg, 3 * 24 * MIB)
        send_as("python3", signal.SIGKILL, plain.pid)
        assert plain.wait(30) == -9
        said = (
            f'sending SIGTERM to process {termed.pid} uid 0 "python3": badness 900, '
            "VmRSS 24 MiB, cmdline python3 --password=hunter2"
        )
        send_as("earlyoom", signal.SIGTERM, termed.pid, said)
        send_as("earlyoom", signal.SIGKILL, termed.pid)
        assert termed.wait(30) == -9
        send_as("systemd-oomd", signal.SIGKILL, killed.pid)
        assert killed.wait(30) == -9
        pids = {plain.pid, termed.pid, killed.pid}
        first, second = agent.take(2, where=lambda r: r["victim"]["pid"] in pids)

    assert first["victim"]["pid"] == termed.pid, first  # nothing for the plain kill -9
    assert second["victim"]["pid"] == killed.pid
    for rec, comm, sig in ((first, "earlyoom", "SIGTERM"), (second, "systemd-oomd", "SIGKILL")):
        assert rec["source"] == "USERSPACE"
        assert (rec["killer"]["comm"], rec["killer"]["signal"]) == (comm, sig)
        assert rec["trigger"]["comm"] == comm
        assert rec["cgroup"]["path"] == cg.rel
        assert int(rec["victim"]["anon_rss_bytes"]) >= 24 * MIB
        assert "USERSPACE_OOM_KILL" in [v["code"] for v in rec["verdicts"]]
        assert not [m for m in rec["missing"] if m.startswith("kernel_report")], rec["missing"]
    # Its log write: seen by kprobe/ksys_write, or (this host has no kprobes;
    # the session agent runs with --killer-writes tracepoint) sys_enter_write.
    assert {"kprobe/ksys_write", "tracepoint/syscalls/sys_enter_write"} & set(first["hooks"])
    said = first["killer"]["said"]
    assert said.startswith(f"sending SIGTERM to process {termed.pid}"), first["killer"]
    assert "--password=" in said, said
    assert "hunter2" not in said, said
    assert not second["killer"].get("said"), second["killer"]
    (v,) = [v for v in first["verdicts"] if v["code"] == "USERSPACE_OOM_KILL"]
    assert f'it wrote: "sending SIGTERM to process {termed.pid}' in v["explanation"], v
