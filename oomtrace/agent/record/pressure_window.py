"""A pressure window of one cgroup becomes an oomtrace.v1.PressureRecord."""

from __future__ import annotations

from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.explain.verdicts import pressure_verdicts
from oomtrace.agent.host import boot_ns_to_datetime
from oomtrace.agent.pressure.sampler import WindowReport
from oomtrace.agent.record.parts import fill_workload, record_id
from oomtrace.v1 import event_pb2


def pressure_record(
    r: WindowReport, node: str, workload: Workload | None
) -> event_pb2.PressureRecord:
    w = r.window
    rec = event_pb2.PressureRecord(
        id=record_id("pressure", r.cgroup_id, r.start_ns),
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
        memory_high_bytes=w.high,
        high_throttled_ns=w.high_throttled_ns,
        high_stall_ns=w.high_stall_ns,
    )
    rec.start.FromDatetime(boot_ns_to_datetime(r.start_ns))
    rec.end.FromDatetime(boot_ns_to_datetime(r.end_ns))
    rec.counters.update(r.counters)
    if workload is not None:
        fill_workload(rec.container, rec.pod, workload, [])
    rec.verdicts.extend(pressure_verdicts(rec))
    return rec
