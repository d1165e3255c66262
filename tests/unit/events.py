"""OomEvent records for collector tests, of realistic size and shape."""

from __future__ import annotations

import itertools

from oomtrace.v1 import event_pb2

_seq = itertools.count(1)
BASE_NS = 1_790_000_000 * 10**9  # 2026-09


def make_event(
    *,
    killed_at_ns: int | None = None,
    node: str = "node-a",
    namespace: str = "",
    pod: str = "",
    container: str = "",
    image: str = "",
    comm: str = "python3",
    cgroup: str = "/kubepods/burstable/pod1/abc",
    rss_mib: int = 60,
    event_id: str | None = None,
) -> event_pb2.OomEvent:
    n = next(_seq)
    ev = event_pb2.OomEvent(
        id=event_id or f"{n:032x}",
        node=node,
        boot_id="6e0b7d1c-6b0f-4c1e-9d52-8a0f0b5d2c11",
        killed_at_boot_ns=10**12 + n,
        constraint=event_pb2.OomEvent.MEMCG,
        constraint_source=event_pb2.OomEvent.DERIVED,
        agent_version="0.1.0",
    )
    ev.killed_at.FromNanoseconds(killed_at_ns if killed_at_ns is not None else BASE_NS + n * 10**9)
    v = ev.victim
    v.pid, v.tid, v.comm, v.uid, v.threads = 1000 + n, 1000 + n, comm, 0, 4
    v.cmdline = "/usr/local/bin/server --config /etc/server/config.yaml --listen :8080 --workers 4"
    v.exe = "/usr/local/bin/server"
    v.anon_rss_bytes = rss_mib << 20
    v.file_rss_bytes = 5 << 20
    v.total_vm_bytes = 1 << 30
    v.pgtables_bytes = 256 << 10
    ev.trigger.pid, ev.trigger.tid, ev.trigger.comm = v.pid, v.tid, comm
    c = ev.cgroup
    c.path, c.id, c.version = cgroup, 5000 + n, 2
    c.memory_limit_bytes = c.oom_memcg_limit_bytes = 64 << 20
    c.memory_usage_bytes = c.oom_memcg_usage_bytes = 64 << 20
    c.oom_memcg_path = cgroup
    ev.pod.namespace, ev.pod.name = namespace, pod
    ev.container.name, ev.container.image = container, image
    ev.hooks.extend(["raw_tracepoint/mark_victim", "raw_tracepoint/sched_process_exit"])
    return ev
