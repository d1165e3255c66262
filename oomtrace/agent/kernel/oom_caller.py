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
        """One pass over the file a line at a time: it is megabytes, and all
        that is kept is a few ranges."""
        names = {
            f" {symbol}\n".encode(): name
            for name in (OOM_KILLER, MEMCG_OOM, *MEMCG_OOM_CALLERS)
            for symbol in (name, f"{name}.cold")
        }
        endings = tuple(names)
        ranges: list[TextRange] = []
        unended: list[tuple[str, int]] = []  # found, waiting for the next address
        try:
            with path.open("rb") as f:
                for line in f:
                    if unended:
                        addr = int(line[: line.index(b" ")], 16)
                        # A higher address ends the function; an equal one is
                        # an alias; a lower one means no sorted order to trust.
                        ranges += (TextRange(n, s, addr) for n, s in unended if addr > s)
                        unended = [(n, s) for n, s in unended if addr == s]
                    if line.endswith(endings):
                        addr_text, kind, symbol = line.split(b" ", 2)
                        if kind not in (b"t", b"T"):
                            continue
                        if not (start := int(addr_text, 16)):
                            return cls(
                                (), f"{path} hides addresses (kernel.kptr_restrict, or not root)"
                            )
                        unended.append((names[b" " + symbol], start))
        except (OSError, ValueError) as exc:
            return cls((), f"{path} unreadable: {exc}")
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
