"""Records of kills the BPF side did not see: known from the kernel's
printed report (`source: KMSG`: it happened while no agent ran, or the BPF
side lost it), or only from a kill counter (`source: COUNTER`: its log lines
rolled out first). They say what the log says, no more."""

from __future__ import annotations

from dataclasses import dataclass

from oomtrace import __version__
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.explain.choice import fill_choice, host_limits
from oomtrace.agent.explain.verdicts import verdicts
from oomtrace.agent.host import boot_ns_to_datetime
from oomtrace.agent.kernel.decode import PAGE_SIZE
from oomtrace.agent.kernel_log.reports import ParsedReport
from oomtrace.agent.record.parts import (
    CONSTRAINTS,
    KIB,
    figures_from_line,
    fill_where,
    fill_workload,
    kernel_report,
    record_id,
)
from oomtrace.v1 import event_pb2


@dataclass(frozen=True, slots=True)
class LogContext:
    node: str
    boot_id: str
    cgroup_version: int
    workload: Workload | None = None  # found by the cgroup path the log names


def event_from_report(r: ParsedReport, ctx: LogContext) -> event_pb2.OomEvent:
    ev = event_pb2.OomEvent(
        id=record_id("kmsg", ctx.boot_id, r.last_seq, r.victim_pid),
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
    figures_from_line(v, r.killed)
    row = next((t for t in r.tasks if t.pid == r.victim_pid), None)
    if row is not None:
        v.swap_bytes = row.values.get("swapents", 0) * PAGE_SIZE
    ev.trigger.comm = r.invoker_comm
    ev.trigger.tid = r.invoker_pid
    ev.constraint = CONSTRAINTS.get(r.constraint, event_pb2.OomEvent.UNKNOWN)
    if r.constraint:
        ev.constraint_source = event_pb2.OomEvent.KERNEL_REPORT
    c = ev.cgroup
    c.version = ctx.cgroup_version
    c.path = r.constraint_fields.get("task_memcg", "")
    c.oom_memcg_path = r.constraint_fields.get("oom_memcg", "")
    if "memory" in r.counters:
        usage, limit, failcnt = r.counters["memory"]
        c.oom_memcg_usage_bytes, c.oom_memcg_limit_bytes = usage * KIB, limit * KIB
        c.oom_memcg_failcnt = failcnt
    ev.kernel_report.CopyFrom(kernel_report(r))
    fill_choice(ev, host_limits(), PAGE_SIZE)
    missing = [
        "killed_at: from the kernel log's clock",
        "victim.cmdline, victim.exe, victim.tid, trigger.pid: not in the kernel's log",
    ]
    if r.ratelimited:
        missing.append("cgroup, constraint, trigger: the kernel ratelimited this report")
    if ctx.workload is not None:
        fill_workload(ev.container, ev.pod, ctx.workload, missing)
    fill_where(ev, r)
    ev.missing.extend(missing)
    ev.verdicts.extend(verdicts(ev))
    return ev


def counter_event(
    n: int, ctx: LogContext, seq: int, cgroup_path: str = "", *, noticed_ns: int
) -> event_pb2.OomEvent:
    """Kills the kernel counted whose log lines had rolled out before any
    agent read them: one record standing for all n, of one cgroup (from its
    own oom_kill counter) or of the node (/proc/vmstat, cgroup unknown)."""
    ev = event_pb2.OomEvent(
        id=record_id("counter", ctx.boot_id, seq, cgroup_path, n),
        node=ctx.node,
        boot_id=ctx.boot_id,
        source=event_pb2.OomEvent.COUNTER,
        agent_version=__version__,
        kills=n,
    )
    ev.incident_id = ev.id
    ev.killed_at.FromDatetime(boot_ns_to_datetime(noticed_ns))
    ev.cgroup.version = ctx.cgroup_version
    ev.cgroup.path = cgroup_path
    where = f"{cgroup_path}'s oom_kill counter" if cgroup_path else "/proc/vmstat"
    missing = [
        f"everything but the count: {n} kill(s) counted in {where} whose kernel log "
        "lines were gone before an agent could read them; killed_at is when this was noticed"
    ]
    if ctx.workload is not None:
        fill_workload(ev.container, ev.pod, ctx.workload, missing)
    ev.missing.extend(missing)
    ev.verdicts.extend(verdicts(ev))
    return ev
