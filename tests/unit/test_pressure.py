"""Pressure sampling on a fake cgroup tree: timelines, windows, the bound,
and the window of a removed cgroup."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oomtrace.agent.cgroups.hierarchy import MemoryHierarchy
from oomtrace.agent.host import boot_ns_now
from oomtrace.agent.loop import Runner
from oomtrace.agent.pressure.sampler import PressureSampler, parse_counters, parse_psi
from oomtrace.agent.record.assembler import Timeline
from oomtrace.agent.record.live import timeline
from tests.unit.clock import ManualClock

MIB = 1 << 20
S = 1_000_000_000


class FakeTree:
    def __init__(self, root: Path, version: int) -> None:
        self.root = root
        self.version = version
        self.reclaim: dict[int, tuple[int, int, int]] = {}

    def make(self, name: str, limit: int | None, usage: int) -> int:
        d = self.root / name
        d.mkdir()
        self.set(name, limit=limit, usage=usage)
        if self.version == 1:
            (d / "memory.failcnt").write_text("0\n")
            (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
        else:
            (d / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
            (d / "memory.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        return d.stat().st_ino

    def set(self, name: str, *, limit: int | None = None, usage: int | None = None) -> None:
        d = self.root / name
        v1 = self.version == 1
        if (
            limit is not None
            or not (d / ("memory.limit_in_bytes" if v1 else "memory.max")).exists()
        ):
            text = str(limit) if limit else ("9223372036854771712" if v1 else "max")
            (d / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(text + "\n")
        if usage is not None:
            (d / ("memory.usage_in_bytes" if v1 else "memory.current")).write_text(f"{usage}\n")


def sampler(tree: FakeTree) -> PressureSampler:
    return PressureSampler(
        MemoryHierarchy(tree.version, tree.root),
        lambda: dict(tree.reclaim),
        clock=ManualClock(0),
    )


def test_limited_cgroups_get_a_point_a_second_and_unlimited_ones_none(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 2)
    a = tree.make("a", 64 * MIB, 10 * MIB)
    b = tree.make("b", None, 10 * MIB)
    s = sampler(tree)
    assert s.scan() == 2
    for i in range(5):
        tree.set("a", usage=(10 + i) * MIB)
        s.sample(now_ns=(i + 1) * S)
    points = s.timeline(a, kill_ns=5 * S)
    assert [p.usage_bytes for p in points] == [m * MIB for m in range(10, 15)]
    assert all(p.limit_bytes == 64 * MIB for p in points)
    assert s.timeline(b, kill_ns=5 * S) == []


def test_a_quiet_window_makes_no_record_and_a_pressured_one_makes_one(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 1)
    a = tree.make("a", 64 * MIB, 10 * MIB)
    s = sampler(tree)
    s.scan()
    reports = []
    for t in range(1, 12):
        reports += s.sample(now_ns=t * S)
    assert reports == []  # 10 s of nothing
    tree.set("a", usage=62 * MIB)
    tree.reclaim[a] = (5, 3_000_000, 1_000_000)
    (tmp_path / "a" / "memory.failcnt").write_text("7\n")
    for t in range(12, 40):
        reports += s.sample(now_ns=t * S)
    # 28 s of pressure: windows close every 10 s, one record each, no more.
    assert len(reports) == 2
    first = reports[0]
    assert set(first.reasons) == {"reclaim", "near_limit", "counters"}
    assert first.window.reclaims == 5
    assert first.window.stall_ns == 3_000_000
    assert first.counters == {"failcnt": 7}
    assert first.psi_source == "host"
    assert reports[1].reasons == ("near_limit",)  # the reclaim was counted once


def test_the_open_window_of_a_removed_cgroup_is_reported(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 2)
    a = tree.make("a", 64 * MIB, 63 * MIB)
    s = sampler(tree)
    s.scan()
    s.sample(now_ns=1 * S)
    s.sample(now_ns=2 * S)
    s.forget(a)
    (report,) = s.sample(now_ns=3 * S)
    assert report.cgroup_id == a
    assert "near_limit" in report.reasons
    assert s.sample(now_ns=4 * S) == []


def test_a_cgroup_whose_files_vanish_is_dropped(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 2)
    a = tree.make("a", 64 * MIB, 1 * MIB)
    s = sampler(tree)
    s.scan()
    s.sample(now_ns=S)
    for f in (tmp_path / "a").iterdir():
        f.unlink()
    s.sample(now_ns=2 * S)
    assert a not in s.cgroups


def test_the_bound_on_tracked_cgroups_is_counted(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 2)
    for i in range(5):
        tree.make(f"c{i}", 64 * MIB, MIB)
    s = PressureSampler(MemoryHierarchy(2, tmp_path), dict, max_cgroups=3)
    s.scan()
    assert len(s.cgroups) == 3
    assert s.dropped == 2


def test_psi_and_counter_files_parse() -> None:
    assert parse_psi(
        "some avg10=12.50 avg60=1.00 avg300=0.00 total=9\nfull avg10=3.25 avg60=0 avg300=0 total=1\n"
    ) == (12.5, 3.25)
    assert parse_counters("low 0\nhigh 4\noom_kill 1\nbroken line\n") == {
        "low": 0,
        "high": 4,
        "oom_kill": 1,
    }


def test_counters_of_a_cgroup_killed_in_its_first_window(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 2)
    tree.make("a", 64 * MIB, 10 * MIB)
    s = sampler(tree)
    s.scan()
    s.sample(now_ns=S)  # first sight: the baseline
    (tmp_path / "a" / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    reports = []
    for t in range(2, 13):
        reports += s.sample(now_ns=t * S)
    (report,) = reports
    assert report.counters == {"max": 9, "oom": 1, "oom_kill": 1}
    assert report.reasons == ("counters",)


def test_a_new_cgroup_counts_from_zero_even_if_killed_before_its_first_sample(
    tmp_path: Path,
) -> None:
    tree = FakeTree(tmp_path, 2)
    ino = tree.make("a", 64 * MIB, 10 * MIB)
    s = sampler(tree)
    s.learn(ino, "/a", new=True)
    (tmp_path / "a" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    reports = []
    for t in range(1, 12):
        reports += s.sample(now_ns=t * S)
    (report,) = reports
    assert report.counters["oom_kill"] == 1


def test_a_missed_second_is_kept_as_missed_and_shown_in_its_place(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, 2)
    a = tree.make("a", 64 * MIB, 10 * MIB)
    s = sampler(tree)
    s.scan()
    for t in (1, 2, 5, 6):  # seconds 3 and 4 got no point
        s.sample(now_ns=t * S + 20_000_000)  # a little late: jitter, not a miss
    assert s.points_missed == 2
    assert s.missed(0, 6 * S) == [3 * S + 20_000_000, 4 * S + 20_000_000]
    points = s.timeline(a, kill_ns=7 * S)
    tl = timeline(
        Timeline("/a", tuple(points), (), tuple(s.missed(points[0].boot_ns, 7 * S))), 7 * S
    )
    assert [(p.offset_ms, p.missed) for p in tl] == [
        (-5980, False),
        (-4980, False),
        (-3980, True),
        (-2980, True),
        (-1980, False),
        (-980, False),
    ]
    assert all(p.usage_bytes == 10 * MIB for p in tl if not p.missed)


class _BusySource:
    """An event source whose every poll keeps the loop's thread busy in
    Python for `busy_s`, as a kill being assembled or a binary parsed does."""

    def __init__(self, busy_s: float, polls: int, on_done: Callable[[], None]) -> None:
        self.busy_s, self.polls, self.on_done = busy_s, polls, on_done

    def open_buffers(self, *_callbacks: Any) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        if self.polls == 0:
            self.on_done()
            return
        self.polls -= 1
        end = time.monotonic() + self.busy_s
        n = 0
        while time.monotonic() < end:
            n += sum(range(1000))  # CPU in Python, holding the GIL as it can

    def kernel_lost(self) -> dict[str, int]:
        return {}

    @property
    def user_lost(self) -> dict[str, int]:
        return {}


def test_the_timeline_keeps_its_schedule_while_the_event_loop_is_busy(tmp_path: Path) -> None:
    """The loop is kept busy for 4 s on purpose (two polls of 2 s each): the
    sampler's own thread still takes a point every second, each stamped with
    the time it was read."""
    tree = FakeTree(tmp_path / "tree", 2)
    (tmp_path / "tree").mkdir()
    a = tree.make("a", 64 * MIB, 10 * MIB)
    s = PressureSampler(MemoryHierarchy(2, tree.root), dict)
    s.scan()
    runner: Runner | None = None

    def stop() -> None:
        assert runner is not None
        runner.stop()

    source = _BusySource(busy_s=2.0, polls=2, on_done=stop)
    runner = Runner(
        source,
        [],
        hierarchy=MemoryHierarchy(2, tree.root),
        hooks=(),
        sampler=s,
        status_file=tmp_path / "status.json",
        node="n1",
    )
    started = boot_ns_now()
    s.start()
    try:
        # run() sets signal handlers, which only the main thread may do.
        assert threading.current_thread() is threading.main_thread()
        runner.run(poll_ms=1, idle_poll_ms=1)
    finally:
        s.stop()
    ended = boot_ns_now()
    stamps = [p.boot_ns for p in s.timeline(a, kill_ns=ended, span_ns=ended - started + 1)]
    assert len(stamps) >= 4, stamps
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1.5 * S, gaps
    assert s.points_missed == 0
    assert runner.counters.pressure_points_missed == 0


def _events(tmp: Path, name: str, *, high: int, oom_kill: int = 0) -> None:
    (tmp / name / "memory.events").write_text(
        f"low 0\nhigh {high}\nmax 0\noom 0\noom_kill {oom_kill}\n"
    )


def _psi(tmp: Path, name: str, total_us: int) -> None:
    (tmp / name / "memory.pressure").write_text(
        f"some avg10=50.00 avg60=10.00 avg300=2.00 total={total_us}\n"
        "full avg10=40.00 avg60=8.00 avg300=1.00 total=0\n"
    )


def stall_sampler(tree: FakeTree, high_stall_s: int = 5) -> PressureSampler:
    return PressureSampler(
        MemoryHierarchy(tree.version, tree.root),
        lambda: dict(tree.reclaim),
        clock=ManualClock(0),
        high_stall_s=high_stall_s,
    )


def test_a_cgroup_held_above_memory_high_past_the_threshold_is_a_stall(tmp_path: Path) -> None:
    """A `high` count rising every other second (the kernel's penalty sleeps
    up to 2 s) for 8 s, with no kill: windows from the 5th second on carry
    the reason, how long, and the PSI stall since it began; a cgroup with
    only memory.high (no memory.max) is sampled too."""
    tree = FakeTree(tmp_path, 2)
    tree.make("svc", None, 40 * MIB)
    (tmp_path / "svc" / "memory.high").write_text(f"{16 * MIB}\n")
    s = stall_sampler(tree)
    s.scan()
    reports = []
    high = 0
    for t in range(1, 12):
        if 2 <= t <= 9 and t % 2 == 0:
            high += 3
        _events(tmp_path, "svc", high=high)
        _psi(tmp_path, "svc", 700_000 * t)
        reports += s.sample(now_ns=t * S)
    (r,) = reports
    assert "memory_high_stall" in r.reasons
    w = r.window
    assert w.high == 16 * MIB
    # Rising from second 2 to second 8: held 7 s (the second before the
    # first rise counts), stalled 6 x 0.7 s by PSI.
    assert w.high_throttled_ns == 7 * S
    assert w.high_stall_ns == 6 * 700_000_000


def test_throttling_shorter_than_the_threshold_or_ended_by_a_kill_is_no_stall(
    tmp_path: Path,
) -> None:
    tree = FakeTree(tmp_path, 2)
    tree.make("brief", 64 * MIB, 10 * MIB)
    tree.make("killed", 64 * MIB, 10 * MIB)
    for name in ("brief", "killed"):
        (tmp_path / name / "memory.high").write_text(f"{8 * MIB}\n")
    s = stall_sampler(tree)
    s.scan()
    reports = []
    for t in range(1, 12):
        # brief: throttled seconds 1-3 only; killed: throttled throughout,
        # but an OOM kill at second 4 ends the streak, and it starts over.
        _events(tmp_path, "brief", high=min(t, 3))
        _events(tmp_path, "killed", high=t, oom_kill=1 if t >= 4 else 0)
        reports += s.sample(now_ns=t * S)
    by_path = {r.path: r for r in reports}
    assert "memory_high_stall" not in by_path["/brief"].reasons
    assert "memory_high_stall" in by_path["/killed"].reasons
    # Counted again from the second after the kill (5) to 11.
    assert by_path["/killed"].window.high_throttled_ns == 7 * S


def test_a_stall_window_becomes_a_record_with_its_verdict_and_the_table_says_so() -> None:
    from oomtrace import render
    from oomtrace.agent.pressure.sampler import Window, WindowReport
    from oomtrace.agent.record.pressure_window import pressure_record

    w = Window(1 * S, usage_max=40 * MIB, high=16 * MIB)
    w.high_throttled_ns, w.high_stall_ns = 45 * S, 36 * S
    report = WindowReport(
        7, "/svc", 2, 1 * S, 11 * S, w, {"high": 90}, ("memory_high_stall",), "cgroup"
    )
    rec = pressure_record(report, "node-a", None)
    assert (rec.memory_high_bytes, rec.high_throttled_ns, rec.high_stall_ns) == (
        16 * MIB,
        45 * S,
        36 * S,
    )
    (v,) = rec.verdicts
    assert v.code == "MEMORY_HIGH_STALL"
    assert "memory.high (16 MiB) for 45 s" in v.explanation, v.explanation
    assert "stalled 36 s of that (80%" in v.explanation, v.explanation
    out = render.pressure_table([rec], now=time.time())
    assert "memory_high_stall" in out
    assert "MEMORY_HIGH_STALL: /svc has been held above" in out, out


@pytest.mark.parametrize("version", [1, 2])
def test_a_windows_peak_is_the_kernels_own_when_it_rose_between_samples(
    tmp_path: Path, version: int
) -> None:
    """A burst between two once-a-second samples: the sampled usage never
    sees it, the kernel's peak (v1 max_usage_in_bytes, v2 memory.peak) does;
    a peak from before the agent's first look is not counted."""
    tree = FakeTree(tmp_path, version)
    a = tree.make("a", 64 * MIB, 1 * MIB)
    peak = tmp_path / "a" / ("memory.max_usage_in_bytes" if version == 1 else "memory.peak")
    peak.write_text(f"{50 * MIB}\n")  # an old peak, from before the agent looked
    s = sampler(tree)
    s.scan()
    tree.reclaim[a] = (38, 1_000_000, 100_000)
    reports = []
    for t in range(1, 12):
        if t == 5:
            peak.write_text(f"{63 * MIB}\n")  # the burst, between samples
        reports += s.sample(now_ns=t * S)
    (first,) = reports
    assert first.window.usage_max == 63 * MIB
    assert "near_limit" in first.reasons
    peak.unlink()  # 5.10's v2 has no memory.peak: the samples alone
    tree.reclaim[a] = (40, 1_000_000, 100_000)
    reports = []
    for t in range(12, 23):
        reports += s.sample(now_ns=t * S)
    assert reports[0].window.usage_max == 1 * MIB
