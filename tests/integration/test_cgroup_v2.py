"""What only cgroup v2 has: memory.oom.group kills, memory.events counters,
per-cgroup PSI. Skips on hosts whose memory controller is on v1 (this VM);
`make test-kernels` runs it in a guest kernel with cgroup v2."""

from __future__ import annotations

import time

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
