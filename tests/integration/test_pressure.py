"""Memory pressure before a kill: pressure records at the collector, and a
timeline on the kill's record."""

from __future__ import annotations

import itertools
import time

import grpc

from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.integration.harness import MIB, AgentProcess, hierarchy, scratch_cgroup
from tests.integration.test_collector_e2e import wait_stored

# Fill to ~94 % of the limit, stay there for more than a pressure window, then
# grow until the kernel kills it.
SLOW_GROWTH = (
    "import time\n"
    "a = [bytearray(1 << 20) for _ in range(58)]\n"
    "time.sleep(13)\n"
    "while True:\n"
    "    a.append(bytearray(1 << 20)); time.sleep(0.01)\n"
)


def test_pressure_records_before_the_kill_and_a_timeline_on_it(agent: AgentProcess) -> None:
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(SLOW_GROWTH)
        assert p.wait(60) == -9
        killed_at = time.time()
        (rec,) = agent.take(1, where=lambda r: r["victim"]["pid"] == p.pid)
        path = cg.rel
    (stored,) = wait_stored(agent.collector_addr, {p.pid})

    with grpc.insecure_channel(agent.collector_addr) as ch:
        stub = collector_pb2_grpc.HistoryServiceStub(ch)
        deadline = time.monotonic() + 15
        while True:
            resp = stub.ListPressure(
                collector_pb2.ListPressureRequest(
                    filter=collector_pb2.EventFilter(cgroup_prefix=path)
                )
            )
            if resp.records or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    records = list(resp.records)
    before = [r for r in records if r.end.ToNanoseconds() / 1e9 < killed_at - 0.5]
    assert before, f"no pressure record before the kill: {records}"
    assert "near_limit" in before[0].reasons
    assert before[0].psi_source == ("cgroup" if hierarchy().version == 2 else "host")
    assert before[0].limit_bytes == 64 * MIB
    assert before[0].usage_max_bytes >= 0.9 * 64 * MIB
    # Bounded: one record per cgroup per 10 s window.
    assert len(records) <= 3

    tl = stored.timeline
    assert stored.timeline_cgroup == path
    assert len(tl) >= 10
    assert tl[0].offset_ms <= -10_000
    assert -1500 <= tl[-1].offset_ms <= 0
    # A point every second, whatever else the agent was doing: none missed,
    # none more than a second and a half after the one before.
    assert not [pt.offset_ms for pt in tl if pt.missed]
    gaps = [b.offset_ms - a.offset_ms for a, b in itertools.pairwise(tl)]
    assert max(gaps) < 1500, gaps
    assert all(pt.limit_bytes == 64 * MIB for pt in tl)
    assert max(pt.usage_bytes for pt in tl) >= 0.9 * 64 * MIB
    assert rec["timeline"], "the agent's own record carries the timeline too"
