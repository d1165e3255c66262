"""Hop two of the event model: a decoded kernel kill plus what user space
knows (process details, cgroup paths, timings) becomes an oomtrace.v1.OomEvent.
When a part cannot be resolved the record is still built and says why in
`missing`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from oomtrace import __version__, records
from oomtrace.agent import cgroups
from oomtrace.agent.decode import PAGE_SIZE, KernelKill, OcConstraint
from oomtrace.agent.go.record import fill_go
from oomtrace.agent.go.sampling import GoPoint
from oomtrace.agent.host import boot_ns_to_datetime
from oomtrace.agent.kernel_text import OomPath
from oomtrace.agent.kmsg import ParsedReport
from oomtrace.agent.pressure import Point, WindowReport
from oomtrace.agent.procinfo import ProcessInfo
from oomtrace.agent.verdicts import verdicts
from oomtrace.agent.workloads import Workload
from oomtrace.v1 import event_pb2

_CONSTRAINTS = {
    OcConstraint.NONE: event_pb2.OomEvent.GLOBAL,
    OcConstraint.CPUSET: event_pb2.OomEvent.CPUSET,
    OcConstraint.MEMORY_POLICY: event_pb2.OomEvent.MEMORY_POLICY,
    OcConstraint.MEMCG: event_pb2.OomEvent.MEMCG,
}


@dataclass(frozen=True, slots=True)
class KillContext:
    """What the agent adds to the kernel's view of one kill."""

    node: str
    boot_id: str
    hierarchy: cgroups.MemoryHierarchy
    process: ProcessInfo | None  # the victim, read from /proc or the exec cache
    trigger_cgroup_path: str = ""
    exit_ns: int | None = None
    reap_ns: int | None = None
    hooks: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    workload: Workload | None = None
    incident_id: str = ""
    report: ParsedReport | None = None
    timeline: tuple[Point, ...] = ()
    timeline_cgroup: str = ""
    go_timeline: tuple[GoPoint, ...] = ()
    timeline_missed: tuple[int, ...] = ()  # boot ns of seconds with no point


def event_id(boot_id: str, boot_ns: int, victim_tgid: int) -> str:
    """Stable for one kill, whoever builds the record and however often."""
    digest = hashlib.sha256(f"{boot_id}:{boot_ns}:{victim_tgid}".encode()).hexdigest()
    return digest[:32]


def build_event(kill: KernelKill, ctx: KillContext) -> event_pb2.OomEvent:
    ev = event_pb2.OomEvent(
        id=event_id(ctx.boot_id, kill.boot_ns, kill.victim_tgid or kill.victim_tid),
        node=ctx.node,
        boot_id=ctx.boot_id,
        killed_at_boot_ns=kill.boot_ns,
        source=event_pb2.OomEvent.LIVE,
        agent_version=__version__,
        kills=1,
    )
    ev.killed_at.FromDatetime(boot_ns_to_datetime(kill.boot_ns))
    missing = list(ctx.missing)

    v = ev.victim
    v.pid = kill.victim_tgid
    v.tid = kill.victim_tid
    v.comm = kill.victim_comm
    v.uid = kill.victim_uid
    v.threads = kill.threads
    v.total_vm_bytes = kill.total_vm_bytes
    v.anon_rss_bytes = kill.anon_rss_bytes
    v.file_rss_bytes = kill.file_rss_bytes
    v.shmem_rss_bytes = kill.shmem_rss_bytes
    v.swap_bytes = kill.swap_bytes
    v.pgtables_bytes = kill.pgtables_bytes
    v.oom_score_adj = kill.oom_score_adj
    if kill.cmdline is not None:
        v.cmdline = kill.cmdline
    elif ctx.process is not None:
        v.cmdline = ctx.process.cmdline
    else:
        missing.append("victim.cmdline: the victim exited before /proc could be read")
    if ctx.process is not None and ctx.process.exe:
        v.exe = ctx.process.exe
    elif kill.exe_name:
        # Only the file name is known in the kernel without a path walk.
        v.exe = kill.exe_name
        missing.append("victim.exe: only the file name is known (the process was gone)")
    if kill.task_unknown:
        missing.append(
            "victim: this kernel's mark_victim gives only a pid and oom_kill_process "
            "could not be hooked; memory figures are unknown"
        )
    elif kill.no_mm:
        missing.append("victim memory: the victim had already released its address space")

    t = ev.trigger
    t.pid = kill.trigger_tgid
    t.tid = kill.trigger_tid
    t.comm = kill.trigger_comm
    t.cgroup_path = ctx.trigger_cgroup_path

    _fill_cgroup(ev, kill, ctx, missing)

    if ctx.exit_ns is not None:
        ev.exit_ns = ctx.exit_ns
    if ctx.reap_ns is not None:
        ev.reap_ns = ctx.reap_ns
    if kill.oom_control is not None:
        oc = kill.oom_control
        ev.oom_control.totalpages = oc.totalpages
        ev.oom_control.chosen_points = oc.chosen_points
        ev.oom_control.order = oc.order
        ev.oom_control.gfp_mask = oc.gfp_mask
    if ctx.workload is not None:
        _fill_workload(ev, ctx.workload, missing)
    if ctx.report is not None:
        ev.kernel_report.CopyFrom(kernel_report(ctx.report))
    if ctx.timeline:
        ev.timeline.extend(
            timeline(list(ctx.timeline), kill.boot_ns, list(ctx.go_timeline), ctx.timeline_missed)
        )
        ev.timeline_cgroup = ctx.timeline_cgroup
    fill_go(ev, ctx.process, kill.go, kill.boot_ns)
    ev.incident_id = ctx.incident_id or ev.id
    ev.hooks.extend(ctx.hooks)
    ev.missing.extend(missing)
    ev.verdicts.extend(verdicts(ev))
    return ev


def _fill_workload(ev: event_pb2.OomEvent, w: Workload, missing: list[str]) -> None:
    ident, info = w.identity, w.container
    if not ident.is_container:
        return
    c, p = ev.container, ev.pod
    c.id = ident.container_id
    c.runtime = info.runtime if info else ident.runtime
    p.uid = ident.pod_uid or (info.pod_uid if info else "")
    p.qos_class = ident.qos_class
    if info is None:
        missing.append("container: " + "; ".join(w.reasons or ("no runtime state found",)))
        if p.uid:
            missing.append("pod.name: the container's runtime state was not found")
        return
    c.name = info.name
    c.image = info.image
    c.memory_limit_bytes = info.memory_limit_bytes
    c.labels.update(info.labels)
    p.name = info.pod_name
    p.namespace = info.pod_namespace
    p.workload = records.workload_of(info.pod_name, info.labels)
    if not c.image:
        missing.append(f"container.image: not in {info.source}")
    if p.uid and not p.name:
        missing.append(f"pod.name: no Kubernetes annotations in {info.source}")


def _fill_cgroup(
    ev: event_pb2.OomEvent, kill: KernelKill, ctx: KillContext, missing: list[str]
) -> None:
    c = ev.cgroup
    c.version = ctx.hierarchy.version
    memcgs = kill.memcgs
    if not memcgs:
        missing.append("cgroup: the victim's memory cgroup could not be read")
        ev.constraint = event_pb2.OomEvent.UNKNOWN
        return
    last_path = None
    if kill.depth_cut:
        last_path = ctx.hierarchy.find_by_id(memcgs[-1].cgroup_id)
        if last_path is None:
            missing.append("cgroup.path: nested deeper than 8 levels; shown relative")
    paths = cgroups.level_paths(memcgs, kill.depth_cut, last_path)
    own = memcgs[0]
    c.path = paths[0]
    c.id = own.cgroup_id
    c.memory_usage_bytes = own.usage_bytes
    c.memory_limit_bytes = cgroups.effective_limit(memcgs) or 0
    c.memsw_usage_bytes = own.memsw_usage_bytes
    c.memsw_limit_bytes = cgroups.effective_memsw_limit(memcgs) or 0

    oom_index = cgroups.oom_level(kill)
    if kill.oom_control is not None:
        ev.constraint = _CONSTRAINTS[kill.oom_control.constraint]
        ev.constraint_source = "kernel"
        oom_id = kill.oom_control.memcg_id
        if oom_id and oom_index is None:
            c.oom_memcg_id = oom_id
            c.oom_memcg_path = ctx.hierarchy.find_by_id(oom_id) or ""
    else:
        ev.constraint = (
            event_pb2.OomEvent.MEMCG if oom_index is not None else event_pb2.OomEvent.GLOBAL
        )
        # The stack says memcg or global for sure; which memcg still comes
        # from the page counters.
        ev.constraint_source = "derived" if kill.oom_path is OomPath.UNKNOWN else "kernel stack"
    if oom_index is not None:
        m = memcgs[oom_index]
        c.oom_memcg_path = paths[oom_index]
        c.oom_memcg_id = m.cgroup_id
        c.oom_memcg_limit_bytes = m.limit_bytes or 0
        c.oom_memcg_usage_bytes = m.usage_bytes
        c.oom_memcg_failcnt = m.failcnt


# -- records from the kernel's log ---------------------------------------------------

_REPORT_CONSTRAINTS = {
    "CONSTRAINT_NONE": event_pb2.OomEvent.GLOBAL,
    "CONSTRAINT_CPUSET": event_pb2.OomEvent.CPUSET,
    "CONSTRAINT_MEMORY_POLICY": event_pb2.OomEvent.MEMORY_POLICY,
    "CONSTRAINT_MEMCG": event_pb2.OomEvent.MEMCG,
}
KIB = 1024


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
        kr.memcg_usage_bytes, kr.memcg_limit_bytes, kr.memcg_failcnt = (
            usage * KIB,
            limit * KIB,
            failcnt,
        )
    if "memory+swap" in r.counters:
        usage, limit, _ = r.counters["memory+swap"]
        kr.memsw_usage_bytes, kr.memsw_limit_bytes = usage * KIB, limit * KIB
    kr.memcg_stats.update(r.stats)
    for t in r.tasks:
        v = t.values
        pages = {
            k: v.get(f"{k}_pages", 0)
            for k in ("total_vm", "rss", "rss_anon", "rss_file", "rss_shmem")
        }
        kr.tasks.add(
            total_vm_bytes=pages["total_vm"] * PAGE_SIZE,
            rss_bytes=pages["rss"] * PAGE_SIZE,
            rss_anon_bytes=pages["rss_anon"] * PAGE_SIZE,
            rss_file_bytes=pages["rss_file"] * PAGE_SIZE,
            rss_shmem_bytes=pages["rss_shmem"] * PAGE_SIZE,
            swap_bytes=v.get("swapents", 0) * PAGE_SIZE,
            pid=t.pid,
            uid=v.get("uid", 0),
            tgid=v.get("tgid", t.pid),
            total_vm_pages=v.get("total_vm_pages", 0),
            rss_pages=v.get("rss_pages", 0),
            rss_anon_pages=v.get("rss_anon_pages", 0),
            rss_file_pages=v.get("rss_file_pages", 0),
            rss_shmem_pages=v.get("rss_shmem_pages", 0),
            pgtables_bytes=v.get("pgtables_bytes", 0),
            swapents=v.get("swapents", 0),
            oom_score_adj=v.get("oom_score_adj", 0),
            name=t.name,
        )
    return kr


def event_from_report(r: ParsedReport, ctx: KillContext) -> event_pb2.OomEvent:
    """A kill known only from the kernel's log (it happened while no agent
    ran, or the BPF side lost it): what the report says, no more."""
    digest = hashlib.sha256(f"kmsg:{ctx.boot_id}:{r.last_seq}:{r.victim_pid}".encode()).hexdigest()
    ev = event_pb2.OomEvent(
        id=digest[:32],
        node=ctx.node,
        boot_id=ctx.boot_id,
        killed_at_boot_ns=r.ts_us * 1000,
        source=event_pb2.OomEvent.KMSG,
        agent_version=__version__,
        kills=1,
    )
    ev.incident_id = ev.id
    ev.killed_at.FromDatetime(boot_ns_to_datetime(r.ts_us * 1000))
    v = ev.victim
    v.pid = r.victim_pid
    v.comm = r.victim_comm
    k = r.killed
    v.total_vm_bytes = k.get("total_vm", 0) * KIB
    v.anon_rss_bytes = k.get("anon", 0) * KIB
    v.file_rss_bytes = k.get("file", 0) * KIB
    v.shmem_rss_bytes = k.get("shmem", 0) * KIB
    v.pgtables_bytes = k.get("pgtables", 0) * KIB
    v.uid = k.get("uid", 0)
    v.oom_score_adj = k.get("adj", 0)
    row = next((t for t in r.tasks if t.pid == r.victim_pid), None)
    if row is not None:
        v.swap_bytes = row.values.get("swapents", 0) * PAGE_SIZE
    ev.trigger.comm = r.invoker_comm
    ev.trigger.tid = r.invoker_pid
    ev.constraint = _REPORT_CONSTRAINTS.get(r.constraint, event_pb2.OomEvent.UNKNOWN)
    ev.constraint_source = "kernel" if r.constraint else ""
    c = ev.cgroup
    c.version = ctx.hierarchy.version
    c.path = r.constraint_fields.get("task_memcg", "")
    c.oom_memcg_path = r.constraint_fields.get("oom_memcg", "")
    if "memory" in r.counters:
        usage, limit, failcnt = r.counters["memory"]
        c.oom_memcg_usage_bytes, c.oom_memcg_limit_bytes, c.oom_memcg_failcnt = (
            usage * KIB,
            limit * KIB,
            failcnt,
        )
    ev.kernel_report.CopyFrom(kernel_report(r))
    missing = [
        "killed_at: from the kernel log's clock",
        "victim.cmdline, victim.exe, victim.tid, trigger.pid: not in the kernel's log",
    ]
    if r.ratelimited:
        missing.append("cgroup, constraint, trigger: the kernel ratelimited this report")
    if ctx.workload is not None:
        _fill_workload(ev, ctx.workload, missing)
    ev.missing.extend([*ctx.missing, *missing])
    ev.verdicts.extend(verdicts(ev))
    return ev


def counter_event(
    n: int, ctx: KillContext, seq: int, cgroup_path: str = "", *, noticed_ns: int
) -> event_pb2.OomEvent:
    """Kills the kernel counted whose log lines had rolled out before any
    agent read them: one record standing for all n, of one cgroup (from its
    own oom_kill counter) or of the node (/proc/vmstat, cgroup unknown)."""
    digest = hashlib.sha256(f"counter:{ctx.boot_id}:{seq}:{cgroup_path}:{n}".encode()).hexdigest()
    ev = event_pb2.OomEvent(
        id=digest[:32],
        node=ctx.node,
        boot_id=ctx.boot_id,
        source=event_pb2.OomEvent.COUNTER,
        agent_version=__version__,
        kills=n,
    )
    ev.incident_id = ev.id
    ev.killed_at.FromDatetime(boot_ns_to_datetime(noticed_ns))
    ev.cgroup.version = ctx.hierarchy.version
    ev.cgroup.path = cgroup_path
    where = f"{cgroup_path}'s oom_kill counter" if cgroup_path else "/proc/vmstat"
    ev.missing.append(
        f"everything but the count: {n} kill(s) counted in {where} whose kernel log "
        "lines were gone before an agent could read them; killed_at is when this was noticed"
    )
    missing: list[str] = []
    if ctx.workload is not None:
        _fill_workload(ev, ctx.workload, missing)
    ev.missing.extend(missing)
    return ev


# -- pressure ---------------------------------------------------------------------------


def timeline(
    points: list[Point],
    kill_boot_ns: int,
    go_points: Sequence[GoPoint] = (),
    missed_ns: Sequence[int] = (),
) -> list[event_pb2.TimelinePoint]:
    """Cgroup points, with the victim's Go runtime where it was sampled in the
    same second (same boot_ns): live heap, and GCs per second since the
    previous sample. Seconds the sampler missed are points marked `missed`,
    in their place, so a gap reads as a gap."""
    go_at = {g.boot_ns: g for g in go_points}
    prev: GoPoint | None = None
    rates: dict[int, float] = {}
    for g in go_points:
        if prev is not None and g.boot_ns > prev.boot_ns:
            rates[g.boot_ns] = (g.gc_count - prev.gc_count) / ((g.boot_ns - prev.boot_ns) / 1e9)
        prev = g
    out = []
    for p in points:
        tp = event_pb2.TimelinePoint(
            offset_ms=(p.boot_ns - kill_boot_ns) // 1_000_000,
            usage_bytes=p.usage_bytes,
            limit_bytes=p.limit_bytes,
            reclaims=p.reclaims,
            reclaim_stall_ns=p.reclaim_stall_ns,
            psi_some_avg10=p.psi_some_avg10,
            psi_full_avg10=p.psi_full_avg10,
        )
        same_second = go_at.get(p.boot_ns)
        if same_second is not None:
            tp.go_heap_live_bytes = same_second.heap_live_bytes
            tp.go_gc_per_second = rates.get(p.boot_ns, 0.0)
        out.append(tp)
    for m in missed_ns:
        out.append(event_pb2.TimelinePoint(offset_ms=(m - kill_boot_ns) // 1_000_000, missed=True))
    out.sort(key=lambda tp: tp.offset_ms)
    return out


def pressure_record(
    r: WindowReport, node: str, workload: Workload | None
) -> event_pb2.PressureRecord:
    w = r.window
    rec = event_pb2.PressureRecord(
        id=r.id,
        node=node,
        cgroup=r.path,
        cgroup_id=r.cgroup_id,
        cgroup_version=r.version,
        usage_max_bytes=w.usage_max,
        limit_bytes=w.limit,
        reclaims=w.reclaims,
        reclaim_stall_ns=w.stall_ns,
        reclaim_max_stall_ns=w.max_stall_ns,
        psi_some_avg10_max=w.psi_some_max,
        psi_full_avg10_max=w.psi_full_max,
        psi_source=r.psi_source,
        pressure_level_events=w.level_events,
        psi_trigger_events=w.trigger_events,
        reasons=list(r.reasons),
    )
    rec.start.FromDatetime(boot_ns_to_datetime(r.start_ns))
    rec.end.FromDatetime(boot_ns_to_datetime(r.end_ns))
    rec.counters.update(r.counters)
    if workload is not None and workload.identity.is_container:
        rec.container.id = workload.identity.container_id
        rec.container.runtime = workload.identity.runtime
        rec.pod.uid = workload.identity.pod_uid
        rec.pod.qos_class = workload.identity.qos_class
        if workload.container is not None:
            info = workload.container
            rec.container.runtime = info.runtime
            rec.container.name, rec.container.image = info.name, info.image
            rec.pod.name, rec.pod.namespace = info.pod_name, info.pod_namespace
            rec.pod.workload = records.workload_of(info.pod_name, info.labels)
    return rec
