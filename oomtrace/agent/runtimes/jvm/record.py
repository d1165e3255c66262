"""The record's `jvm` part: what discovery read of the JDK and the flags
(each with where it came from), the maximum heap the JVM worked out from
them and the limit, and HotSpot's own figures at the kill (hsperfdata), or
why there are none."""

from __future__ import annotations

import os

from oomtrace.agent.delivery.privacy import redact
from oomtrace.agent.runtimes.jvm import flags as jflags
from oomtrace.agent.runtimes.jvm import perfdata
from oomtrace.agent.runtimes.jvm.discovery import JvmProcess
from oomtrace.agent.runtimes.jvm.state import PerfRead, perf_part
from oomtrace.agent.runtimes.processes import ProcessInfo
from oomtrace.v1 import event_pb2, runtime_pb2


def host_memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fill_jvm(
    ev: event_pb2.OomEvent,
    process: ProcessInfo | None,
    perf: PerfRead | None,
    host_memory: int | None = None,
) -> None:
    """Nothing for a process that is not a JVM."""
    if process is None or process.jvm is None:
        return
    fill_jvm_part(ev.jvm, process.jvm, perf, ev.cgroup.memory_limit_bytes or None, host_memory)


def fill_jvm_part(
    j: runtime_pb2.JvmRuntime,
    jvm: JvmProcess,
    perf: PerfRead | None,
    limit: int | None,
    host_memory: int | None = None,
) -> None:
    host = host_memory or host_memory_bytes()
    j.version = jvm.version
    j.vendor = jvm.vendor
    j.java_home = jvm.java_home
    j.detected_by = jvm.detected_by
    for f in jvm.flags.flags.values():
        j.flags.add(name=f.name, value=redact(f.value), source=f.source, text=redact(f.text))
    j.flags_missing = "; ".join(jvm.flags.missing)
    version = jflags.java_version(jvm.version)
    j.container_support = jvm.flags.enabled(
        "UseContainerSupport", version[0] >= 10 or version >= (8, 191) or version[0] == 0
    )
    j.use_perf_data = jvm.flags.enabled("UsePerfData", True)
    mh = jflags.max_heap(jvm.flags, limit, host, version)
    if mh is not None:
        j.max_heap_bytes = mh.bytes
        j.max_heap_from = mh.text
    direct = jvm.flags.value("MaxDirectMemorySize")
    size = jflags.parse_size(direct) if direct is not None else None
    if size is not None:
        j.max_direct_memory_bytes = size
    if perf is None:
        j.perf_missing = "hsperfdata was not read"
    elif perf.missing:
        j.perf_missing = perf.missing
    else:
        try:
            j.perf.CopyFrom(perf_part(perfdata.parse(perf.data), perf.read_at))
        except perfdata.PerfDataError as exc:
            j.perf_missing = f"hsperfdata unreadable: {exc}"
        else:
            if j.perf.heap_max_bytes:
                # What the JVM itself had, over what the flags predict.
                j.max_heap_bytes = j.perf.heap_max_bytes
                j.max_heap_from = (
                    mh.text + "; " if mh is not None else ""
                ) + "as hsperfdata has it"
