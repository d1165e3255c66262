"""The Node.js verdicts: V8's heap limit against the cgroup's, with a
--max-old-space-size that fits."""

from __future__ import annotations

from oomtrace.agent.explain.wording import MIB, WARNING, mib, verdict
from oomtrace.v1 import event_pb2, runtime_pb2

SHARE = 0.75  # of the limit for the old space, as Node's docs advise; the rest: young space, native


def fitting_old_space_mib(limit: int) -> int:
    return max(int(limit * SHARE) // MIB // 8 * 8, 16)


def node_verdicts(
    n: runtime_pb2.NodeRuntime, limit: int, anon_rss: int, file_rss: int
) -> list[event_pb2.Verdict]:
    if not limit or not n.heap_limit_bytes or n.heap_limit_bytes < limit:
        return []
    fit = fitting_old_space_mib(limit)
    split = (
        f" At the kill it held {mib(anon_rss)} anonymous and {mib(file_rss)} file-backed memory."
    )
    suggestion = (
        f"Set --max-old-space-size={fit} (in NODE_OPTIONS or on the command line): about 75 % of "
        f"the {mib(limit)} limit, so V8 collects, and fails with its own heap-limit error, "
        "before the kernel kills."
    )
    if n.heap_limit_source == runtime_pb2.DEFAULT:
        return [
            verdict(
                "NODE_HEAP_LIMIT_UNSET",
                WARNING,
                f"No --max-old-space-size was set, and the heap limit V8 derived, "
                f"{mib(n.heap_limit_bytes)} ({n.heap_limit_from}), is at or above the cgroup's "
                f"{mib(limit)} limit: V8 lets the heap grow past the limit before it collects "
                f"hard.{split}",
                suggestion,
            )
        ]
    return [
        verdict(
            "NODE_HEAP_LIMIT_ABOVE_CGROUP",
            WARNING,
            f"V8's heap limit, {mib(n.heap_limit_bytes)} ({n.heap_limit_from}), is at or above "
            f"the cgroup's {mib(limit)} limit: the heap may grow past the limit before V8 "
            f"collects hard.{split}",
            suggestion,
        )
    ]
