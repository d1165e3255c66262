"""The record's `node_runtime` part: Node's version, its heap flags with
where each came from, and the V8 heap limit in force (the flag's, or the
default V8 derives from the cgroup's limit and the host's memory)."""

from __future__ import annotations

from oomtrace.agent.runtimes.jvm.record import host_memory_bytes
from oomtrace.agent.runtimes.nodejs.settings import heap_limit
from oomtrace.agent.runtimes.processes import ProcessInfo
from oomtrace.v1 import event_pb2, runtime_pb2


def fill_node(
    ev: event_pb2.OomEvent, process: ProcessInfo | None, host_memory: int | None = None
) -> None:
    if process is None or process.node is None:
        return
    node, n = process.node, ev.node_runtime
    n.version = node.version
    for f in node.flags.values():
        n.flags.add(name=f.name, value=f.value, source=f.source, text=f.text)
    hl = heap_limit(
        node.flags, ev.cgroup.memory_limit_bytes or None, host_memory or host_memory_bytes()
    )
    n.heap_limit_bytes = hl.limit_bytes
    n.old_space_limit_bytes = hl.old_bytes
    n.heap_limit_source = hl.source
    n.heap_limit_from = hl.text
    if hl.source == runtime_pb2.DEFAULT and not node.version.startswith("v20."):
        # The default was measured on Node 20 (nodejs/settings.py).
        n.heap_limit_from += f" (the rule measured on Node 20; this is {node.version or 'unknown'})"
