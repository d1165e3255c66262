"""Verdicts an expert would give, on records of typical kills."""

from __future__ import annotations

import pytest

from oomtrace.agent.explain.verdicts import verdicts as all_verdicts
from oomtrace.v1 import event_pb2
from tests.unit.events import make_event

MIB = 1 << 20
CONTROLLER = event_pb2.GoRuntime.CONTROLLER
S = 1_000_000_000


def go_kill(
    version: str = "go1.27.3", gomemlimit: str = "", gogc: str = "", limit: int = 512 * MIB
) -> event_pb2.OomEvent:
    ev = make_event()
    ev.cgroup.memory_limit_bytes = ev.cgroup.oom_memcg_limit_bytes = limit
    ev.go.version, ev.go.gomemlimit, ev.go.gogc = version, gomemlimit, gogc
    return ev


def verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    """The verdicts but the fallback every otherwise unexplained kill gets."""
    return [v for v in all_verdicts(ev) if v.code != "LIMIT_REACHED"]


def test_a_kill_nothing_explains_still_gets_a_verdict_with_its_numbers() -> None:
    ev = make_event(rss_mib=60)
    ev.cgroup.oom_memcg_limit_bytes = 64 * MIB
    (v,) = all_verdicts(ev)
    assert v.code == "LIMIT_REACHED"
    assert "64 MiB limit" in v.explanation
    assert "60 MiB anonymous" in v.explanation
    assert "ratelimited" in v.explanation


def codes(ev: event_pb2.OomEvent) -> list[str]:
    return [v.code for v in verdicts(ev)]


def test_gomemlimit_unset_in_a_limited_cgroup() -> None:
    (v,) = verdicts(go_kill())
    assert v.code == "GO_GOMEMLIMIT_UNSET"
    assert "512 MiB" in v.explanation
    assert v.suggestion.startswith("Set GOMEMLIMIT=460MiB")


def test_gomemlimit_at_or_above_the_limit() -> None:
    assert codes(go_kill(gomemlimit="512MiB")) == ["GO_GOMEMLIMIT_AT_OR_ABOVE_LIMIT"]
    assert codes(go_kill(gomemlimit="1GiB")) == ["GO_GOMEMLIMIT_AT_OR_ABOVE_LIMIT"]
    assert codes(go_kill(gomemlimit="450MiB")) == []


def test_gogc_off_without_a_memory_limit() -> None:
    assert codes(go_kill(gogc="off")) == ["GO_GOGC_OFF_WITHOUT_MEMLIMIT"]
    assert codes(go_kill(gogc="off", gomemlimit="400MiB")) == []


def test_go_without_gomemlimit_support() -> None:
    (v,) = verdicts(go_kill(version="go1.18.10"))
    assert v.code == "GO_NO_MEMLIMIT_SUPPORT"
    assert "GOMEMLIMIT=460MiB" in v.suggestion


def test_non_go_process_gets_no_go_verdicts() -> None:
    assert codes(make_event()) == []


def test_limit_below_the_steady_working_set() -> None:
    ev = make_event()
    ev.timeline_cgroup = "/app"
    for s in range(-45, 1):
        ev.timeline.add(offset_ms=s * 1000, usage_bytes=62 * MIB, limit_bytes=64 * MIB)
    (v,) = verdicts(ev)
    assert v.code == "LIMIT_BELOW_WORKING_SET"
    assert "for the last 45 s" in v.explanation


def test_growth_to_the_limit_is_not_a_steady_working_set() -> None:
    ev = make_event()
    for s in range(-45, 1):
        ev.timeline.add(offset_ms=s * 1000, usage_bytes=(64 + s) * MIB, limit_bytes=64 * MIB)
    assert codes(ev) == []


def test_shmem_as_the_major_part() -> None:
    ev = make_event(rss_mib=10)
    ev.victim.shmem_rss_bytes = 50 * MIB
    (v,) = verdicts(ev)
    assert v.code == "NON_ANON_MAJOR"
    assert "shared memory" in v.explanation


def test_global_oom() -> None:
    ev = make_event()
    ev.constraint = ev.GLOBAL
    assert codes(ev) == ["NODE_OUT_OF_MEMORY"]


def test_gc_death_spiral_from_runtime_state() -> None:
    ev = go_kill(gomemlimit="40MiB", limit=64 * MIB)
    g = ev.go
    g.state, g.gc_count = CONTROLLER, 40
    g.recent_gc_count, g.recent_gc_span_ns, g.gc_per_second_10s = 32, 10 * S, 3.2
    g.effective_memory_limit_bytes = 40 * MIB
    g.memory_limit_source = event_pb2.GoRuntime.ENV
    g.heap_live_bytes = g.heap_marked_bytes = 62 * MIB
    (v,) = verdicts(ev)
    assert v.code == "GO_GC_DEATH_SPIRAL"
    assert "32 times in the last 10 s before the kill (40 in all)" in v.explanation
    g.recent_gc_count, g.gc_per_second_10s = 5, 0.5  # a few GCs: no spiral
    assert codes(ev) == []
    # A slow machine (an emulated guest) fits fewer cycles in 10 s: 12 back
    # to back with the live heap over the limit is still the spiral.
    g.recent_gc_count, g.gc_per_second_10s = 12, 1.2
    assert codes(ev) == ["GO_GC_DEATH_SPIRAL"]


def test_death_spiral_counts_what_was_seen_in_a_short_life() -> None:
    """149 GCs in a process that lived 1.3 s: said as counted, never as a
    rate stretched over 10 s (it once read "3913 times in the last 10 s")."""
    ev = go_kill(gomemlimit="40MiB", limit=64 * MIB)
    g = ev.go
    g.state, g.gc_count = CONTROLLER, 149
    g.lifetime_ns = g.recent_gc_span_ns = 1_300_000_000
    g.recent_gc_count = 149
    g.gc_per_second_10s = 149 / 1.3
    g.effective_memory_limit_bytes = 40 * MIB
    g.heap_live_bytes = g.heap_marked_bytes = 62 * MIB
    (v,) = [v for v in verdicts(ev) if v.code == "GO_GC_DEATH_SPIRAL"]
    assert "The GC ran 149 times in its 1.3 s of life (149 in all)" in v.explanation
    # A full ring of GC times within the last 80 ms of a long-lived process.
    g.ClearField("lifetime_ns")
    g.gc_count, g.recent_gc_count, g.recent_gc_span_ns = 5000, 32, 80_000_000
    (v,) = [v for v in verdicts(ev) if v.code == "GO_GC_DEATH_SPIRAL"]
    assert "32 times in the last 80 ms before the kill (5000 in all)" in v.explanation
    # Spiralling for 2.5 s, then 9 s held in the kernel's reclaim with no GC
    # (6.12 at a memcg limit): counted up to the last GC, and said so.
    g.lifetime_ns, g.gc_count, g.recent_gc_count = 11_500_000_000, 40, 40
    g.recent_gc_span_ns, g.recent_gc_end_ns_before_kill = 2_500_000_000, 9_000_000_000
    (v,) = [v for v in verdicts(ev) if v.code == "GO_GC_DEATH_SPIRAL"]
    assert "40 times in its first 2.5 s of life, 9.0 s before the kill (40 in all)" in v.explanation
    g.lifetime_ns = 60_000_000_000
    g.recent_gc_span_ns = 10_000_000_000
    (v,) = [v for v in verdicts(ev) if v.code == "GO_GC_DEATH_SPIRAL"]
    assert "40 times in the 10 s up to its last GC, 9.0 s before the kill" in v.explanation


def controller_kill(limit_bytes: int | None, source: int, gogc: int = 100) -> event_pb2.OomEvent:
    """A Go kill whose controller state was read, with no GOMEMLIMIT in the
    environment."""
    ev = go_kill(limit=128 * MIB)
    g = ev.go
    g.state, g.effective_gogc = CONTROLLER, gogc
    g.memory_limit_source = source  # type: ignore[assignment]
    g.gogc_source = event_pb2.GoRuntime.DEFAULT if gogc == 100 else event_pb2.GoRuntime.PROGRAM
    if limit_bytes is not None:
        g.effective_memory_limit_bytes = limit_bytes
    return ev


def test_a_limit_the_program_set_itself_is_not_unset() -> None:
    """debug.SetMemoryLimit(96 MiB) with no GOMEMLIMIT in the environment:
    the runtime's own limit decides, not the environment."""
    assert codes(controller_kill(96 * MIB, event_pb2.GoRuntime.PROGRAM)) == []
    (v,) = verdicts(controller_kill(200 * MIB, event_pb2.GoRuntime.PROGRAM))
    assert v.code == "GO_GOMEMLIMIT_AT_OR_ABOVE_LIMIT"
    assert v.explanation.startswith("a memory limit of 200 MiB (set by the program) is at")
    (v,) = verdicts(controller_kill(None, event_pb2.GoRuntime.DEFAULT))
    assert v.code == "GO_GOMEMLIMIT_UNSET"
    assert "the program set none" in v.explanation


def test_an_environment_limit_the_program_lowered_is_judged_as_lowered() -> None:
    ev = controller_kill(96 * MIB, event_pb2.GoRuntime.PROGRAM)
    ev.go.gomemlimit = "1GiB"  # the environment said more; the program set 96 MiB
    assert codes(ev) == []


def test_gogc_off_set_by_the_program() -> None:
    (v,) = verdicts(controller_kill(None, event_pb2.GoRuntime.DEFAULT, gogc=-1))
    assert v.code == "GO_GOGC_OFF_WITHOUT_MEMLIMIT"
    assert v.explanation.startswith("GOGC=off (set by the program) and no memory limit")


def test_non_heap_memory_dominates() -> None:
    ev = go_kill(gomemlimit="400MiB")
    g = ev.go
    g.state, g.heap_live_bytes, g.heap_goal_bytes = CONTROLLER, 20 * MIB, 40 * MIB
    ev.victim.anon_rss_bytes = 300 * MIB
    assert "GO_NON_HEAP_DOMINATES" in codes(ev)


@pytest.mark.parametrize(("live", "goal"), [(24, 48), (32, 32)])
def test_heap_growing_toward_its_next_goal_is_not_non_heap(live: int, goal: int) -> None:
    """Read as a GC ends (32 MiB live, that cycle's goal 32 MiB), the heap
    may then grow by GOGC=100 percent: a 65 MiB RSS at the kill is the heap
    on its way to the next goal, not memory outside it."""
    ev = go_kill()
    g = ev.go
    g.state, g.heap_live_bytes, g.heap_goal_bytes = CONTROLLER, live * MIB, goal * MIB
    g.effective_gogc = 100
    ev.victim.anon_rss_bytes = 65 * MIB
    assert "GO_NON_HEAP_DOMINATES" not in codes(ev)


def test_non_heap_under_gomemlimit_is_judged_against_the_limit() -> None:
    """GOMEMLIMIT=100MiB caps the heap whatever GOGC allows: a 300 MiB RSS
    with 90 MiB of heap is mostly outside it."""
    ev = go_kill(gomemlimit="100MiB")
    g = ev.go
    g.state, g.heap_live_bytes, g.heap_goal_bytes = CONTROLLER, 90 * MIB, 95 * MIB
    g.effective_gogc, g.effective_memory_limit_bytes = 100, 100 * MIB
    ev.victim.anon_rss_bytes = 300 * MIB
    assert "GO_NON_HEAP_DOMINATES" in codes(ev)
