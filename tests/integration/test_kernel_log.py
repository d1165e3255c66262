"""The kernel's own report on every record, and kills that happened while no
agent ran, recovered from the kernel's log exactly once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    KmsgReader,
    scratch_cgroup,
    wait_until,
)

# The agent gives a live record 5 s to claim a report before recording it alone.
ORPHAN_WAIT_S = 5


def kill_one(limit: int = 48 * MIB) -> tuple[int, str]:
    with scratch_cgroup(limit) as cg:
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        return p.pid, cg.rel


def drain(agent: AgentProcess, seconds: float) -> list[dict[str, Any]]:
    """Every record the agent prints within the next `seconds`."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(agent.records.get(timeout=left))
        except Exception:  # noqa: BLE001 - queue.Empty: nothing more came
            break
    return out


def test_live_record_carries_the_kernels_report(agent: AgentProcess, kmsg: KmsgReader) -> None:
    time.sleep(5.5)  # past the kernel's report ratelimit window of earlier tests
    with scratch_cgroup(48 * MIB) as cg:
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        (rec,) = agent.take(1, where=lambda r: r["victim"]["pid"] == p.pid)
        kernel = kmsg.wait_kills({p.pid})[p.pid]
    kr = rec["kernel_report"]
    assert not kr["ratelimited"]
    assert kr["task_memcg"] == rec["cgroup"]["path"] == kernel.task_memcg
    assert kr["constraint"] == "CONSTRAINT_MEMCG"
    assert int(kr["memcg_limit_bytes"]) == 48 * MIB
    rows = {t["pid"]: t for t in kr["tasks"]}
    v = rec["victim"]
    # The task table's figures are bytes at this node's page size.
    if " rss_anon " in kr["raw"]:  # 6.x tables split RSS; older ones print the sum
        assert int(rows[p.pid]["rss_anon_bytes"]) == int(v["anon_rss_bytes"])
    else:
        total = int(v["anon_rss_bytes"]) + int(v["file_rss_bytes"]) + int(v["shmem_rss_bytes"])
        assert int(rows[p.pid]["rss_bytes"]) == total
    assert f"Killed process {p.pid} " in kr["raw"]
    assert int(kr["last_seq"]) > int(kr["first_seq"])
    assert rec["source"] == "LIVE"


def test_kill_while_no_agent_runs_is_backfilled_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A first run settles this boot's history: what the ring holds now is
    # recorded (backfilled) once, and the checkpoint says so.
    first = AgentProcess(state_dir=state)
    first.wait_ready()
    drain(first, ORPHAN_WAIT_S + 2)
    assert first.stop() == 0

    victim, path = kill_one()

    second = AgentProcess(state_dir=state)
    second.wait_ready()
    got = drain(second, ORPHAN_WAIT_S + 3)
    third_pid, _ = kill_one()
    got += drain(second, 3)
    assert second.stop() == 0

    backfilled = [r for r in got if r["source"] == "KMSG"]
    assert [r["victim"]["pid"] for r in backfilled] == [victim]
    (rec,) = backfilled
    assert rec["cgroup"]["path"] == path
    assert int(rec["victim"]["anon_rss_bytes"]) > 0
    assert rec["kernel_report"]["raw"]
    assert [r for r in got if r["source"] == "COUNTER"] == []
    live = [r for r in got if r["source"] == "LIVE"]
    assert [r["victim"]["pid"] for r in live] == [third_pid]

    # A restart records nothing again: the live kill and the backfilled one
    # are both behind the checkpoint.
    again = AgentProcess(state_dir=state)
    again.wait_ready()
    assert drain(again, ORPHAN_WAIT_S + 2) == []
    assert again.stop() == 0


def test_a_second_agent_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """Two agents would share the checkpoint and the spool and delete each
    other's records: the second says so and exits, the first runs on."""
    state = tmp_path / "state"
    first = AgentProcess(state_dir=state)
    try:
        first.wait_ready()
        second = AgentProcess(state_dir=state)
        assert second.proc.wait(120) == 1
        wanted = f"another oomtrace agent (pid {first.proc.pid})"
        # The log reader thread may still be reading what it wrote.
        wait_until(lambda: wanted in " ".join(str(e) for e in second.logs), 10, wanted)
        assert first.proc.poll() is None
    finally:
        assert first.stop() == 0
