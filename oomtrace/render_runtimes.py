"""`show`'s lines for a JVM or Node.js victim, and a runtime's own OOM
death: beside the Go ones in render.py, and cleaned the same way (a record
is data from another machine)."""

from __future__ import annotations

from oomtrace import render
from oomtrace.v1 import event_pb2, runtime_pb2

_SOURCES: dict[int, str] = {
    runtime_pb2.COMMAND_LINE: "command line",
    runtime_pb2.JAVA_TOOL_OPTIONS: "JAVA_TOOL_OPTIONS",
    runtime_pb2.JDK_JAVA_OPTIONS: "JDK_JAVA_OPTIONS",
    runtime_pb2.UNDERSCORE_JAVA_OPTIONS: "_JAVA_OPTIONS",
    runtime_pb2.NODE_OPTIONS: "NODE_OPTIONS",
    runtime_pb2.DEFAULT: "default",
}


def _src(source: int) -> str:
    return _SOURCES.get(source, "?")


def runtime_lines(ev: event_pb2.OomEvent) -> list[str]:
    out: list[str] = []
    if ev.HasField("runtime_death"):
        d = ev.runtime_death
        out.append(
            f"  died of     its own memory limit ({render.clean(d.runtime)}): exit {d.exit_code}"
            + (f", signal {d.signal}" if d.signal else "")
        )
        if d.message:
            out.append(f"  it said     {render.clean(d.message)[:300]}")
    if ev.HasField("jvm"):
        out += jvm_lines(ev.jvm)
    if ev.HasField("node_runtime"):
        out += node_lines(ev.node_runtime)
    return out


def jvm_lines(j: runtime_pb2.JvmRuntime) -> list[str]:
    size, clean = render.size, render.clean
    out = [
        f"  jvm         {clean(j.vendor) or '?'} {clean(j.version) or '?'} at {clean(j.java_home)}"
        f" ({clean(j.detected_by)})"
    ]
    if j.flags:
        out.append(
            "  flags       " + ", ".join(f"{clean(f.text)} ({_src(f.source)})" for f in j.flags)
        )
    if j.HasField("max_heap_bytes"):
        out.append(f"  max heap    {size(j.max_heap_bytes)}: {clean(j.max_heap_from)}")
    if not j.HasField("perf"):
        out.append(f"  heap        unknown: {clean(j.perf_missing)}")
        return out
    p = j.perf
    gens = "; ".join(
        f"{clean(g.name)} {size(g.used_bytes)}/{size(g.committed_bytes)}/{size(g.max_bytes)}"
        for g in p.generations
    )
    out.append(
        f"  heap        used {size(p.heap_used_bytes)}, committed {size(p.heap_committed_bytes)}, "
        f"max {size(p.heap_max_bytes)} ({clean(p.gc_policy)}; used/committed/max: {gens})"
    )
    code = f", compiled code {size(p.code_bytes)}" if p.HasField("code_bytes") else ""
    out.append(
        f"  off heap    metaspace {size(p.metaspace.used_bytes)}/{size(p.metaspace.committed_bytes)}, "
        f"class space {size(p.compressed_class_space.used_bytes)}/"
        f"{size(p.compressed_class_space.committed_bytes)}{code}, {p.threads_live} threads"
    )
    gcs = ", ".join(f"{clean(c.name)} {c.count} ({c.time_ns / 1e6:.0f} ms)" for c in p.collectors)
    out.append(f"  gc          {gcs or 'none'}; last cause {clean(p.last_gc_cause) or '-'}")
    return out


def node_lines(n: runtime_pb2.NodeRuntime) -> list[str]:
    size, clean = render.size, render.clean
    out = [f"  node        {clean(n.version) or '?'}"]
    if n.flags:
        out.append(
            "  flags       " + ", ".join(f"{clean(f.text)} ({_src(f.source)})" for f in n.flags)
        )
    out.append(
        f"  heap limit  {size(n.heap_limit_bytes)} (old space {size(n.old_space_limit_bytes)}): "
        f"{clean(n.heap_limit_from)}"
    )
    return out
