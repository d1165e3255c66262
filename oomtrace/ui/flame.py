"""A Go heap profile (the record's pprof file) as a tree of stacks for a flame
graph: decoded from profile.proto, in-use bytes summed per call path, root
first. A profile is hostile input (the victim's memory was read to make it):
a file that does not decode gives None and the page says so."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from oomtrace.v1 import pprof_pb2

# A decoded profile is at most this big uncompressed: the agent caps the
# file at 384 KiB gzipped; this bounds a forged one.
MAX_PROFILE_BYTES = 16 << 20
MAX_DEPTH = 128


@dataclass(slots=True)
class Frame:
    """One function on a call path, and the bytes held under it."""

    name: str
    value: int = 0
    children: dict[str, Frame] = field(default_factory=dict)

    def add(self, stack: list[str], value: int) -> None:
        self.value += value
        node = self
        for name in stack[:MAX_DEPTH]:
            node = node.children.setdefault(name, Frame(name))
            node.value += value

    def depth(self) -> int:
        return 1 + max((c.depth() for c in self.children.values()), default=0)

    def find(self, name: str) -> int:
        """Bytes under every frame of this name (self and below counted once
        per path)."""
        if self.name == name:
            return self.value
        return sum(c.find(name) for c in self.children.values())


def stacks(pprof: bytes, sample_type: str = "inuse_space") -> dict[tuple[str, ...], int] | None:
    """{root-first stack of function names: value of sample_type}, or None
    when the file is not a profile with that sample type."""
    try:
        d = zlib.decompressobj(wbits=31)  # gzip, bounded
        raw = d.decompress(pprof, MAX_PROFILE_BYTES) if pprof[:2] == b"\x1f\x8b" else pprof
        if pprof[:2] == b"\x1f\x8b" and d.unconsumed_tail:
            return None
        p = pprof_pb2.Profile.FromString(raw)
    except (DecodeError, zlib.error, gzip.BadGzipFile, EOFError):
        return None
    strings = p.string_table

    def s(i: int) -> str:
        return strings[i] if 0 <= i < len(strings) else "?"

    index = next((i for i, t in enumerate(p.sample_type) if s(t.type) == sample_type), None)
    if index is None:
        return None
    functions = {f.id: s(f.name) for f in p.function}
    locations: dict[int, list[str]] = {}
    for loc in p.location:
        # A location's lines are innermost first (inlined frames): reversed,
        # so the caller comes first as in the rest of a root-first stack.
        names = [functions.get(line.function_id, "?") for line in loc.line] or [
            f"0x{loc.address:x}"
        ]
        locations[loc.id] = names[::-1]
    out: dict[tuple[str, ...], int] = {}
    for sample in p.sample:
        if index >= len(sample.value) or sample.value[index] <= 0:
            continue
        path: list[str] = []
        for loc_id in reversed(sample.location_id):  # innermost first in the file
            path += locations.get(loc_id, ["?"])
        key = tuple(path)
        out[key] = out.get(key, 0) + sample.value[index]
    return out


def tree(by_stack: dict[tuple[str, ...], int], root: str = "all") -> Frame:
    top = Frame(root)
    for stack, value in by_stack.items():
        if value > 0:
            top.add(list(stack), value)
    return top


def growth(
    at_kill: dict[tuple[str, ...], int], before: dict[tuple[str, ...], int]
) -> dict[tuple[str, ...], int]:
    """What each stack gained between the two profiles (stacks that shrank
    are left out: a flame graph draws positive widths)."""
    out = {}
    for stack, value in at_kill.items():
        gained = value - before.get(stack, 0)
        if gained > 0:
            out[stack] = gained
    return out
