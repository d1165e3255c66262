"""How verdicts are worded, for the node's verdicts (verdicts.py) and the Go
ones (runtimes/go/verdicts.py) alike: sizes in MiB, the Verdict message, and the
GOMEMLIMIT to suggest."""

from __future__ import annotations

from oomtrace.v1 import event_pb2

MIB = 1 << 20
INFO, WARNING, CRITICAL = (
    event_pb2.Verdict.INFO,
    event_pb2.Verdict.WARNING,
    event_pb2.Verdict.CRITICAL,
)


def mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB"


def suggested_gomemlimit(limit: int) -> str:
    """About 90 % of the limit: room for non-heap memory (stacks, runtime)."""
    return f"GOMEMLIMIT={int(limit * 0.9) // MIB}MiB"


def verdict(
    code: str, severity: event_pb2.Verdict.Severity.ValueType, explanation: str, suggestion: str
) -> event_pb2.Verdict:
    return event_pb2.Verdict(
        code=code, severity=severity, explanation=explanation, suggestion=suggestion
    )
