"""What every record builder shares."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from oomtrace import records
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.kernel.decode import PAGE_SIZE
from oomtrace.agent.kernel_log.reports import ParsedReport
from oomtrace.agent.record import breakdown
from oomtrace.agent.record.allocation import allocation
from oomtrace.agent.record.node_memory import node_mem_info
from oomtrace.v1 import event_pb2

KIB = 1024  # the kernel's report prints kB

# The kernel's enum oom_constraint, by the name its report prints (decode's
# OcConstraint names are the same without the prefix).
CONSTRAINTS = {
    "CONSTRAINT_NONE": event_pb2.OomEvent.GLOBAL,
    "CONSTRAINT_CPUSET": event_pb2.OomEvent.CPUSET,
    "CONSTRAINT_MEMORY_POLICY": event_pb2.OomEvent.MEMORY_POLICY,
    "CONSTRAINT_MEMCG": event_pb2.OomEvent.MEMCG,
}


def record_id(*parts: object) -> str:
    """Every record's id: stable for the same parts, whoever builds the record
    and however often. Live kills: boot id, boot ns, victim tgid; the others
    start with what they are ("kmsg", "counter", "pressure")."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:32]


def fill_workload(
    container: event_pb2.Container, pod: event_pb2.Pod, w: Workload, missing: list[str]
) -> None:
    """The container and pod of a cgroup, and what of them is not known."""
    ident, info = w.identity, w.container
    if not ident.is_container:
        return
    container.id = ident.container_id
    container.runtime = info.runtime if info else ident.runtime
    pod.uid = ident.pod_uid or (info.pod_uid if info else "")
    pod.qos_class = ident.qos_class
    if info is None:
        missing.append("container: " + "; ".join(w.reasons or ("no runtime state found",)))
        if pod.uid:
            missing.append("pod.name: the container's runtime state was not found")
        return
    container.name = info.name
    container.image = info.image
    container.memory_limit_bytes = info.memory_limit_bytes
    container.labels.update(info.labels)
    pod.name = info.pod_name
    pod.namespace = info.pod_namespace
    pod.workload = records.workload_of(info.pod_name, info.labels)
    if not container.image:
        missing.append(f"container.image: not in {info.source}")
    if pod.uid and not pod.name:
        missing.append(f"pod.name: no Kubernetes annotations in {info.source}")


def kernel_report(r: ParsedReport) -> event_pb2.KernelReport:
    """The parsed report as the wire carries it, with its raw lines."""
    kr = event_pb2.KernelReport(
        first_seq=r.first_seq,
        last_seq=r.last_seq,
        ratelimited=r.ratelimited,
        invoker_comm=r.invoker_comm,
        invoker_pid=r.invoker_pid,
        gfp_mask=r.gfp_mask,
        order=r.order,
        invoker_oom_score_adj=r.invoker_oom_score_adj,
        stats_cgroup=r.stats_cgroup,
        constraint=r.constraint,
        oom_memcg=r.constraint_fields.get("oom_memcg", ""),
        task_memcg=r.constraint_fields.get("task_memcg", ""),
        raw="\n".join(r.lines),
    )
    if "memory" in r.counters:
        usage, limit, failcnt = r.counters["memory"]
        kr.memcg_usage_bytes, kr.memcg_limit_bytes = usage * KIB, limit * KIB
        kr.memcg_failcnt = failcnt
    if "memory+swap" in r.counters:
        usage, limit, _ = r.counters["memory+swap"]
        kr.memsw_usage_bytes, kr.memsw_limit_bytes = usage * KIB, limit * KIB
    if "kmem" in r.counters:
        kr.kmem_usage_bytes = r.counters["kmem"][0] * KIB
    if "swap" in r.counters:
        kr.swap_usage_bytes = r.counters["swap"][0] * KIB
    kr.call_trace.extend(r.call_trace)
    kr.memcg_stats.update(r.stats)
    for t in r.tasks:
        v = t.values
        kr.tasks.add(
            pid=t.pid,
            uid=v.get("uid", 0),
            tgid=v.get("tgid", t.pid),
            total_vm_bytes=v.get("total_vm_pages", 0) * PAGE_SIZE,
            rss_bytes=v.get("rss_pages", 0) * PAGE_SIZE,
            rss_anon_bytes=v.get("rss_anon_pages", 0) * PAGE_SIZE,
            rss_file_bytes=v.get("rss_file_pages", 0) * PAGE_SIZE,
            rss_shmem_bytes=v.get("rss_shmem_pages", 0) * PAGE_SIZE,
            swap_bytes=v.get("swapents", 0) * PAGE_SIZE,
            pgtables_bytes=v.get("pgtables_bytes", 0),
            oom_score_adj=v.get("oom_score_adj", 0),
            name=t.name,
        )
    return kr


def fill_where(
    ev: event_pb2.OomEvent,
    report: ParsedReport | None,
    files: breakdown.MemcgFiles | None = None,
    tmpfs: Sequence[event_pb2.TmpfsMount] = (),
    top_cgroups: Sequence[event_pb2.NodeMemInfo.CgroupUsage] = (),
) -> None:
    """Where the memory was and what was being allocated, once the record
    holds its victim, cgroup and kernel report (breakdown.py, allocation.py);
    for a node-wide OOM, the report's Mem-Info and the top cgroups."""
    if report is not None and report.mem_info is not None:
        ev.node_mem_info.CopyFrom(node_mem_info(report.mem_info, PAGE_SIZE))
        ev.node_mem_info.top_cgroups.extend(top_cgroups)
    elif top_cgroups:
        ev.node_mem_info.top_cgroups.extend(top_cgroups)
    b = breakdown.compute(ev, files, tmpfs)
    if b is not None:
        ev.breakdown.CopyFrom(b)
    a = allocation(ev)
    if a is not None:
        ev.allocation.CopyFrom(a)


def figures_from_line(v: event_pb2.Process, killed: dict[str, int]) -> None:
    """The victim's figures as the kernel's "Killed process" line printed
    them (kmsg.ParsedReport.killed: kB, and uid and adj where the kernel
    prints them); nothing when the line had none."""
    if "anon" not in killed:
        return
    v.total_vm_bytes = killed["total_vm"] * KIB
    v.anon_rss_bytes = killed["anon"] * KIB
    v.file_rss_bytes = killed["file"] * KIB
    v.shmem_rss_bytes = killed["shmem"] * KIB
    if "pgtables" in killed:
        v.pgtables_bytes = killed["pgtables"] * KIB
    if "uid" in killed:
        v.uid = killed["uid"]
    if "adj" in killed:
        v.oom_score_adj = killed["adj"]
    v.figures_from = event_pb2.Process.KERNEL_LINE


def fit_to_wire(ev: event_pb2.OomEvent, limit: int = records.MAX_RECORD_BYTES) -> list[str]:
    """Keeps a record under the collector's message limit by dropping its
    least important parts first (a global OOM's task table on a busy node can
    exceed it, and a record over it is refused whole, with every record
    behind it): the report's raw text, the timeline, the task table but the
    victim's row, the memcg stats, the command line's tail. Says what went in
    `missing`; returns what was dropped."""
    dropped: list[str] = []

    def over() -> bool:
        return ev.ByteSize() > limit

    steps: tuple[tuple[str, Callable[[], None]], ...] = (
        ("go.heap_profile_before.pprof", lambda: _drop_pprof(ev, "heap_profile_before")),
        ("go.heap_profile.pprof", lambda: _drop_pprof(ev, "heap_profile")),
        ("kernel_report.raw", lambda: ev.kernel_report.ClearField("raw")),
        ("timeline", lambda: ev.ClearField("timeline")),
        ("kernel_report.tasks", lambda: _keep_victims_row(ev)),
        ("kernel_report.memcg_stats", lambda: ev.kernel_report.ClearField("memcg_stats")),
        ("victim.cmdline", lambda: setattr(ev.victim, "cmdline", ev.victim.cmdline[:4096])),
        ("container.labels", lambda: ev.container.ClearField("labels")),
    )
    for name, drop in steps:
        if not over():
            break
        before = ev.ByteSize()
        drop()
        freed = before - ev.ByteSize()
        if freed:  # a part the record did not have is not reported as cut
            dropped.append(name)
            ev.missing.append(
                f"{name}: cut to fit the collector's {limit // 1024} KiB record limit "
                f"({freed} bytes)"
            )
    return dropped


def _drop_pprof(ev: event_pb2.OomEvent, part: str) -> None:
    # Touching ev.go of a record without one would add an empty part.
    if ev.HasField("go") and ev.go.HasField(part):  # type: ignore[arg-type]
        getattr(ev.go, part).ClearField("pprof")


def _keep_victims_row(ev: event_pb2.OomEvent) -> None:
    rows = [t for t in ev.kernel_report.tasks if t.pid == ev.victim.pid]
    del ev.kernel_report.tasks[:]
    ev.kernel_report.tasks.extend(rows)
