"""The JVM verdicts: whether the heap the JVM was allowed fit under the
limit, and whether the memory was in the heap at all, with the flag to
set and a value computed from what was seen at the kill.

What lies outside the Java heap is taken from the kill's figures: the
victim's anonymous resident memory above the heap's committed size (the
heap is anonymous memory, and not all of it is resident, so this is a
floor), and HotSpot's own counts of metaspace, class space, compiled code
and threads where hsperfdata was read."""

from __future__ import annotations

from oomtrace.agent.explain.wording import CRITICAL, INFO, MIB, WARNING, mib, verdict
from oomtrace.v1 import event_pb2, runtime_pb2

HEADROOM = 0.10  # of the limit, left free above heap + what was seen outside it
STACK_BYTES = 1 * MIB  # a Java thread's default stack (ThreadStackSize on x86_64)
FLOOR_OFF_HEAP = 48 * MIB  # a JVM's own memory (code, GC, runtime) when nothing was seen


def off_heap_bytes(j: runtime_pb2.JvmRuntime, anon_rss: int) -> tuple[int, str]:
    """(bytes outside the heap, how that was counted)."""
    p = j.perf
    if not j.HasField("perf"):
        return (
            FLOOR_OFF_HEAP,
            f"a JVM's usual {mib(FLOOR_OFF_HEAP)} outside the heap (no hsperfdata)",
        )
    counted = (
        p.metaspace.committed_bytes
        + p.compressed_class_space.committed_bytes
        + p.code_bytes
        + p.threads_live * STACK_BYTES
    )
    seen = max(anon_rss - p.heap_committed_bytes, 0)
    return max(seen, counted, 16 * MIB), (
        f"{mib(seen)} anonymous memory above the {mib(p.heap_committed_bytes)} committed heap"
    )


def fitting_heap(limit: int, off_heap: int) -> int:
    """A heap maximum that leaves off_heap and HEADROOM of the limit free,
    in whole MiB (0: none fits)."""
    fit = int(limit * (1 - HEADROOM)) - off_heap
    return max(fit // MIB, 0) * MIB


def _suggest(limit: int, off_heap: int, heap_used: int) -> str:
    fit = fitting_heap(limit, off_heap)
    need = int((max(heap_used, 16 * MIB) + off_heap) / (1 - HEADROOM)) // MIB * MIB + MIB
    if fit < 16 * MIB:
        return (
            f"No useful heap fits the {mib(limit)} limit beside the {mib(off_heap)} seen outside "
            f"it: raise the limit to at least {mib(need)}."
        )
    pct = fit * 100 // limit
    out = (
        f"Set -Xmx{fit // MIB}m (or -XX:MaxRAMPercentage={pct}), leaving {mib(limit - fit)} for "
        "metaspace, threads, code cache and direct memory"
    )
    if heap_used > fit:
        out += (
            f"; the heap held {mib(heap_used)} at the kill: if that much is live, the JVM will "
            f"then fail with OutOfMemoryError instead, and the limit must rise to {mib(need)}"
        )
    return out + "."


def jvm_verdicts(
    j: runtime_pb2.JvmRuntime, limit: int, anon_rss: int, rss: int
) -> list[event_pb2.Verdict]:
    out: list[event_pb2.Verdict] = []
    if j.perf_missing.startswith("hsperfdata is off"):
        out.append(
            verdict(
                "JVM_PERF_DATA_OFF",
                INFO,
                f"The JVM ran with {j.perf_missing.split(': ', 1)[-1]}: its heap figures at the kill "
                "cannot be read.",
                "Remove -XX:-UsePerfData to have the heap, metaspace and GC figures in the next record.",
            )
        )
    if not limit or not j.HasField("max_heap_bytes"):
        return out
    heap_max = j.max_heap_bytes
    p = j.perf
    heap_used = p.heap_used_bytes if j.HasField("perf") else 0
    off_heap, counted = off_heap_bytes(j, anon_rss)
    named = j.max_heap_from or "as resolved"
    if heap_max >= limit:
        out.append(
            verdict(
                "JVM_HEAP_MAX_ABOVE_LIMIT",
                CRITICAL,
                f"The JVM's maximum heap, {mib(heap_max)} ({named}), is at or above the cgroup's "
                f"{mib(limit)} limit: the heap may grow past the limit before the GC is made to "
                "collect, so the kernel kills the JVM instead of the JVM throwing OutOfMemoryError."
                + (f" At the kill the heap held {mib(heap_used)}." if heap_used else ""),
                _suggest(limit, off_heap, heap_used),
            )
        )
    elif heap_max + off_heap > limit * (1 - HEADROOM / 2):
        out.append(
            verdict(
                "JVM_NO_ROOM_OFF_HEAP",
                WARNING,
                f"The maximum heap, {mib(heap_max)} ({named}), leaves {mib(limit - heap_max)} of "
                f"the {mib(limit)} limit for everything else, and the JVM needed {mib(off_heap)} "
                f"outside the heap ({counted}).",
                _suggest(limit, off_heap, heap_used),
            )
        )
    if j.HasField("perf") and rss:
        outside = max(anon_rss - p.heap_committed_bytes, 0)
        if outside >= 32 * MIB and outside >= rss // 2:
            threads = p.threads_live * STACK_BYTES
            known = (
                p.metaspace.committed_bytes
                + p.compressed_class_space.committed_bytes
                + p.code_bytes
            )
            rest = max(outside - known - threads, 0)
            direct = (
                f"-XX:MaxDirectMemorySize is {mib(j.max_direct_memory_bytes)}"
                if j.HasField("max_direct_memory_bytes")
                else f"-XX:MaxDirectMemorySize is unset (so as large as the heap, {mib(heap_max)})"
            )
            cap = max(rest // 2 // MIB, 16) if rest else 64
            out.append(
                verdict(
                    "JVM_OFF_HEAP_GROWTH",
                    WARNING,
                    f"Most of the memory was outside the Java heap: {mib(outside)} anonymous above "
                    f"the {mib(p.heap_committed_bytes)} committed heap ({mib(p.heap_used_bytes)} "
                    f"used), of which metaspace and class space {mib(p.metaspace.committed_bytes + p.compressed_class_space.committed_bytes)}, "
                    f"compiled code {mib(p.code_bytes)}, {p.threads_live} threads (about "
                    f"{mib(threads)} of stacks): {mib(rest)} is not the JVM's own counted memory: "
                    f"direct buffers, native (JNI, malloc) or mapped memory. {direct}.",
                    f"Cap direct buffers with -XX:MaxDirectMemorySize={cap}m (they then fail with "
                    "OutOfMemoryError instead of the kernel killing), and run with "
                    "-XX:NativeMemoryTracking=summary to see the rest (jcmd PID VM.native_memory summary).",
                )
            )
    return out
