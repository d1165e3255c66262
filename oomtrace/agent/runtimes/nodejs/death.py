"""Node's own heap-limit death: V8 prints "FATAL ERROR: ... JavaScript heap
out of memory" and Node aborts (SIGABRT; Kubernetes shows exit 134). The
GC trace V8 prints before it gives the heap's last size ("Mark-Compact
251.9 (259.4) -> 251.5 (259.6) MB": used, then reserved, in MiB)."""

from __future__ import annotations

import re

SIGABRT = 6
_FATAL = re.compile(r"FATAL ERROR:[^\n]{0,200}JavaScript heap out of memory")
_GC = re.compile(r"-> (\d{1,7}(?:\.\d)?) \((\d{1,7}(?:\.\d)?)\) MB")
MIB = 1 << 20


def oom_words(status: int, signal: int, stderr_tail: str) -> str | None:
    if not (signal == SIGABRT or (signal == 0 and status == 134)):
        return None
    found = _FATAL.findall(stderr_tail)
    return found[-1].strip() if found else None


def heap_used_bytes(stderr_tail: str) -> int | None:
    found = _GC.findall(stderr_tail)
    return int(float(found[-1][0]) * MIB) if found else None
