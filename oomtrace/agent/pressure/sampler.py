"""Memory pressure per cgroup: a one-second timeline of every memory cgroup
that has a limit, and a pressure record for each 10-second window that had
pressure in it (reclaim, usage near the limit, PSI, pressure notifications,
memory.events / oom_control counters moving).

Signals, by cgroup version:
  both  memcg reclaim count and stall time, summed in BPF per memcg
  v1    memory.usage_in_bytes, memory.limit_in_bytes, memory.failcnt,
        memory.oom_control; memory.pressure_level "medium" notifications
        through cgroup.event_control and an eventfd; the host's PSI
  v2    memory.current, memory.max, memory.events; memory.pressure (avg10)
        and a PSI trigger ("some 100ms per 1s") woken through poll;
        memory.high, and memory.events' `high` each second where one is set

memory.high stalls (v2): above memory.high the kernel makes each allocation
reclaim and then sleep (up to 2 s a time) instead of killing anything, so a
service can hang for minutes with no OOM kill to show for it. A cgroup whose
`high` count keeps rising (gaps under HIGH_GAP_NS) for longer than
`high_stall_ns`, with no oom_kill in between, is stalled: its windows get the
reason "memory_high_stall" with how long, how much its tasks stalled (its
PSI "some" total) and the memory.high they were held at.

Bounded: at most `max_cgroups` tracked, `history_s` points each, one record
per cgroup per window (6 a minute).

The sampler runs on a thread of its own (`start`), so a second is sampled on
time whatever the event loop is busy with (a kill being assembled, a binary
being parsed, probes being attached). A second it still could not sample (the
whole process was starved) is kept as a missed second, so a timeline shows a
gap as a gap, and `points_missed` counts them. The event loop takes the closed
windows with `take_reports`."""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from oomtrace.agent.cgroups.hierarchy import MemoryHierarchy
from oomtrace.agent.host import Clock, boot_ns_now
from oomtrace.agent.runtimes.go.sampling import GoPoint, GoSampler
from oomtrace.records import HIGH_STALL_S

log = structlog.get_logger(__name__)

HOST_PSI = Path("/proc/pressure/memory")
_UNLIMITED = 1 << 62
NEAR_LIMIT = 0.9
PSI_SOME_PRESSURE = 10.0  # avg10 percent of time stalled
# v2 trigger: wake when tasks stall 100 ms in any 1 s window. The kernel
# overwrites the last byte written with NUL (psi_write), so the terminator
# must be sent: without it the window reads 100000 us and is refused.
PSI_TRIGGER = b"some 100000 1000000\0"
# A throttled task sleeps at most 2 s per allocation (the kernel's
# MEMCG_MAX_HIGH_DELAY_JIFFIES) between `high` events: a gap well past that
# means it stopped allocating against memory.high.
HIGH_GAP_NS = 5_000_000_000


@dataclass(frozen=True, slots=True)
class Point:
    """One second of one cgroup, stamped with the boot-clock time it was read."""

    boot_ns: int
    usage_bytes: int
    limit_bytes: int
    reclaims: int
    reclaim_stall_ns: int
    psi_some_avg10: float
    psi_full_avg10: float


@dataclass
class Window:
    start_ns: int
    usage_max: int = 0
    limit: int = 0
    reclaims: int = 0
    stall_ns: int = 0
    max_stall_ns: int = 0
    psi_some_max: float = 0.0
    psi_full_max: float = 0.0
    level_events: int = 0
    trigger_events: int = 0
    # A memory.high stall past the threshold during the window (v2): the
    # memory.high, how long the cgroup had been held throttled by the
    # window's last throttled second, and its tasks' stall time (PSI some) in
    # that span.
    high: int = 0
    high_throttled_ns: int = 0
    high_stall_ns: int = 0


@dataclass(frozen=True, slots=True)
class WindowReport:
    """One window of one cgroup that had pressure."""

    cgroup_id: int
    path: str
    version: int
    start_ns: int
    end_ns: int
    window: Window
    counters: dict[str, int]
    reasons: tuple[str, ...]
    psi_source: str


@dataclass
class Tracked:
    path: str
    dir: Path
    limit: int = 0  # 0: none (not sampled)
    limit_checked_ns: int = 0
    learned_ns: int = 0
    points: deque[Point] = field(default_factory=deque)
    reclaim_seen: tuple[int, int, int] = (0, 0, 0)
    counters: dict[str, int] | None = None
    window: Window | None = None
    level_fd: int | None = None  # v1 eventfd for pressure_level
    level_src: int | None = None
    trigger_fd: int | None = None  # v2 memory.pressure with a trigger
    high: int = 0  # v2 memory.high (0: none)
    high_count: int | None = None  # memory.events' `high` at the last second
    oom_kills: int = 0  # memory.events' `oom_kill` at the last second
    high_since_ns: int = 0  # a throttled streak: its first second (0: none)
    high_last_ns: int = 0  # and its last
    high_psi_start_us: int = 0  # PSI some total when the streak began
    peak_seen: int | None = None  # the kernel's own peak at the last second

    @property
    def sampled(self) -> bool:
        """A limit or a memory.high: something to be pressed against."""
        return bool(self.limit or self.high)


def psi_some_total_us(text: str) -> int:
    """The "some" line's total: microseconds any task stalled, ever."""
    for line in text.splitlines():
        if line.startswith("some "):
            for p in line.split()[1:]:
                if p.startswith("total="):
                    with contextlib.suppress(ValueError):
                        return int(p[6:])
    return 0


def parse_psi(text: str) -> tuple[float, float]:
    """(some avg10, full avg10) from a PSI file."""
    some = full = 0.0
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        avg10 = next((float(p[6:]) for p in parts[1:] if p.startswith("avg10=")), 0.0)
        if parts[0] == "some":
            some = avg10
        elif parts[0] == "full":
            full = avg10
    return some, full


def parse_counters(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, memory.oom_control) to a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return 0
    try:
        value = int(text)
    except ValueError:
        return None
    return 0 if value >= _UNLIMITED else value


class PressureSampler:
    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        reclaim_stats: Callable[[], dict[int, tuple[int, int, int]]],
        *,
        window_ns: int = 10_000_000_000,
        history_s: int = 90,
        max_cgroups: int = 5000,
        max_notifiers: int = 1000,
        go: GoSampler | None = None,
        clock: Clock = boot_ns_now,
        period_ns: int = 1_000_000_000,
        high_stall_s: int = HIGH_STALL_S,
    ) -> None:
        self.h = hierarchy
        self.high_stall_ns = high_stall_s * 1_000_000_000
        self.clock = clock
        self.period_ns = period_ns
        self.reclaim_stats = reclaim_stats
        self.window_ns = window_ns
        self.history_s = history_s
        self.max_cgroups = max_cgroups
        self.max_notifiers = max_notifiers
        self.cgroups: dict[int, Tracked] = {}
        self.notifiers = 0
        self.dropped = 0  # cgroups not tracked because max_cgroups was reached
        self._flushed: list[WindowReport] = []  # windows of cgroups removed since the last sample
        # Go processes' heap and GC count, sampled in the same second.
        self.go = go
        self._last_sample_ns = 0
        # Seconds no point was taken for, and how many in all.
        self.missed_ns: deque[int] = deque(maxlen=history_s)
        self.points_missed = 0
        # The event loop (learn, forget, timeline) and the sampling thread
        # share the tracked cgroups; sampling holds the lock while it reads.
        self._lock = threading.RLock()
        self._reports: queue.SimpleQueue[WindowReport] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        v1 = hierarchy.version == 1
        self._usage_file = "memory.usage_in_bytes" if v1 else "memory.current"
        # The kernel's own high-water mark, which a once-a-second sample
        # misses (a burst between samples): v1 max_usage_in_bytes, v2
        # memory.peak (5.19+; absent on 5.10: the sampled maximum alone).
        # Never reset here: another reader (cAdvisor's max_usage) counts on
        # v1's, and a v2 reset per open file needs 6.12. When it has risen
        # since the last second, the new peak was reached within the window.
        self._peak_file = "memory.max_usage_in_bytes" if v1 else "memory.peak"
        self._limit_file = "memory.limit_in_bytes" if v1 else "memory.max"

    # -- membership -------------------------------------------------------------------

    def scan(self) -> int:
        """Learns every cgroup now in the hierarchy; returns how many are tracked."""
        if self.h.mount is None:
            return 0
        for root, dirs, _files in os.walk(self.h.mount):
            for d in dirs:
                full = Path(root, d)
                with contextlib.suppress(OSError):
                    self.learn(full.stat().st_ino, "/" + str(full.relative_to(self.h.mount)))
        return len(self.cgroups)

    def learn(self, cgroup_id: int, path: str, *, new: bool = False) -> None:
        """new: the cgroup was just made (its mkdir was seen), so its counters
        start from zero; otherwise their first reading is the baseline."""
        if self.h.mount is None or path.startswith("/process_api"):
            return
        with self._lock:
            if cgroup_id in self.cgroups:
                return
            if len(self.cgroups) >= self.max_cgroups:
                self.dropped += 1
                return
            self.cgroups[cgroup_id] = Tracked(
                path,
                self.h.mount / path.lstrip("/"),
                learned_ns=self.clock(),
                points=deque(maxlen=self.history_s),
                counters={} if new else None,
            )

    def forget(self, cgroup_id: int) -> None:
        """The cgroup is gone; its open window (the pressure right before a
        container died) is reported with the next sample."""
        with self._lock:
            self._forget(cgroup_id)

    def _forget(self, cgroup_id: int) -> None:
        t = self.cgroups.pop(cgroup_id, None)
        if t is not None:
            self._close_notifiers(t)
            if t.window is not None and t.points:
                report = self._close_window(cgroup_id, t, t.points[-1].boot_ns, read_counters=False)
                if report is not None:
                    self._flushed.append(report)

    def _close_notifiers(self, t: Tracked) -> None:
        for fd in (t.level_fd, t.level_src, t.trigger_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if t.level_fd is not None or t.trigger_fd is not None:
            self.notifiers -= 1
        t.level_fd = t.level_src = t.trigger_fd = None

    def _arm_notifier(self, t: Tracked) -> None:
        if self.notifiers >= self.max_notifiers:
            return
        try:
            if self.h.version == 1:
                efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                src = os.open(t.dir / "memory.pressure_level", os.O_RDONLY | os.O_CLOEXEC)
                (t.dir / "cgroup.event_control").write_text(f"{efd} {src} medium")
                t.level_fd, t.level_src = efd, src
            else:
                fd = os.open(t.dir / "memory.pressure", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                os.write(fd, PSI_TRIGGER)
                t.trigger_fd = fd
            self.notifiers += 1
        except OSError as exc:
            log.warning("pressure.notifier_unavailable", cgroup=t.path, error=str(exc))

    # -- sampling -----------------------------------------------------------------------

    def start(self) -> None:
        """Samples every period on a thread of its own until stop()."""
        self._thread = threading.Thread(target=self._run, daemon=True, name="pressure")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        next_ns = self.clock()
        while not self._stop.wait(max(0, next_ns - self.clock()) / 1e9):
            try:
                for report in self.sample():
                    self._reports.put(report)
            except Exception:
                log.exception("pressure.sample_failed")
            # On a fixed schedule, not a period after each sample, so the
            # points stay a second apart; when a whole period or more was
            # lost, start again from now (sample() keeps the gap as missed).
            next_ns += self.period_ns
            now = self.clock()
            if now - next_ns >= self.period_ns:
                next_ns = now

    def take_reports(self) -> list[WindowReport]:
        """The windows closed since the last call, oldest first."""
        out: list[WindowReport] = []
        while True:
            try:
                out.append(self._reports.get_nowait())
            except queue.Empty:
                return out

    def sample(self, now_ns: int | None = None) -> list[WindowReport]:
        """One point for every limited cgroup; the windows that closed."""
        with self._lock:
            return self._sample(self.clock() if now_ns is None else now_ns)

    def _note_missed(self, now_ns: int) -> None:
        """Seconds between the last point and this one that got none."""
        last = self._last_sample_ns
        self._last_sample_ns = now_ns
        if not last:
            return
        # Half a period of lateness is jitter; beyond that a second was lost.
        missed = (now_ns - last + self.period_ns // 2) // self.period_ns - 1
        for i in range(1, missed + 1):
            self.missed_ns.append(last + i * self.period_ns)
        if missed > 0:
            self.points_missed += missed
            log.warning("pressure.seconds_missed", missed=missed, total=self.points_missed)

    def _sample(self, now_ns: int) -> list[WindowReport]:
        self._note_missed(now_ns)
        try:
            reclaim = self.reclaim_stats()
        except (OSError, KeyError) as exc:
            log.warning("pressure.reclaim_unreadable", error=str(exc))
            reclaim = {}
        host_psi = (0.0, 0.0)
        with contextlib.suppress(OSError):
            host_psi = parse_psi(HOST_PSI.read_text())
        if self.go is not None:
            self.go.sample(now_ns)
        closed, self._flushed = self._flushed, []
        gone: list[int] = []
        for cid, t in self.cgroups.items():
            if self._refresh_limit(t, now_ns) is None:
                gone.append(cid)
                continue
            if not t.sampled:
                continue
            usage = _read_int(t.dir / self._usage_file)
            if usage is None:
                gone.append(cid)
                continue
            count, stall, longest = reclaim.get(cid, (0, 0, 0))
            d_count, d_stall = count - t.reclaim_seen[0], stall - t.reclaim_seen[1]
            t.reclaim_seen = (count, stall, longest)
            psi = host_psi
            psi_total = 0
            if self.h.version == 2:
                with contextlib.suppress(OSError):
                    text = (t.dir / "memory.pressure").read_text()
                    psi, psi_total = parse_psi(text), psi_some_total_us(text)
            t.points.append(Point(now_ns, usage, t.limit, d_count, d_stall, psi[0], psi[1]))
            w = t.window or Window(now_ns)
            t.window = w
            w.usage_max, w.limit = max(w.usage_max, usage), t.limit
            peak = _read_int(t.dir / self._peak_file)
            if peak is not None:
                if t.peak_seen is not None and peak > t.peak_seen:
                    w.usage_max = max(w.usage_max, peak)
                t.peak_seen = peak
            w.reclaims += d_count
            w.stall_ns += d_stall
            w.max_stall_ns = max(w.max_stall_ns, longest if d_count else 0)
            w.psi_some_max, w.psi_full_max = (
                max(w.psi_some_max, psi[0]),
                max(w.psi_full_max, psi[1]),
            )
            if t.high:
                self._follow_high(t, w, now_ns, psi_total)
            if t.level_fd is not None:
                w.level_events += self._drain_notifier(t)
            elif t.trigger_fd is not None:
                w.trigger_events += self._drain_notifier(t)
            if now_ns - w.start_ns >= self.window_ns:
                report = self._close_window(cid, t, now_ns)
                if report is not None:
                    closed.append(report)
        for cid in gone:
            self._forget(cid)
        return closed

    def _follow_high(self, t: Tracked, w: Window, now_ns: int, psi_total_us: int) -> None:
        """One second of a cgroup with a memory.high: is it still being
        throttled against it, and for how long now."""
        events: dict[str, int] = {}
        with contextlib.suppress(OSError):
            events = parse_counters((t.dir / "memory.events").read_text())
        high, kills = events.get("high", 0), events.get("oom_kill", 0)
        seen, t.high_count = t.high_count, high
        killed, t.oom_kills = kills > t.oom_kills and seen is not None, kills
        if killed or (t.high_since_ns and now_ns - t.high_last_ns > HIGH_GAP_NS):
            # A kill ends it (that is an OOM record's story), as does a
            # stretch with no allocation held back.
            t.high_since_ns = t.high_last_ns = 0
        if seen is None or high <= seen or killed:
            return
        if not t.high_since_ns:
            t.high_since_ns, t.high_psi_start_us = now_ns, psi_total_us
        t.high_last_ns = now_ns
        # Counted from the first second the count was seen rising, so the
        # second before it (when the throttling began) is added.
        held = now_ns - t.high_since_ns + self.period_ns
        if held >= self.high_stall_ns:
            w.high = t.high
            w.high_throttled_ns = held
            w.high_stall_ns = max(0, psi_total_us - t.high_psi_start_us) * 1000

    def _refresh_limit(self, t: Tracked, now_ns: int) -> int | None:
        # Limits are often set right after the cgroup is made: look again
        # soon after learning it, then every 5 s.
        age = now_ns - t.learned_ns
        every = 1_000_000_000 if age < 30_000_000_000 else 5_000_000_000
        if t.limit_checked_ns and now_ns - t.limit_checked_ns < every:
            return t.limit
        limit = _read_int(t.dir / self._limit_file)
        if limit is None:
            return None
        had = t.sampled
        t.limit, t.limit_checked_ns = limit, now_ns
        if self.h.version == 2:
            t.high = _read_int(t.dir / "memory.high") or 0
            if not t.high:
                t.high_count = None
                t.high_since_ns = t.high_last_ns = 0
        if t.sampled and not had:
            self._arm_notifier(t)
            if t.counters is None:
                # The baseline: a cgroup killed in its first window still
                # shows its counters moving.
                t.counters = self._counters(t)
        elif had and not t.sampled:
            self._close_notifiers(t)
        return limit

    def _drain_notifier(self, t: Tracked) -> int:
        if t.level_fd is not None:
            try:
                return int.from_bytes(os.read(t.level_fd, 8), "little")
            except BlockingIOError:
                return 0
            except OSError:
                return 0
        if t.trigger_fd is not None:
            _r, _w, ready = select.select([], [], [t.trigger_fd], 0)
            return 1 if ready else 0
        return 0

    def _counters(self, t: Tracked) -> dict[str, int]:
        names = (
            ("memory.failcnt", "memory.oom_control") if self.h.version == 1 else ("memory.events",)
        )
        out: dict[str, int] = {}
        for name in names:
            with contextlib.suppress(OSError):
                text = (t.dir / name).read_text()
                if name == "memory.failcnt":
                    out["failcnt"] = int(text)
                else:
                    out.update(parse_counters(text))
        out.pop("oom_kill_disable", None)
        out.pop("under_oom", None)
        return out

    def _close_window(
        self, cid: int, t: Tracked, now_ns: int, read_counters: bool = True
    ) -> WindowReport | None:
        w = t.window
        assert w is not None
        t.window = Window(now_ns)
        counters = self._counters(t) if read_counters else {}
        before, t.counters = t.counters, counters
        deltas = {
            k: v - before.get(k, 0)
            for k, v in counters.items()
            if before is not None and v > before.get(k, 0)
        }
        reasons = []
        if w.reclaims:
            reasons.append("reclaim")
        if w.limit and w.usage_max >= NEAR_LIMIT * w.limit:
            reasons.append("near_limit")
        if self.h.version == 2 and w.psi_some_max >= PSI_SOME_PRESSURE:
            reasons.append("psi")
        if w.level_events:
            reasons.append("pressure_level")
        if w.trigger_events:
            reasons.append("psi_trigger")
        if deltas:
            reasons.append("counters")
        if w.high_throttled_ns:
            reasons.append("memory_high_stall")
        if not reasons:
            return None
        return WindowReport(
            cid,
            t.path,
            self.h.version,
            w.start_ns,
            now_ns,
            w,
            deltas,
            tuple(reasons),
            "cgroup" if self.h.version == 2 else "host",
        )

    def timeline(self, cgroup_id: int, kill_ns: int, span_ns: int = 60_000_000_000) -> list[Point]:
        with self._lock:
            t = self.cgroups.get(cgroup_id)
            if t is None:
                return []
            return [p for p in t.points if kill_ns - span_ns <= p.boot_ns <= kill_ns]

    def go_timeline(self, tgid: int, kill_ns: int) -> list[GoPoint]:
        return self.go.timeline(tgid, kill_ns) if self.go is not None else []

    def missed(self, since_ns: int, until_ns: int) -> list[int]:
        """The seconds in [since_ns, until_ns] that got no point."""
        with self._lock:
            return [m for m in self.missed_ns if since_ns <= m <= until_ns]

    def close(self) -> None:
        self.stop()
        with self._lock:
            for t in self.cgroups.values():
                self._close_notifiers(t)
