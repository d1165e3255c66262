"""Where the OOM killer was called from, read off the trigger's kernel stack.

Without a hook on oom_kill_process there is no struct oom_control to say
whether a memory cgroup's limit or the whole node ran out. The page counters
at mark_victim are no answer under load: the kernel checks the memcg's margin,
then prints its report (slow on a serial console) before mark_victim, and a
previous victim's last pages can be uncharged meanwhile, so the memcg is seen
megabytes below the limit it hit. The stack is exact: the memcg charge path
calls out_of_memory through mem_cgroup_out_of_memory, the page allocator (and
sysrq-f) call it directly.

The functions' ranges come from /proc/kallsyms, which is sorted by address for
the kernel's own text: a function ends where the next symbol starts. GCC may
split a function into a `.cold` part; both parts count.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")

OOM_KILLER = "out_of_memory"
MEMCG_OOM = "mem_cgroup_out_of_memory"
# Callers that stand in for mem_cgroup_out_of_memory should it be inlined away:
# the charge path (try_charge before 5.17) and v2's memory.max write.
MEMCG_OOM_CALLERS = ("mem_cgroup_oom", "try_charge_memcg", "try_charge", "memory_max_write")
_MEMCG_PATH = frozenset((MEMCG_OOM, *MEMCG_OOM_CALLERS))


class OomPath(enum.Enum):
    """Who called the OOM killer for a kill."""

    UNKNOWN = "unknown"  # no stack, or out_of_memory not on it
    MEMCG = "memcg"  # a memory cgroup's charge failed at its limit
    GLOBAL = "global"  # the page allocator (or sysrq-f): the node ran out


@dataclass(frozen=True, slots=True)
class TextRange:
    name: str
    start: int
    end: int  # exclusive


class KernelText:
    """The kernel text ranges of the functions that place an OOM kill."""

    def __init__(self, ranges: tuple[TextRange, ...], reason: str = "") -> None:
        self.ranges = ranges
        # Why the OOM path cannot be read here ("" when it can).
        self.reason = reason or (
            "" if any(r.name == OOM_KILLER for r in ranges) else f"{OOM_KILLER} not in kallsyms"
        )

    @classmethod
    def load(cls, path: Path = KALLSYMS) -> KernelText:
        try:
            text = path.read_text()
        except OSError as exc:
            return cls((), f"{path} unreadable: {exc.strerror}")
        ranges = []
        for name in (OOM_KILLER, MEMCG_OOM, *MEMCG_OOM_CALLERS):
            for symbol in (name, f"{name}.cold"):
                found = _find(text, symbol)
                if found is None:
                    continue
                start, next_line = found
                if start == 0:
                    return cls((), f"{path} hides addresses (kernel.kptr_restrict, or not root)")
                if (end := _next_address(text, next_line, start)) is not None:
                    ranges.append(TextRange(name, start, end))
        return cls(tuple(ranges))

    def function_at(self, ip: int) -> str | None:
        for r in self.ranges:
            if r.start <= ip < r.end:
                return r.name
        return None

    def oom_path(self, stack: tuple[int, ...]) -> OomPath:
        """stack: return addresses, innermost first. The frame just outside
        out_of_memory's own is its caller, and that decides."""
        names = [self.function_at(ip) for ip in stack]
        if OOM_KILLER not in names:
            return OomPath.UNKNOWN
        i = names.index(OOM_KILLER)
        while i < len(names) and names[i] == OOM_KILLER:
            i += 1
        if i == len(names):
            return OomPath.UNKNOWN  # the stack was cut before the caller
        return OomPath.MEMCG if names[i] in _MEMCG_PATH else OomPath.GLOBAL


def _find(text: str, symbol: str) -> tuple[int, int] | None:
    """The address of kernel text symbol `symbol` and where the next line
    starts, or None. Module symbols end in "\t[module]" and never match."""
    pos = text.find(f" {symbol}\n")
    while pos >= 0:
        line_start = text.rfind("\n", 0, pos) + 1
        addr, kind = text[line_start:pos].split(" ")
        if kind in ("t", "T"):
            return int(addr, 16), pos + len(symbol) + 2
        pos = text.find(f" {symbol}\n", pos + 1)
    return None


def _next_address(text: str, pos: int, start: int) -> int | None:
    """The first address above `start` on the lines from `pos`: where the
    function ends (aliases share its start)."""
    for _ in range(64):
        end = text.find("\n", pos)
        if end < 0:
            return None
        addr = int(text[pos : text.index(" ", pos)], 16)
        if addr > start:
            return addr
        if addr < start:
            return None  # not sorted here: no safe end
        pos = end + 1
    return None
