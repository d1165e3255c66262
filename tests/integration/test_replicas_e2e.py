"""Two collectors started as the README says on one PostgreSQL (a real
server the test starts), an agent streaming to both (`--collector a,b`),
real OOM kills between faults: one collector SIGKILLed, the database
restarted. Every kill the kernel reported is in the history exactly once,
read through either collector."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.integration.harness import (
    MIB,
    AgentProcess,
    CollectorProcess,
    KmsgReader,
    free_port,
    scratch_cgroup,
)
from tests.integration.test_collector_e2e import kill_in, stored, wait_stored
from tests.postgres_server import PostgresServer


def test_kills_reach_the_history_once_through_collector_and_database_faults(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.database()
    a = CollectorProcess(tmp_path / "unused-a.db", free_port(), "--store", url)
    b = CollectorProcess(tmp_path / "unused-b.db", free_port(), "--store", url)
    kmsg = KmsgReader()
    agent = AgentProcess("--collector", f"{a.addr},{b.addr}", "--spool", f"{tmp_path}/spool")
    pids: set[int] = set()
    try:
        agent.wait_ready()
        with scratch_cgroup(32 * MIB) as cg:
            pids |= set(kill_in(cg, 3))
            assert len(wait_stored(b.addr, pids)) == 3
            a.proc.send_signal(signal.SIGKILL)  # the agent's collector, mid-stream
            a.proc.wait()
            pids |= set(kill_in(cg, 3))
            assert len(wait_stored(b.addr, pids)) == 6
            postgres.restart()  # the database goes away and comes back
            pids |= set(kill_in(cg, 3))
            events = wait_stored(b.addr, pids, timeout=60)
        kmsg.read()
        killed = {pid for pid, k in kmsg.kills().items() if pid in pids}
        assert killed == pids  # the kernel's own count
        ids = [e.victim.pid for e in events]
        assert sorted(ids) == sorted(pids), "a kill missing, or stored twice"
        # A second collector on the same database shows the same history.
        c = CollectorProcess(tmp_path / "unused-c.db", free_port(), "--store", url)
        try:
            assert sorted(e.id for e in stored(c.addr) if e.victim.pid in pids) == sorted(
                e.id for e in events
            )
        finally:
            c.stop()
    finally:
        agent.stop()
        kmsg.close()
        b.stop()
        if a.proc.poll() is None:
            a.stop()
