"""Node.js's V8 heap limit: the flag that set it, or the default V8 derives.

Node reads NODE_OPTIONS first and its command line after, the last
--max-old-space-size (or --max_old_space_size) winning; the value is the
old generation's limit in MiB, and V8 adds its young generation (three
semi-spaces, 16 MiB each at most) to make heap_size_limit.

Without the flag Node hands V8 the memory it may use (libuv's constrained
memory, the cgroup's limit, when below the host's) and V8 sizes the heap
from it (Heap::HeapSizeFromPhysicalMemory). Measured with Node 20.20.2
(`v8.getHeapStatistics().heap_size_limit`) in v1 memory cgroups on a 23.5
GiB host, in MiB of limit -> heap limit: 64, 128, 256, 512 -> 259; 1024 ->
524; 2048 -> 1048; 4096 -> 2096; 8192 -> 2096; no limit -> 4144. That is:
old generation = half the memory, at least 256 MiB, at most 2048 MiB (4096
MiB where the memory is above 16 GiB); young = 3 * (old / 256 when old is
256 MiB or less, else old / 128), between 1 and 16 MiB each. With the flag:
the old generation is N MiB and the young one stays what the memory gives
it: N + 48 MiB on the host (N = 100, 200, 1000, 3000 measured), N + 3 MiB
in a 128 MiB cgroup (N = 1024 measured). The rule is V8's for
64-bit builds without pointer compression (Node's own), kept for every
version from 12 (when Node began to size the heap from memory); a record
says it was derived, not read. The integration tests check it against the
installed node's own heap_size_limit in the same cgroup: it held on this v1
host and in a cgroup v2 guest (Debian 12's 6.1, 128 MiB: 259 MiB)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from oomtrace.agent.runtimes.jvm.flags import split_options
from oomtrace.v1 import runtime_pb2

MIB = 1 << 20
GIB = 1 << 30
MAX_OPTIONS = 4096
# Node options whose value may be the next argument.
VALUED = frozenset(
    {
        "-e",
        "--eval",
        "-p",
        "--print",
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "-C",
        "--conditions",
        "--input-type",
        "--inspect-port",
        "--title",
        "--env-file",
    }
)
HEAP_FLAGS = ("max-old-space-size", "max-semi-space-size", "max-old-space-size-percentage")


@dataclass(frozen=True, slots=True)
class NodeFlag:
    name: str
    value: str
    source: runtime_pb2.FlagSource.ValueType
    text: str


def _options(argv: list[str]) -> list[str]:
    """node's own options, up to the script (or `--`)."""
    out: list[str] = []
    i = 1
    while i < len(argv) and i <= MAX_OPTIONS:
        a = argv[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        out.append(a)
        if a in VALUED:
            i += 1
        i += 1
    return out


def _heap_flags(
    words: list[str], source: runtime_pb2.FlagSource.ValueType, out: dict[str, NodeFlag]
) -> None:
    i = 0
    while i < len(words):
        w = words[i]
        body = w.lstrip("-").replace("_", "-")
        name, eq, value = body.partition("=")
        if w.startswith("--") and name in HEAP_FLAGS:
            if not eq and i + 1 < len(words):
                value = words[i + 1]
                i += 1
            out[name] = NodeFlag(name, value[:32], source, f"--{name}={value[:32]}")
        i += 1


def resolve(argv: list[str], env: dict[str, str]) -> dict[str, NodeFlag]:
    flags: dict[str, NodeFlag] = {}
    if "NODE_OPTIONS" in env:
        _heap_flags(split_options(env["NODE_OPTIONS"]), runtime_pb2.NODE_OPTIONS, flags)
    _heap_flags(_options(argv), runtime_pb2.COMMAND_LINE, flags)
    return flags


def young_bytes(memory: int, flags: dict[str, NodeFlag]) -> int:
    """V8's young generation: three semi-spaces, sized from the memory as
    the old generation's default is (a --max-old-space-size changes only the
    old generation), unless --max-semi-space-size says (MiB)."""
    f = flags.get("max-semi-space-size")
    semi = _mib_value(f.value) if f is not None else None
    if semi:
        return 3 * semi
    old = default_old_bytes(memory)
    ratio = 256 if old <= 256 * MIB else 128
    return 3 * min(max(old // ratio, 1 * MIB), 16 * MIB)


def default_old_bytes(memory: int) -> int:
    cap = 4096 * MIB if memory > 16 * GIB else 2048 * MIB
    return min(max(memory // 2 // MIB * MIB, 256 * MIB), cap)


@dataclass(frozen=True, slots=True)
class HeapLimit:
    limit_bytes: int  # heap_size_limit
    old_bytes: int
    source: runtime_pb2.FlagSource.ValueType
    text: str


def _mib_value(text: str) -> int | None:
    m = re.match(r"^\d{1,9}(?:\.\d+)?$", text.strip())
    return int(float(text) * MIB) if m else None


def heap_limit(flags: dict[str, NodeFlag], cgroup_limit: int | None, host_memory: int) -> HeapLimit:
    memory, what = host_memory, f"the host's {host_memory // MIB} MiB"
    if cgroup_limit and cgroup_limit < host_memory:
        memory, what = cgroup_limit, f"the cgroup's {cgroup_limit // MIB} MiB limit"
    young = young_bytes(memory, flags)
    f = flags.get("max-old-space-size")
    old = _mib_value(f.value) if f is not None else None
    if f is not None and old:
        return HeapLimit(old + young, old, f.source, f"{f.text} ({_SRC[f.source]})")
    pct = flags.get("max-old-space-size-percentage")
    p = _mib_value(pct.value) if pct is not None else None
    if pct is not None and p and 0 < p <= 100 * MIB:
        old = int(memory * (p / MIB) / 100) // MIB * MIB
        return HeapLimit(old + young, old, pct.source, f"{pct.text} of {what} ({_SRC[pct.source]})")
    old = default_old_bytes(memory)
    cap = default_old_bytes(1 << 50) if memory > 16 * GIB else 2048 * MIB
    return HeapLimit(
        old + young,
        old,
        runtime_pb2.DEFAULT,
        f"V8's default for {what}: half of it, within 256..{cap // MIB} MiB, "
        "plus the young generation",
    )


_SRC: dict[runtime_pb2.FlagSource.ValueType, str] = {
    runtime_pb2.NODE_OPTIONS: "NODE_OPTIONS",
    runtime_pb2.COMMAND_LINE: "command line",
    runtime_pb2.DEFAULT: "default",
}
