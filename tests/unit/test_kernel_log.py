"""Checkpoint handling and report claiming, without a kernel."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.kernel_log.recovery import Checkpoint, KernelLog
from oomtrace.agent.kernel_log.reports import ParsedReport


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


def test_kills_only_counters_know_are_attributed_to_their_cgroups(tmp_path: Path) -> None:
    Checkpoint("boot-1", 10, 3, {"/a": 2, "/b": 1}).save(tmp_path / "cp.json")
    counts = {"/a": 5, "/b": 1, "/c": 1}
    kl = KernelLog(tmp_path / "cp.json", "boot-1", cgroup_kills=lambda: dict(counts))
    kl.oom_kills_at_attach = 3 + 6  # 6 kills since the checkpoint, node-wide
    kl.cgroup_kills_at_attach = kl.cgroup_kills() if kl.cgroup_kills else {}
    kl.marker_seq = 100
    ring = report(9, 20, 30)
    ring.constraint_fields["task_memcg"] = "/a"  # one of /a's three new kills is still in the log
    kl._unclaimed = [(ring, 0)]
    kl._count_unlogged()
    # /a: 5 - 2 recorded - 1 in the ring; /c: 1; the node: 6 - 1 - 2 - 1 = 2 left
    # in cgroups that are gone.
    assert kl.take_counter() == {"/a": 2, "/c": 1, "": 2}
    assert kl.take_counter() == {}


def test_counter_records_count_towards_their_cgroup(tmp_path: Path) -> None:
    kl = log_with(tmp_path)
    kl.recorded(2, "/a")
    kl.recorded(1, "/a")
    assert Checkpoint.load(tmp_path / "cp.json", "boot-1").by_cgroup == {"/a": 3}  # type: ignore[union-attr]


def test_an_unreadable_log_is_survived_and_counters_recover_the_kills(tmp_path: Path) -> None:
    """A container without the device (the least-privilege overlay): the
    agent runs on; kills from before it attached come back from counters."""
    previous = Checkpoint("boot-1", 10, 1, {"/kubepods/a": 1})
    previous.save(tmp_path / "cp.json")
    counts = {"/kubepods/a": 2, "/kubepods/b": 1}
    kl = KernelLog(
        tmp_path / "cp.json",
        "boot-1",
        kmsg_path=str(tmp_path / "no-such-device"),
        cgroup_kills=lambda: dict(counts),
    )
    kl.start()
    assert kl.reader is None
    assert "no-such-device" in kl.unreadable
    kl.note_kill_count()
    kl.oom_kills_at_attach = 4  # the node's count: 1 recorded, 3 not
    kl.mark_attached()
    assert kl.take_counter() == {"/kubepods/a": 1, "/kubepods/b": 1, "": 1}
    assert kl.orphans() == []
    assert kl.claim(1234) is None
    kl.stop()


def test_a_report_of_a_kill_still_being_assembled_is_no_orphan(tmp_path: Path) -> None:
    """In a burst on a slow machine a live kill can wait past the orphan
    wait behind a victim slow to exit: its report must wait for it, or the
    kill is recorded twice (once from the log, once live)."""
    kl = log_with(tmp_path)
    kl._unclaimed = [(report(11, 60, 70), 0), (report(12, 80, 90), 0)]
    assert [r.victim_pid for r in kl.orphans(now_ns=10**12, live={11})] == [12]
    assert kl.claim(11) is not None
    assert kl.orphans(now_ns=10**12) == []
