"""Why this victim: the kernel's choice worked out again from the task table
of its own report.

The OOM killer scores every candidate task with oom_badness()
(mm/oom_kill.c, the same from 4.19 to 6.18) and kills the highest:

    points = rss + swap entries + page-table bytes / PAGE_SIZE      (pages)
    points += oom_score_adj * (totalpages / 1000)                    (integer division first)

A task with oom_score_adj -1000 is never chosen. totalpages is what the
constraint allows: for a memcg OOM the memcg's limit, plus the swap it may
use (mem_cgroup_get_max: v1 the memory+swap limit less the memory limit,
v2 swap.max, each at most the swap there is); for a global OOM all RAM plus
all swap. Where the kprobe on oom_kill_process ran, the kernel's own
totalpages and the chosen task's points are on the record, and are used
(and checked against).

Kubernetes sets each container's oom_score_adj from its pod's QoS class:
-997 Guaranteed, 1000 BestEffort, 2..999 Burstable (1000 less the request's
share of the node's memory), so a small BestEffort sidecar can outscore
the Burstable process that used the memory (kubernetes#111356). The record
says so when the adj, not the memory, decided."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from oomtrace.v1 import event_pb2

OOM_SCORE_ADJ_MIN = -1000
MAX_CANDIDATES = 10  # in the record, highest first (the victim always among them)


def badness(
    rss: int, swap: int, pgtables_bytes: int, adj: int, total_pages: int, page_size: int
) -> int | None:
    """oom_badness(): a candidate's points (rss and swap in pages); None for
    a task the OOM killer never chooses (oom_score_adj -1000)."""
    if adj == OOM_SCORE_ADJ_MIN:
        return None
    return rss + swap + pgtables_bytes // page_size + adj * (total_pages // 1000)


def qos_class(adj: int) -> str:
    """The Kubernetes QoS class an oom_score_adj comes from, as the kubelet
    sets it ("" for a value it never sets)."""
    if adj == -997:
        return "Guaranteed"
    if adj == 1000:
        return "BestEffort"
    if 2 <= adj <= 999:
        return "Burstable"
    return ""


@dataclass(frozen=True, slots=True)
class Limits:
    """What totalpages comes from, when the kernel's own is not known."""

    mem_total_bytes: int  # MemTotal
    swap_total_bytes: int  # SwapTotal


def total_pages(
    kr: event_pb2.KernelReport,
    memcg_oom: bool,
    limits: Limits,
    page_size: int,
    swap_max_bytes: int | None = None,
) -> tuple[int, str]:
    """(totalpages, where it came from), as oom_kill.c works it out.
    swap_max_bytes: a v2 memcg's memory.swap.max, when read (None: not known,
    taken as no limit)."""
    swap = limits.swap_total_bytes
    if not memcg_oom:
        return (limits.mem_total_bytes + swap) // page_size, "RAM and swap"
    limit = kr.memcg_limit_bytes
    if kr.memsw_limit_bytes:  # v1: the memory+swap limit less the memory limit
        swap = min(max(kr.memsw_limit_bytes - limit, 0), swap)
    elif swap_max_bytes is not None:
        swap = min(swap_max_bytes, swap)
    how = "the memcg's limit" + (" and the swap it may use" if swap else "")
    return (limit + swap) // page_size, how


def choice(
    kr: event_pb2.KernelReport,
    victim_pid: int,
    *,
    memcg_oom: bool,
    limits: Limits,
    page_size: int,
    kernel_total_pages: int | None = None,
    kernel_chosen_points: int | None = None,
    swap_max_bytes: int | None = None,
) -> event_pb2.OomChoice | None:
    """The candidates in the report's task table ranked as the kernel ranks
    them; None when the report has no table (vm.oom_dump_tasks=0)."""
    if not kr.tasks:
        return None
    if kernel_total_pages:
        total, how = kernel_total_pages, "the kernel's own (oom_control)"
    else:
        total, how = total_pages(kr, memcg_oom, limits, page_size, swap_max_bytes)
    out = event_pb2.OomChoice(total_pages=total, total_pages_from=how, tasks=len(kr.tasks))
    ranked = []
    for i, t in enumerate(kr.tasks):
        rss = t.rss_bytes // page_size
        swap = t.swap_bytes // page_size
        points = badness(rss, swap, t.pgtables_bytes, t.oom_score_adj, total, page_size)
        if points is None:
            continue
        memory = (rss + swap) * page_size + t.pgtables_bytes
        # Ties go to the task listed last: the kernel keeps a later equal score.
        ranked.append((points, i, t, memory))
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)

    # The table names a process by the thread that holds its mm, with its tgid.
    def is_victim(t: event_pb2.ReportTask) -> bool:
        return victim_pid in (t.tgid, t.pid)

    victim_at = next((n for n, r in enumerate(ranked) if is_victim(r[2])), None)
    if victim_at is None:
        return None  # the victim is not in the table: nothing to explain
    out.victim_rank = victim_at + 1
    if kernel_chosen_points is not None:
        out.kernel_chosen_points = kernel_chosen_points
    for n, (points, _i, t, memory) in enumerate(ranked):
        if n >= MAX_CANDIDATES and n != victim_at:
            continue
        out.candidates.add(
            pid=t.pid,
            name=t.name,
            memory_bytes=memory,
            oom_score_adj=t.oom_score_adj,
            points=points,
            adj_points=t.oom_score_adj * (total // 1000),
            qos_class=qos_class(t.oom_score_adj),
            victim=is_victim(t),
        )
    # Chosen first, while another candidate held more memory: the adj decided.
    victim_memory = ranked[victim_at][3]
    out.adj_decided = victim_at == 0 and any(r[3] > victim_memory for r in ranked[1:])
    return out


def host_limits(meminfo: Path = Path("/proc/meminfo")) -> Limits:
    """MemTotal and SwapTotal: a global OOM's totalpages, and the swap any
    memcg may use at most."""
    values = {}
    try:
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "SwapTotal"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return Limits(values.get("MemTotal", 0), values.get("SwapTotal", 0))


def fill_choice(ev: event_pb2.OomEvent, limits: Limits, page_size: int) -> None:
    """The record's `choice`, from its kernel report and, where the kprobe
    on oom_kill_process ran, the kernel's own totalpages and points."""
    if not ev.HasField("kernel_report"):
        return
    oc = ev.oom_control if ev.HasField("oom_control") else None
    c = choice(
        ev.kernel_report,
        ev.victim.pid,
        memcg_oom=ev.constraint == event_pb2.OomEvent.MEMCG,
        limits=limits,
        page_size=page_size,
        kernel_total_pages=oc.total_bytes // page_size if oc and oc.total_bytes else None,
        kernel_chosen_points=oc.chosen_points if oc else None,
    )
    if c is not None:
        ev.choice.CopyFrom(c)
