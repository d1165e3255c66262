"""What only cgroup v2 has: memory.oom.group kills, memory.events counters,
per-cgroup PSI. Skips on hosts whose memory controller is on v1 (this VM);
`make test-kernels` runs it in a guest kernel with cgroup v2."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    KmsgReader,
    hierarchy,
    scratch_cgroup,
)

pytestmark = pytest.mark.skipif(
    hierarchy().version != 2,
    reason="the memory controller is on cgroup v1 here; v2 runs in make test-kernels",
)

HOLD = "import time\nb = bytearray(12 << 20)\ntime.sleep(600)"


def test_oom_group_kill_is_one_incident_with_every_victim(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    with scratch_cgroup(96 * MIB) as cg:
        (cg.path / "memory.oom.group").write_text("1")
        holders = [cg.spawn(HOLD) for _ in range(2)]
        time.sleep(2)
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
    assert "oom_group_kill 1" in events
    if "kprobe/oom_kill_process" in records[0]["hooks"]:
        assert all(r["constraint_source"] == "kernel" for r in records)
        assert all(r["cgroup"]["oom_memcg_path"] == cg.rel for r in records)


def test_memory_events_counters_reach_the_collector(agent: AgentProcess) -> None:
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(120) == -9
        path = cg.rel
        # The cgroup stays while its pressure window closes (10 s).
        deadline = time.monotonic() + 60
        counters: dict[str, int] = {}
        with grpc.insecure_channel(agent.collector_addr) as ch:
            stub = collector_pb2_grpc.HistoryServiceStub(ch)
            while time.monotonic() < deadline and "oom_kill" not in counters:
                resp = stub.ListPressure(
                    collector_pb2.ListPressureRequest(
                        filter=collector_pb2.EventFilter(cgroup_prefix=path)
                    )
                )
                for r in resp.records:
                    counters.update(r.counters)
                time.sleep(0.5)
    assert counters.get("oom_kill") == 1
    assert counters.get("max", 0) >= 1


THRASH = (
    "import os, sys, time\n"
    "buf = bytearray(1 << 20)\n"
    "deadline = time.monotonic() + float(sys.argv[2])\n"
    "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)\n"
    "    while time.monotonic() < deadline:\n"
    "        f.seek(0)\n"
    "        while f.readinto(buf): pass\n"
)


def test_psi_trigger_fires_under_sustained_reclaim(agent: AgentProcess, tmp_path: Path) -> None:
    """Page cache reread in a cgroup far smaller than the file: tasks stall in
    reclaim, and the agent's memory.pressure trigger (100 ms a second) wakes."""
    data = tmp_path / "big"
    with open(data, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(1 << 20))
    with scratch_cgroup(16 * MIB) as cg:
        p = cg.spawn(THRASH, str(data), "14")
        assert p.wait(120) == 0
        path = cg.rel
        triggers = 0
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(agent.collector_addr) as ch:
            stub = collector_pb2_grpc.HistoryServiceStub(ch)
            while time.monotonic() < deadline and not triggers:
                resp = stub.ListPressure(
                    collector_pb2.ListPressureRequest(
                        filter=collector_pb2.EventFilter(cgroup_prefix=path)
                    )
                )
                triggers = sum(r.psi_trigger_events for r in resp.records)
                time.sleep(0.5)
    assert triggers >= 1
    assert any(r.psi_source == "cgroup" and r.psi_some_avg10_max > 0 for r in resp.records)
