"""The verdict of a runtime's own OOM death (a RUNTIME record): the heap
limit it reached, against the cgroup's, and the flag to change."""

from __future__ import annotations

from oomtrace.agent.explain.wording import CRITICAL, mib, verdict
from oomtrace.v1 import event_pb2

_CODES = {
    "jvm": "JVM_OUT_OF_MEMORY_ERROR",
    "node": "NODE_HEAP_LIMIT_REACHED",
    "go": "GO_RUNTIME_OUT_OF_MEMORY",
}


def death_verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    if not ev.HasField("runtime_death"):
        return []
    d, limit = ev.runtime_death, ev.cgroup.memory_limit_bytes
    heap = (
        f"its heap limit of {mib(d.heap_limit_bytes)}"
        if d.HasField("heap_limit_bytes")
        else "its heap limit"
    )
    used = f", with {mib(d.heap_used_bytes)} in use" if d.HasField("heap_used_bytes") else ""
    cg = f" (the cgroup's limit: {mib(limit)})" if 0 < limit < 1 << 60 else ""
    shown = f"exit {d.exit_code}" + (f", signal {d.signal}" if d.signal else "")
    said = f'It said: "{d.message}"'
    if d.runtime == "jvm":
        fix = (
            "The heap was full of live objects: raise -Xmx (or MaxRAMPercentage) within the "
            "container's limit, or find what holds them (-XX:+HeapDumpOnOutOfMemoryError "
            "-XX:HeapDumpPath=...)."
        )
    elif d.runtime == "node":
        fix = (
            "Raise --max-old-space-size (within about 75 % of the container's limit), or find "
            "what the program keeps (node --heapsnapshot-near-heap-limit=1)."
        )
    else:
        fix = "The Go runtime could not get memory from the OS: raise the limit, or set GOMEMLIMIT below it."
    return [
        verdict(
            _CODES.get(d.runtime, "RUNTIME_OUT_OF_MEMORY"),
            CRITICAL,
            f"The {d.runtime} runtime ended itself on reaching {heap}{used}{cg}: not a kernel "
            f"OOM kill, so the container shows only an error ({shown}). {said}",
            fix,
        )
    ]
