"""The agent's spool and exporter against an in-process collector."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from oomtrace.agent.delivery.export import Exporter
from oomtrace.agent.delivery.spool import Spool, SpoolLockedError
from oomtrace.agent.record.parts import fit_to_wire
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.records import MAX_MESSAGE_BYTES, MAX_RECORD_BYTES
from oomtrace.v1 import event_pb2
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
    spool.close()  # the agent stops; the next one takes over its spool
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
    spool.close()
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


def huge_event() -> event_pb2.OomEvent:
    """A global OOM on a busy node: a task table of 60,000 rows and its raw
    text, each alone over the collector's 1 MiB message limit."""
    ev = make_event()
    kr = ev.kernel_report
    for pid in range(100_001, 160_001):  # none the victim's pid
        kr.tasks.add(pid=pid, uid=0, rss_bytes=pid * 4096, name=f"worker-{pid}")
    kr.tasks.add(pid=ev.victim.pid, rss_bytes=64 << 20, name="victim")
    kr.raw = "\n".join(
        f"[{pid}] 0 {pid} 1000 200 0 0 worker-{pid}" for pid in range(100_001, 160_001)
    )
    assert ev.ByteSize() > MAX_MESSAGE_BYTES
    return ev


def test_a_record_over_the_limit_is_cut_least_important_parts_first() -> None:
    ev = huge_event()
    dropped = fit_to_wire(ev)
    assert ev.ByteSize() <= MAX_RECORD_BYTES
    assert dropped == ["kernel_report.raw", "kernel_report.tasks"]
    assert [t.name for t in ev.kernel_report.tasks] == ["victim"]  # the victim's row stays
    assert [m.split(":")[0] for m in ev.missing] == dropped
    small = make_event()
    assert fit_to_wire(small) == []
    assert list(small.missing) == []


def test_one_huge_record_does_not_wedge_the_ones_behind_it(tmp_path: Path) -> None:
    """Spooled as it was (by an agent that did not cut it), it is cut on the
    way out, and it and every record behind it are stored."""
    spool = Spool(tmp_path / "spool")
    big = huge_event()
    spool.put(big)
    behind = [make_event() for _ in range(5)]
    for ev in behind:
        spool.put(ev)
    store = SqliteStore(tmp_path / "c.db")
    server, port, _ = create_server("127.0.0.1:0", store)
    server.start()
    exporter = Exporter(spool, f"127.0.0.1:{port}", min_backoff_s=0.05, max_backoff_s=0.2)
    exporter.start()
    try:
        wait_until(lambda: len(spool) == 0)
        assert store.count() == 6
        stored = store.get(big.id)
        assert any(m.startswith("kernel_report.raw: cut") for m in stored.missing)
        assert exporter.failed_sessions == 0
    finally:
        exporter.stop()
        server.stop(0).wait(5)
        store.close()


def test_a_second_agent_on_the_same_spool_is_refused_with_a_reason(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolLockedError, match=f"pid {os.getpid()}.*own --state-dir"):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()  # free again once the first is gone


def test_a_torn_record_file_fails_its_checksum_and_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good, torn = make_event(), make_event()
    spool.put(good)
    spool.put(torn)
    spool.close()
    path = sorted(tmp_path.glob("*.rec"))[-1]
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # one flipped byte: still parses as protobuf, but is not what was written
    path.write_bytes(bytes(blob))
    again = Spool(tmp_path)
    assert [e.id for e in again.pending_after(0)] == [good.id]
    assert again.corrupt == 1
    again.close()


def test_a_full_disk_keeps_the_record_in_memory_and_counts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    ev = make_event()
    assert spool.put(ev)
    assert spool.unwritten == 1
    assert [e.id for e in spool.pending_after(0)] == [ev.id]  # still sent
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    spool.ack(ev.id)
    assert len(spool) == 0
    spool.close()
