"""Hop three of the event model: an assembled kill becomes an
oomtrace.v1.OomEvent. Everything here is copied from the AssembledKill (and
the decoded kernel kill in it); what is not known is said in `missing`."""

from __future__ import annotations

from collections.abc import Sequence

from oomtrace import __version__
from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.explain.choice import fill_choice, host_limits
from oomtrace.agent.explain.verdicts import verdicts
from oomtrace.agent.host import boot_ns_to_datetime
from oomtrace.agent.kernel.decode import PAGE_SIZE
from oomtrace.agent.kernel.oom_caller import OomPath
from oomtrace.agent.record.assembler import AssembledKill, Timeline
from oomtrace.agent.record.parts import (
    CONSTRAINTS,
    figures_from_line,
    fill_where,
    fill_workload,
    kernel_report,
)
from oomtrace.agent.runtimes.go.record import fill_go
from oomtrace.agent.runtimes.jvm.record import fill_jvm
from oomtrace.agent.runtimes.nodejs.record import fill_node
from oomtrace.v1 import event_pb2

Process = event_pb2.Process


def build_event(a: AssembledKill, *, node: str, hooks: Sequence[str] = ()) -> event_pb2.OomEvent:
    kill = a.kill
    ev = event_pb2.OomEvent(
        id=a.id,
        incident_id=a.incident_id,
        node=node,
        boot_id=a.boot_id,
        killed_at_boot_ns=kill.boot_ns,
        source=event_pb2.OomEvent.LIVE,
        agent_version=__version__,
        kills=1,
    )
    ev.killed_at.FromDatetime(boot_ns_to_datetime(kill.boot_ns))
    missing = list(a.missing)

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
    elif a.process is not None:
        v.cmdline = a.process.cmdline
    else:
        missing.append("victim.cmdline: the victim exited before /proc could be read")
    if a.process is not None and a.process.exe:
        v.exe = a.process.exe
    elif kill.exe_name:
        # Only the file name is known in the kernel without a path walk.
        v.exe = kill.exe_name
        missing.append("victim.exe: only the file name is known (the process was gone)")
    v.figures_from = Process.FIGURES_FROM_UNSPECIFIED if kill.task_unknown else Process.BPF_SNAPSHOT
    if a.report is not None and a.report.victim_pid == v.pid:
        # What the kernel itself printed, in place of the BPF snapshot.
        figures_from_line(v, a.report.killed)
    if v.figures_from != Process.KERNEL_LINE:
        if kill.task_unknown:
            missing.append(
                "victim: this kernel's mark_victim gives only a pid, oom_kill_process could "
                "not be hooked and the kernel's report was not read; memory figures are unknown"
            )
        elif kill.no_mm:
            missing.append("victim memory: the victim had already released its address space")

    t = ev.trigger
    t.pid = kill.trigger_tgid
    t.tid = kill.trigger_tid
    t.comm = kill.trigger_comm
    t.cgroup_path = a.trigger_path
    if kill.user_signal:
        ev.source = event_pb2.OomEvent.USERSPACE
        ev.killer.pid = kill.trigger_tgid
        ev.killer.comm = kill.trigger_comm
        ev.killer.signal = _SIGNALS.get(kill.user_signal, str(kill.user_signal))
        ev.killer.said = kill.killer_said

    _fill_cgroup(ev, a, missing)
    if a.exit_ns is not None:
        ev.exit_ns = a.exit_ns
    if a.reap_ns is not None:
        ev.reap_ns = a.reap_ns
    if kill.oom_control is not None:
        oc = kill.oom_control
        ev.oom_control.total_bytes = oc.total_bytes
        ev.oom_control.chosen_points = oc.chosen_points
        ev.oom_control.order = oc.order
        ev.oom_control.gfp_mask = oc.gfp_mask
    if a.workload is not None:
        fill_workload(ev.container, ev.pod, a.workload, missing)
    if a.report is not None:
        ev.kernel_report.CopyFrom(kernel_report(a.report))
        fill_choice(ev, host_limits(), PAGE_SIZE)
    if a.timeline is not None:
        ev.timeline.extend(timeline(a.timeline, kill.boot_ns))
        ev.timeline_cgroup = a.timeline.cgroup_path
    fill_go(ev, a.process, kill.go, kill.boot_ns)
    if ev.HasField("go"):
        hp = a.heap_profiles
        for name, profile in (("heap_profile", hp.profile), ("heap_profile_before", hp.before)):
            if profile is None:
                continue
            getattr(ev.go, name).CopyFrom(profile)
            if not profile.pprof:
                missing.append(f"go.{name}.pprof: over the record's bound; top sites kept")
        if hp.missing:
            ev.go.heap_profile_missing = hp.missing
    if not kill.user_signal:
        fill_where(ev, a.report, a.memcg_files, a.tmpfs, a.top_cgroups)
    fill_jvm(ev, a.process, a.jvm_perf)
    fill_node(ev, a.process)
    ev.hooks.extend(hooks)
    ev.missing.extend(missing)
    ev.verdicts.extend(verdicts(ev))
    return ev


_SIGNALS = {9: "SIGKILL", 15: "SIGTERM"}


def _fill_cgroup(ev: event_pb2.OomEvent, a: AssembledKill, missing: list[str]) -> None:
    kill, c = a.kill, ev.cgroup
    c.version = a.cgroup_version
    memcgs = kill.memcgs
    if not memcgs:
        missing.append("cgroup: the victim's memory cgroup could not be read")
        ev.constraint = event_pb2.OomEvent.UNKNOWN
        return
    own = memcgs[0]
    c.path = a.paths[0]
    c.id = own.cgroup_id
    c.memory_usage_bytes = own.usage_bytes
    c.memory_limit_bytes = cgroups.effective_limit(memcgs) or 0
    c.memsw_usage_bytes = own.memsw_usage_bytes
    c.memsw_limit_bytes = cgroups.effective_memsw_limit(memcgs) or 0
    if kill.user_signal:
        # No limit was hit in the kernel: the killer acted on its own rule.
        ev.constraint = event_pb2.OomEvent.UNKNOWN
    elif kill.oom_control is not None:
        ev.constraint = CONSTRAINTS[f"CONSTRAINT_{kill.oom_control.constraint.name}"]
        ev.constraint_source = event_pb2.OomEvent.KERNEL
    else:
        ev.constraint = (
            event_pb2.OomEvent.MEMCG if a.oom_level is not None else event_pb2.OomEvent.GLOBAL
        )
        # The stack says memcg or global for sure; which memcg still comes
        # from the page counters.
        ev.constraint_source = (
            event_pb2.OomEvent.DERIVED
            if kill.oom_path is OomPath.UNKNOWN
            else event_pb2.OomEvent.KERNEL_STACK
        )
    c.oom_memcg_id = a.oom_memcg_id
    c.oom_memcg_path = a.oom_memcg_path
    if a.oom_level is not None:
        m = memcgs[a.oom_level]
        c.oom_memcg_limit_bytes = m.limit_bytes or 0
        c.oom_memcg_usage_bytes = m.usage_bytes
        c.oom_memcg_failcnt = m.failcnt


def timeline(tl: Timeline, kill_boot_ns: int) -> list[event_pb2.TimelinePoint]:
    """Cgroup points, with the victim's Go runtime where it was sampled in the
    same second (same boot_ns): live heap, and GCs per second since the
    previous sample. Seconds the sampler missed are points marked `missed`,
    in their place, so a gap reads as a gap."""
    go_at = {g.boot_ns: g for g in tl.go_points}
    rates: dict[int, float] = {}
    for prev, g in zip(tl.go_points, tl.go_points[1:], strict=False):
        if g.boot_ns > prev.boot_ns:
            rates[g.boot_ns] = (g.gc_count - prev.gc_count) / ((g.boot_ns - prev.boot_ns) / 1e9)
    out = []
    for p in tl.points:
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
    for m in tl.missed_ns:
        out.append(event_pb2.TimelinePoint(offset_ms=(m - kill_boot_ns) // 1_000_000, missed=True))
    out.sort(key=lambda tp: tp.offset_ms)
    return out
