"""The Go verdicts: what the GC's configuration and state say about a kill.

They read what the runtime had in effect where the GC probe read it (a
program may set its own limit with debug.SetMemoryLimit, as
automemlimit-style libraries do), and the environment (GOMEMLIMIT, GOGC)
only where it did not. GOMEMLIMIT is a soft limit the GC aims at, and Go
never derives it from the cgroup's limit."""

from __future__ import annotations

from dataclasses import dataclass

from oomtrace.agent.explain.wording import (
    CRITICAL,
    INFO,
    MIB,
    WARNING,
    mib,
    suggested_gomemlimit,
    verdict,
)
from oomtrace.agent.runtimes.go.heap import ENABLE_HINT, OFF_BY_LINKER, OFF_BY_PROGRAM
from oomtrace.agent.runtimes.go.settings import parse_size, version_tuple
from oomtrace.records import recent_gcs, seconds_text
from oomtrace.v1 import event_pb2

CONTROLLER = event_pb2.GoRuntime.CONTROLLER


def go_verdicts(go: event_pb2.GoRuntime, limit: int, rss: int) -> list[event_pb2.Verdict]:
    """limit: the memcg limit that was hit (0 for a global OOM); rss: the
    victim's resident bytes."""
    out: list[event_pb2.Verdict] = []
    if go.version or go.state == CONTROLLER:
        out += _go_verdicts(go, limit)
    if go.state:
        out += _go_runtime_verdicts(go, limit, rss)
    out += _heap_profile_verdicts(go)
    return out


def _heap_profile_verdicts(go: event_pb2.GoRuntime) -> list[event_pb2.Verdict]:
    """Where the memory was held, from the heap profile at the kill; or how
    to have one next time, when profiling was off."""
    why = go.heap_profile_missing
    if why.startswith((OFF_BY_LINKER, OFF_BY_PROGRAM)):
        return [
            verdict(
                "GO_HEAP_PROFILE_OFF",
                INFO,
                f"No heap profile: {why.split(':')[0]}, so which code held the memory "
                "cannot be said.",
                "To have one at the next kill, "
                + (
                    ENABLE_HINT
                    if why.startswith(OFF_BY_LINKER)
                    else "leave runtime.MemProfileRate above 0"
                ),
            )
        ]
    hp = go.heap_profile
    if not hp.top or hp.inuse_bytes + hp.since_gc_bytes <= 0:
        return []
    site = hp.top[0]
    held, total = site.inuse_bytes + site.since_gc_bytes, hp.inuse_bytes + hp.since_gc_bytes
    share = held / total if total > 0 else 0
    since = (
        f", {mib(hp.since_gc_bytes)} of it allocated since the last GC"
        if hp.since_gc_bytes > 0
        else ""
    )
    grew = ""
    if hp.growth and go.heap_profile_before.buckets:
        g = hp.growth[0]
        grew = (
            f" The most growth since the profile "
            f"{seconds_text(go.heap_profile_before.taken_ns_before_kill)} before the kill: "
            f"{g.function} ({g.file.rsplit('/', 1)[-1]}:{g.line}), +{mib(g.inuse_bytes)}."
        )
    return [
        verdict(
            "GO_HEAP_HELD_BY",
            INFO,
            f"{site.function} ({site.file.rsplit('/', 1)[-1]}:{site.line}) held {mib(held)} "
            f"of the {mib(total)} the runtime counted in use at the kill{since} "
            f"({share:.0%}, from the runtime's sampled heap profile).{grew}",
            "See where it grew: oomtrace pprof ID > heap.pb.gz; go tool pprof -top heap.pb.gz",
        )
    ]


_NO_GOAL = 1 << 60  # GOGC=off leaves the goal at "never"
_FROM = {
    event_pb2.GoRuntime.ENV: "from the environment",
    event_pb2.GoRuntime.PROGRAM: "set by the program",
    event_pb2.GoRuntime.DEFAULT: "the default",
}


@dataclass(frozen=True, slots=True)
class _GoConfig:
    """The GC's configuration the verdicts judge, and how to name it."""

    memory_limit: int | None  # bytes; None: no limit
    gogc_off: bool
    gogc: str  # "100", "off"
    limit_named: str  # "GOMEMLIMIT=100MiB", "a memory limit of 96 MiB (set by the program)"
    gogc_named: str  # "GOGC=50", "GOGC=off (set by the program)"
    from_runtime: bool


def _go_config(go: event_pb2.GoRuntime) -> _GoConfig:
    """What was in effect: the runtime's state where the probe read it, the
    environment where it did not."""
    if go.state == CONTROLLER:
        limit = (
            go.effective_memory_limit_bytes if go.HasField("effective_memory_limit_bytes") else None
        )
        gogc_value = go.effective_gogc if go.HasField("effective_gogc") else 100
        gogc = "off" if gogc_value < 0 else str(gogc_value)
        limit_from = _FROM.get(go.memory_limit_source, "")
        gogc_from = _FROM.get(go.gogc_source, "")
        named = (
            f"GOMEMLIMIT={go.gomemlimit}"
            if go.memory_limit_source == event_pb2.GoRuntime.ENV and go.gomemlimit
            else f"a memory limit of {mib(limit or 0)}" + (f" ({limit_from})" if limit_from else "")
        )
        return _GoConfig(
            limit,
            gogc_value < 0,
            gogc,
            named,
            f"GOGC={gogc}" + (f" ({gogc_from})" if gogc_from else ""),
            True,
        )
    limit = parse_size(go.gomemlimit) if go.gomemlimit else None
    gogc = go.gogc.strip().lower() or "100"
    return _GoConfig(
        limit, gogc == "off", gogc, f"GOMEMLIMIT={go.gomemlimit}", f"GOGC={gogc}", False
    )


def _go_runtime_verdicts(go: event_pb2.GoRuntime, limit: int, rss: int) -> list[event_pb2.Verdict]:
    """From the runtime state the uprobes saw."""
    out: list[event_pb2.Verdict] = []
    soft = go.effective_memory_limit_bytes if go.HasField("effective_memory_limit_bytes") else 0
    ceiling = min(x for x in (soft, limit) if x) if (soft or limit) else 0
    # 10 or more GCs within at most the last 10 s (a healthy service does a
    # few), counted, not averaged, since a process can die within those 10 s.
    # Ten, not more: how many cycles fit in those seconds depends on how fast
    # the machine marks the heap (a spiral that ran 43 GCs a second on this
    # host ran under 20 in 10 s in an emulated guest), while a live heap at
    # 90 % of the limit at a kill already says the cycles could free nothing.
    gcs, span = recent_gcs(go)
    if gcs >= 10 and ceiling and go.heap_marked_bytes >= 0.9 * ceiling:
        out.append(
            verdict(
                "GO_GC_DEATH_SPIRAL",
                CRITICAL,
                f"The GC ran {gcs} times {span} ({go.gc_count} in all) with "
                f"{mib(go.heap_marked_bytes)} live against a {mib(ceiling)} limit: the live heap "
                "no longer fit, so the GC ran back to back until the kernel killed the process.",
                "The live heap needs more memory than the limit: raise the limit (and "
                "the Go memory limit with it) or reduce what the program keeps alive.",
            )
        )
    # The heap figures are read as the last GC ends; after it the heap may
    # grow by GOGC percent of what that GC found live (at most heap_live)
    # before the next cycle, or up to the memory limit. Only memory beyond
    # that is surely outside the heap.
    gogc = go.effective_gogc if go.HasField("effective_gogc") else 100
    # GOGC=off: the heap has no bound but the limit.
    growth = _NO_GOAL if gogc < 0 else go.heap_live_bytes * (100 + gogc) // 100
    heap_bound = max(go.heap_live_bytes, go.heap_goal_bytes, growth)
    if soft:
        heap_bound = min(heap_bound, max(soft, go.heap_live_bytes))
    if (
        go.state == CONTROLLER
        and go.heap_live_bytes
        and heap_bound < _NO_GOAL
        and rss >= 2 * heap_bound
        and rss - heap_bound >= 32 * MIB
    ):
        out.append(
            verdict(
                "GO_NON_HEAP_DOMINATES",
                WARNING,
                f"Resident memory was {mib(rss)} but the Go heap could have been at most "
                f"{mib(heap_bound)} ({mib(go.heap_live_bytes)} at the last GC): most memory "
                "was outside the heap (goroutine stacks, cgo, mmap, the runtime).",
                "GOMEMLIMIT cannot help with memory outside the heap: look for goroutine leaks, "
                "cgo allocations or large mmaps.",
            )
        )
    return out


def _go_verdicts(go: event_pb2.GoRuntime, limit: int) -> list[event_pb2.Verdict]:
    out: list[event_pb2.Verdict] = []
    ver = version_tuple(go.version)
    cfg = _go_config(go)
    if ver < (1, 19) and ver != (0, 0):
        out.append(
            verdict(
                "GO_NO_MEMLIMIT_SUPPORT",
                WARNING,
                f"{go.version} has no GOMEMLIMIT (added in Go 1.19): its GC ignores any memory limit.",
                "Build with Go 1.19 or newer, then set "
                + (suggested_gomemlimit(limit) if limit else "GOMEMLIMIT"),
            )
        )
        return out
    nothing_set = (
        "no memory limit was in effect (GOMEMLIMIT unset, and the program set none)"
        if cfg.from_runtime
        else "no GOMEMLIMIT"
    )
    if cfg.gogc_off and cfg.memory_limit is None:
        out.append(
            verdict(
                "GO_GOGC_OFF_WITHOUT_MEMLIMIT",
                CRITICAL,
                f"{cfg.gogc_named} and {nothing_set}: the garbage collector never ran, so the "
                "heap grew until the kernel killed the process.",
                "Keep GOGC=off only together with GOMEMLIMIT"
                + (f" ({suggested_gomemlimit(limit)})" if limit else "")
                + ", or remove GOGC=off.",
            )
        )
    if not limit:
        return out
    if cfg.memory_limit is None and not cfg.gogc_off:
        unset = (
            "No memory limit was in effect in the Go runtime (GOMEMLIMIT unset, and the "
            "program set none)"
            if cfg.from_runtime
            else "GOMEMLIMIT is not set"
        )
        out.append(
            verdict(
                "GO_GOMEMLIMIT_UNSET",
                WARNING,
                f"{unset} in a cgroup limited to {mib(limit)}: with {cfg.gogc_named} the GC "
                "lets the heap grow to about twice what is live, with no regard for the limit "
                "(Go does not read the cgroup's limit).",
                f"Set {suggested_gomemlimit(limit)} (about 90 % of the limit).",
            )
        )
    elif cfg.memory_limit is not None and cfg.memory_limit >= limit:
        out.append(
            verdict(
                "GO_GOMEMLIMIT_AT_OR_ABOVE_LIMIT",
                WARNING,
                f"{cfg.limit_named} is at or above the cgroup's {mib(limit)} limit: the "
                "kernel kills the process before the GC ever works to stay under it.",
                f"Set {suggested_gomemlimit(limit)} (about 90 % of the limit).",
            )
        )
    return out
