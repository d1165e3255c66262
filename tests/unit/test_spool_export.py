"""The agent's spool and exporter against an in-process collector."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from oomtrace.agent.export import Exporter
from oomtrace.agent.spool import Spool
from oomtrace.collector.service import create_server
from oomtrace.collector.store import SqliteStore
from tests.unit.events import make_event


def wait_until(cond: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_spooled_records_survive_a_restart_until_acked(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    a, b = make_event(), make_event()
    assert spool.put(a)
    assert spool.put(b)
    spool.ack(a.id)
    again = Spool(tmp_path)
    assert [e.id for e in again.pending_after(0)] == [b.id]
    # New records continue the sequence after the replayed ones.
    c = make_event()
    again.put(c)
    assert [e.id for e in again.pending_after(0)] == [b.id, c.id]


def test_a_full_spool_counts_what_it_could_not_keep(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_records=2)
    assert [spool.put(make_event()) for _ in range(3)] == [True, True, False]
    assert spool.overflowed == 1
    assert len(spool) == 2


def test_corrupt_and_half_written_files_are_set_aside_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = make_event()
    spool.put(good)
    (tmp_path / "00000000000000000099.rec").write_bytes(b"\xff\xff\xff not a record")
    (tmp_path / "00000000000000000100.tmp").write_bytes(b"half")
    again = Spool(tmp_path)
    assert [e.id for e in again.pending_after(0)] == [good.id]
    assert again.corrupt == 1
    assert (tmp_path / "corrupt" / "00000000000000000099.rec").exists()
    assert not (tmp_path / "00000000000000000100.tmp").exists()


def test_exporter_delivers_everything_once_after_the_collector_comes_up(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    evs = [make_event() for _ in range(30)]
    for ev in evs[:10]:
        spool.put(ev)
    store = SqliteStore(tmp_path / "c.db")
    # Reserve a port, then start the exporter while nothing listens there.
    probe, port, _ = create_server("127.0.0.1:0", store)
    probe.stop(0.1).wait(timeout=5)
    exporter = Exporter(spool, f"127.0.0.1:{port}", min_backoff_s=0.05, max_backoff_s=0.2)
    exporter.start()
    try:
        wait_until(lambda: exporter.failed_sessions >= 2)  # it tried, and tries again
        for ev in evs[10:20]:
            spool.put(ev)
        assert store.count() == 0
        server, _, _ = create_server(f"127.0.0.1:{port}", store)
        server.start()
        for ev in evs[20:]:
            spool.put(ev)
        wait_until(lambda: len(spool) == 0)
        assert store.count() == 30
        # Resending what is stored acks without storing twice.
        for ev in evs[:5]:
            spool.put(ev)
        wait_until(lambda: len(spool) == 0)
        assert store.count() == 30
        server.stop(0.1).wait(timeout=5)
    finally:
        exporter.stop()
        store.close()
