"""Verdicts: what went wrong in a kill, in plain words, with the numbers and
what to change. Pure functions of a finished record, so the agent and any
later reader agree. Each verdict has a stable code; the Go ones are in
go/verdicts.py. Every number in an explanation is one that was seen, never
extrapolated."""

from __future__ import annotations

from oomtrace.agent.explain.death_verdicts import death_verdicts
from oomtrace.agent.explain.memory_verdicts import fallback_verdicts, memory_verdicts, node_verdicts
from oomtrace.agent.explain.wording import CRITICAL, INFO, WARNING, mib, verdict
from oomtrace.agent.runtimes.go.verdicts import go_verdicts
from oomtrace.agent.runtimes.jvm.verdicts import jvm_verdicts
from oomtrace.agent.runtimes.nodejs.verdicts import node_verdicts as nodejs_verdicts
from oomtrace.records import limit_hit_bytes, rss_bytes, seconds_text
from oomtrace.v1 import event_pb2


def verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    out: list[event_pb2.Verdict] = []
    c, v = ev.cgroup, ev.victim
    limit = limit_hit_bytes(ev)
    rss = rss_bytes(ev)

    if ev.HasField("go"):
        out += go_verdicts(ev.go, limit if ev.constraint == ev.MEMCG else 0, rss)
    # A language runtime's own verdicts (the flag to set) come with Go's,
    # first: for a JVM or Node victim they are what to change.
    memcg_limit = limit if ev.constraint == ev.MEMCG else 0
    if ev.HasField("jvm"):
        out += jvm_verdicts(ev.jvm, memcg_limit, v.anon_rss_bytes, rss)
    if ev.HasField("node_runtime"):
        out += nodejs_verdicts(ev.node_runtime, memcg_limit, v.anon_rss_bytes, v.file_rss_bytes)
    out += death_verdicts(ev)
    # Where the memory was comes next: the headline of any other kill
    # (history's VERDICT column, top --by verdict, the metric's label).
    # A runtime's own death is no kernel kill: it has no breakdown.
    if ev.constraint != ev.GLOBAL and ev.source != ev.RUNTIME:
        out += memory_verdicts(ev)

    if ev.source == ev.USERSPACE:
        k = ev.killer
        out.append(
            verdict(
                "USERSPACE_OOM_KILL",
                WARNING,
                f"{k.comm}[{k.pid}], a userspace OOM killer, sent {k.signal} to {v.comm}[{v.pid}] "
                f"({mib(rss)} resident): the kernel did not kill it, and no limit of the kernel's "
                "was hit." + (f' Just before, it wrote: "{k.said}"' if k.said else ""),
                f"See {k.comm}'s own log for its reason and thresholds (earlyoom -m/-s, "
                "systemd-oomd's ManagedOOMMemoryPressureLimit and SwapUsedLimit, ...); the "
                "timeline shows the pressure it acted on.",
            )
        )

    if (
        ev.constraint == ev.GLOBAL
        and ev.HasField("node_mem_info")
        and ev.node_mem_info.total_ram_bytes
    ):
        out += node_verdicts(ev)
    elif ev.constraint == ev.GLOBAL:
        out.append(
            verdict(
                "NODE_OUT_OF_MEMORY",
                CRITICAL,
                f"The whole node ran out of memory; the kernel chose {v.comm}[{v.pid}] "
                f"({mib(rss)} resident) as the largest eligible task.",
                "Set memory limits on workloads (requests = limits for critical ones) so one "
                "cannot take the node; reserve memory for the system (kubelet --system-reserved).",
            )
        )

    steady = _steady_at_limit_s(ev)
    if limit and steady >= 30:
        out.append(
            verdict(
                "LIMIT_BELOW_WORKING_SET",
                WARNING,
                f"{ev.timeline_cgroup or c.path} sat at 90 % or more of "
                f"its {mib(limit)} limit for the last {steady:.0f} s before the kill: its working "
                "set needs more than the limit.",
                f"Raise the memory limit above the steady working set (it held "
                f"{mib(max(p.usage_bytes for p in ev.timeline))}), or reduce what the program keeps.",
            )
        )

    out += _choice_verdicts(ev)

    non_anon = v.file_rss_bytes + v.shmem_rss_bytes
    # With a breakdown, where the cgroup's memory was says more than the
    # victim's own mix of pages.
    if rss and non_anon > v.anon_rss_bytes and not ev.HasField("breakdown"):
        part = (
            "shared memory (tmpfs, shm)" if v.shmem_rss_bytes > v.file_rss_bytes else "mapped files"
        )
        out.append(
            verdict(
                "NON_ANON_MAJOR",
                INFO,
                f"Most of the victim's resident memory was {part}: file {mib(v.file_rss_bytes)}, "
                f"shmem {mib(v.shmem_rss_bytes)}, against {mib(v.anon_rss_bytes)} anonymous.",
                "Shared memory and tmpfs count against the cgroup's limit and cannot be reclaimed "
                "without swap: move large tmpfs/emptyDir(Medium=Memory) data to disk or raise the limit.",
            )
        )
    # Every kill gets at least one verdict: what is known, when nothing explains it.
    return out or fallback_verdicts(ev)


def _choice_verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    """The victim was chosen for its oom_score_adj, not its memory: another
    candidate held more (kubernetes#111356)."""
    ch = ev.choice
    if not ch.adj_decided or not ch.candidates or not ch.candidates[0].victim:
        return []
    victim = ch.candidates[0]
    bigger = max(ch.candidates[1:], key=lambda c: c.memory_bytes)

    def named(c: event_pb2.OomChoice.Candidate) -> str:
        qos = f", {c.qos_class}" if c.qos_class else ""
        return f"{c.name}[{c.pid}] ({mib(c.memory_bytes)}, oom_score_adj {c.oom_score_adj}{qos})"

    qos = ev.pod.qos_class or victim.qos_class
    fix = (
        f"its pod is {qos}: give it memory requests (Burstable, or Guaranteed with requests = "
        "limits) to lower its oom_score_adj"
        if qos in ("BestEffort", "Burstable")
        else "lower its oom_score_adj"
    )
    return [
        verdict(
            "VICTIM_CHOSEN_BY_OOM_SCORE_ADJ",
            WARNING,
            f"The kernel killed {named(victim)} ahead of {named(bigger)}, which held more memory: "
            f"its oom_score_adj added {victim.adj_points} points to the "
            f"{victim.points - victim.adj_points} its memory earned (a point is a page; the adj "
            f"counts in thousandths of the {ch.total_pages} pages the OOM weighed), and that decided.",
            f"If {victim.name} should outlive {bigger.name}, {fix}; {bigger.name} used the memory, "
            "so look at its limit or its growth.",
        )
    ]


def _steady_at_limit_s(ev: event_pb2.OomEvent) -> float:
    """How long, ending at the kill, the timeline's cgroup stayed at 90 % or
    more of its limit."""
    steady = 0.0
    for p in reversed(ev.timeline):
        if not p.limit_bytes or p.usage_bytes < 0.9 * p.limit_bytes:
            break
        steady = -p.offset_ms / 1000
    return steady


def pressure_verdicts(rec: event_pb2.PressureRecord) -> list[event_pb2.Verdict]:
    """A pressure window's verdicts: a memory.high stall, the hang with no
    kill to show for it."""
    if not rec.high_throttled_ns:
        return []
    where = (
        f"{rec.pod.namespace}/{rec.pod.name}/{rec.container.name}" if rec.pod.name else rec.cgroup
    )
    held, stalled = rec.high_throttled_ns, rec.high_stall_ns
    share = min(1.0, stalled / held) if held else 0.0
    return [
        verdict(
            "MEMORY_HIGH_STALL",
            WARNING,
            f"{where} has been held above its memory.high ({mib(rec.memory_high_bytes)}) for "
            f"{seconds_text(held)} with no OOM kill: each allocation reclaimed and then slept, "
            f"and its tasks stalled {seconds_text(stalled)} of that ({share:.0%}, its memory "
            f"PSI), using up to {mib(rec.usage_max_bytes)}.",
            f"Raise memory.high above the working set (it peaked at {mib(rec.usage_max_bytes)}; "
            "Kubernetes MemoryQoS sets it from the limit and memoryThrottlingFactor) or make the "
            "working set smaller; a Go service can set GOMEMLIMIT below memory.high.",
        )
    ]
