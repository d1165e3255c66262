"""Checkpoint handling and report claiming, without a kernel."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.kernel_log import Checkpoint, KernelLog
from oomtrace.agent.kmsg import ParsedReport


def report(pid: int, first: int, last: int) -> ParsedReport:
    return ParsedReport(first_seq=first, last_seq=last, victim_pid=pid)


def log_with(tmp_path: Path, backfill: bool = True) -> KernelLog:
    kl = KernelLog(tmp_path / "cp.json", "boot-1", backfill=backfill, orphan_after_ns=100)
    kl.marker_seq = 50
    return kl


def test_corrupt_checkpoint_is_reported_and_treated_as_none(tmp_path: Path) -> None:
    (tmp_path / "cp.json").write_text("{not json")
    assert Checkpoint.load(tmp_path / "cp.json", "boot-1") is None
    kl = KernelLog(tmp_path / "cp.json", "boot-1")
    assert kl.first_run_this_boot
    assert kl.checkpoint.seq == -1


def test_checkpoint_of_another_boot_is_ignored(tmp_path: Path) -> None:
    Checkpoint("boot-0", 900, 12).save(tmp_path / "cp.json")
    assert Checkpoint.load(tmp_path / "cp.json", "boot-1") is None
    assert Checkpoint.load(tmp_path / "cp.json", "boot-0") == Checkpoint("boot-0", 900, 12)


def test_live_records_claim_their_reports_and_the_rest_become_orphans(tmp_path: Path) -> None:
    kl = log_with(tmp_path)
    kl._unclaimed = [(report(10, 1, 9), 0), (report(11, 60, 70), 0), (report(12, 80, 90), 0)]
    assert kl.claim(11) is not None
    assert kl.claim(11) is None  # claimed once
    assert kl.orphans(now_ns=50) == []  # still within the wait
    assert [r.victim_pid for r in kl.orphans(now_ns=100)] == [10, 12]


def test_without_backfill_reports_from_before_the_agent_are_dropped(tmp_path: Path) -> None:
    kl = log_with(tmp_path, backfill=False)
    kl._unclaimed = [(report(10, 1, 9), 0), (report(12, 80, 90), 0)]
    assert [r.victim_pid for r in kl.orphans(now_ns=100)] == [12]


def test_checkpoint_stops_below_what_is_still_unclaimed(tmp_path: Path) -> None:
    kl = log_with(tmp_path)
    kl.read_seq = 200
    kl._unclaimed = [(report(12, 80, 90), 0)]
    kl.recorded()
    assert kl.checkpoint.seq == 79
    assert kl.checkpoint.recorded == 1
    kl.claim(12)
    kl.recorded()
    assert Checkpoint.load(tmp_path / "cp.json", "boot-1") == Checkpoint("boot-1", 200, 2)
