"""Each Go process's live heap and GC count, once a second, with the pressure
sampler's cgroup points (the same boot_ns, so a timeline joins them by
second). Read from the GC probe's state in the kernel; kept a while after a
process is gone, since its record is built after it died."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# A process not seen for this long is forgotten.
_FORGET_NS = 120_000_000_000


@dataclass(frozen=True, slots=True)
class GoPoint:
    """A Go process's runtime, sampled with the cgroup points (same boot_ns)."""

    boot_ns: int
    gc_count: int
    heap_live_bytes: int


class GoSampler:
    def __init__(
        self, states: Callable[[], dict[int, tuple[int, int]]], history_s: int = 90
    ) -> None:
        """states: every Go process's (GC count, live heap) by tgid, as the
        GC probe last saw it."""
        self.states = states
        self.history_s = history_s
        self._points: dict[int, deque[GoPoint]] = {}
        self._seen_ns: dict[int, int] = {}
        # sample() runs on the pressure thread, timeline() on the event loop.
        self._lock = threading.Lock()

    def sample(self, now_ns: int) -> None:
        try:
            states = self.states()
        except (OSError, KeyError) as exc:
            log.warning("pressure.go_states_unreadable", error=str(exc))
            return
        with self._lock:
            for tgid, (gc_count, heap_live) in states.items():
                ring = self._points.get(tgid)
                if ring is None:
                    ring = self._points[tgid] = deque(maxlen=self.history_s)
                ring.append(GoPoint(now_ns, gc_count, heap_live))
                self._seen_ns[tgid] = now_ns
            for tgid in [t for t, seen in self._seen_ns.items() if now_ns - seen > _FORGET_NS]:
                self._points.pop(tgid, None)
                self._seen_ns.pop(tgid, None)

    def timeline(self, tgid: int, kill_ns: int, span_ns: int = 60_000_000_000) -> list[GoPoint]:
        with self._lock:
            return [
                p for p in self._points.get(tgid, ()) if kill_ns - span_ns <= p.boot_ns <= kill_ns
            ]
