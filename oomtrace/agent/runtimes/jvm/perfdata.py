"""HotSpot's performance data (hsperfdata): the file a JVM maps at
/tmp/hsperfdata_<user>/<pid> and updates as it runs, which outlives a
SIGKILL. Parsed here from bytes the victim wrote, so every offset and length
is checked against the buffer, the number of entries and the total size are
bounded, and a bad entry is skipped and counted, never a crash.

The layout is HotSpot's (perfMemory.hpp): a 32-byte prologue (magic
0xcafec0c0, always big-endian; byte order; version; accessible; used;
overflow; a timestamp; the first entry's offset; the entry count), then
entries, each a 20-byte header (entry length, name offset, vector length,
type, flags, units, variability, data offset) with its name and data inside
the entry. Scalars are 8-byte longs ('J'); strings are byte vectors ('B')."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = 0xCAFEC0C0
PROLOGUE = struct.Struct(">IBBBBiiqii")
ENTRY = struct.Struct("iiibbbbi")  # byte order set per file
MAX_FILE_BYTES = 4 << 20  # HotSpot's default is 32 KiB (PerfDataMemorySize)
MAX_ENTRIES = 16384
MAX_NAME = 256
MAX_STRING = 1024


class PerfDataError(Exception):
    """The buffer is not hsperfdata oomtrace can read; the message says why."""


@dataclass(frozen=True, slots=True)
class PerfData:
    """The entries of one buffer: longs and strings by name."""

    longs: dict[str, int] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    entries: int = 0
    bad_entries: int = 0
    size: int = 0


def parse(data: bytes) -> PerfData:
    """Raises PerfDataError for a buffer that is not hsperfdata at all; a
    malformed entry inside a good buffer is skipped and counted."""
    if len(data) > MAX_FILE_BYTES:
        raise PerfDataError(f"{len(data)} bytes: larger than hsperfdata ever is")
    if len(data) < PROLOGUE.size:
        raise PerfDataError(f"{len(data)} bytes: shorter than the prologue")
    magic, order, major, _minor, accessible, *_ = PROLOGUE.unpack_from(data, 0)
    if magic != MAGIC:
        raise PerfDataError(f"magic {magic:#x}, not 0xcafec0c0")
    if order not in (0, 1):
        raise PerfDataError(f"byte order {order}")
    if major != 2:
        raise PerfDataError(f"version {major}: only version 2 is known")
    e = "<" if order == 1 else ">"
    _m, _o, _ma, _mi, _acc, used, _ovf, _ts, first, count = struct.unpack_from(
        e + "IBBBBiiqii", data, 0
    )
    if not accessible:
        raise PerfDataError("the JVM had not yet made its perf data accessible")
    end = min(len(data), used) if used > 0 else len(data)
    if not PROLOGUE.size <= first <= end:
        raise PerfDataError(f"first entry at {first}, outside the {end} bytes used")
    entry = struct.Struct(e + ENTRY.format)
    longs: dict[str, int] = {}
    strings: dict[str, str] = {}
    bad = 0
    off = first
    seen = 0
    for _ in range(min(max(count, 0), MAX_ENTRIES)):
        if off + entry.size > end:
            bad += 1
            break
        length, name_off, vlen, dtype, _flags, _units, _var, data_off = entry.unpack_from(data, off)
        if length < entry.size or off + length > end:
            bad += 1  # the rest cannot be found without this entry's length
            break
        seen += 1
        item = data[off : off + length]
        off += length
        name = _cstring(item, name_off, MAX_NAME)
        if name is None or not 0 < data_off < length or vlen < 0:
            bad += 1
            continue
        if vlen == 0 and dtype == ord("J"):
            if data_off + 8 > length:
                bad += 1
                continue
            longs[name] = struct.unpack_from(e + "q", item, data_off)[0]
        elif vlen > 0 and dtype == ord("B"):
            if data_off + vlen > length:
                bad += 1
                continue
            raw = item[data_off : data_off + min(vlen, MAX_STRING)]
            strings[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        # other types (int vectors, ...) hold nothing oomtrace reads
    return PerfData(longs, strings, seen, bad, len(data))


def _cstring(item: bytes, at: int, limit: int) -> str | None:
    """A NUL-terminated printable ASCII name at `at`, or None."""
    if at <= 0 or at >= len(item):
        return None
    stop = item.find(b"\0", at, at + limit)
    if stop <= at:
        return None
    raw = item[at:stop]
    if not all(0x21 <= b < 0x7F for b in raw):
        return None
    return raw.decode("ascii")
