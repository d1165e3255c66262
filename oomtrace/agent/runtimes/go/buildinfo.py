"""Go programs: what a binary says about itself (`.go.buildinfo`: Go version,
main module, build settings) and what the process was configured with
(GOGC, GOMEMLIMIT, GOMAXPROCS, GODEBUG, and nothing else: the rest of an
environment holds secrets and never leaves the node).

Read when a process is discovered (at agent start and at exec), because at
kill time its memory and environ may be gone. Reads are bounded; a file
that is not a Go ELF, or is truncated or corrupt, gives None and a reason,
never an exception. Build info is cached per binary (device, inode, size,
mtime), so a binary replaced on disk is read again."""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"\xff Go buildinf:"
SENTINEL_LEN = 16
MAX_SECTION_BYTES = 1 << 20
MAX_ENVIRON_BYTES = 1 << 20
GO_ENV = ("GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG")


class NotGoError(Exception):
    """The file is not a Go binary oomtrace can read; the message says why."""


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str  # "go1.27.3"
    module: str  # main module path
    settings: dict[str, str] = field(
        default_factory=dict
    )  # "build" lines: -buildmode, CGO_ENABLED, DefaultGODEBUG...


@dataclass(frozen=True, slots=True)
class GoProcess:
    build: BuildInfo
    env: dict[str, str]  # only GO_ENV keys that were set
    # CPUs the process may run on, when read: GOMAXPROCS's default before Go 1.25.
    cpus: int | None = None


def allowed_cpus(pid: int, proc: Path = Path("/proc")) -> int | None:
    """How many CPUs the process may run on (Cpus_allowed_list: "0-3,6")."""
    try:
        with open(proc / str(pid) / "status", "rb") as f:
            status = f.read(MAX_ENVIRON_BYTES).decode("ascii", "replace")
    except OSError:
        return None
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key != "Cpus_allowed_list":
            continue
        count = 0
        for part in value.strip().split(","):
            first, _, last = part.partition("-")
            try:
                count += int(last or first) - int(first) + 1
            except ValueError:
                return None
        return count or None
    return None


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise NotGoError("truncated varint in .go.buildinfo")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def parse_buildinfo(blob: bytes) -> BuildInfo:
    """The .go.buildinfo section (or bytes starting at its magic)."""
    if not blob.startswith(MAGIC):
        raise NotGoError("no Go build info magic")
    if len(blob) < 32:
        raise NotGoError("truncated .go.buildinfo header")
    flags = blob[15]
    if not flags & 0x2:
        raise NotGoError("Go before 1.18 (pointer-form build info) is not decoded")
    n, pos = _uvarint(blob, 32)
    if pos + n > len(blob):
        raise NotGoError("truncated Go version string")
    version = blob[pos : pos + n].decode("utf-8", "replace")
    pos += n
    n, pos = _uvarint(blob, pos)
    if pos + n > len(blob):
        raise NotGoError("truncated module info")
    modinfo = blob[pos : pos + n]
    if len(modinfo) >= 2 * SENTINEL_LEN:
        modinfo = modinfo[SENTINEL_LEN:-SENTINEL_LEN]
    module = ""
    settings: dict[str, str] = {}
    for line in modinfo.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if parts[0] == "path" and len(parts) > 1:
            module = parts[1]
        elif parts[0] == "build" and len(parts) > 1:
            key, _, value = parts[1].partition("=")
            settings[key] = value.strip('"')
    if not version.startswith("go"):
        raise NotGoError(f"implausible Go version {version[:40]!r}")
    return BuildInfo(version, module, settings)


def read_buildinfo(path: str | os.PathLike[str]) -> BuildInfo:
    """From an ELF file's .go.buildinfo section (section headers, bounded
    reads). Any binary on the node can be hostile: whatever a malformed one
    makes the parsing raise becomes a NotGoError, with the reason."""
    try:
        return _read_buildinfo(path)
    except (struct.error, ValueError, OverflowError, IndexError) as exc:
        raise NotGoError(f"malformed ELF ({type(exc).__name__}: {exc})") from None


def _read_buildinfo(path: str | os.PathLike[str]) -> BuildInfo:
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            raise NotGoError("not an ELF file")
        if ident[4] != 2 or ident[5] != 1:
            raise NotGoError("not a 64-bit little-endian ELF")
        (e_shoff,) = struct.unpack_from("<Q", ident, 0x28)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
        if e_shentsize != 64 or not 0 < e_shnum < 4096 or e_shstrndx >= e_shnum:
            raise NotGoError("no usable ELF section table")
        if e_shoff + 64 * e_shnum > file_size:
            raise NotGoError(
                "truncated or crafted: the ELF section table lies past the end of the file"
            )
        f.seek(e_shoff)
        table = f.read(64 * e_shnum)
        if len(table) < 64 * e_shnum:
            raise NotGoError("truncated ELF section table")

        def section(i: int) -> tuple[int, int, int]:
            name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", table, 64 * i)
            return name, offset, size

        _n, str_off, str_size = section(e_shstrndx)
        if str_off >= file_size:
            raise NotGoError("truncated or crafted: section names lie past the end of the file")
        f.seek(str_off)
        names = f.read(min(str_size, MAX_SECTION_BYTES))
        for i in range(e_shnum):
            name_off, offset, size = section(i)
            end = names.find(b"\0", name_off)
            if names[name_off:end] == b".go.buildinfo":
                if offset >= file_size:
                    raise NotGoError("truncated or crafted: .go.buildinfo lies past the end")
                f.seek(offset)
                return parse_buildinfo(f.read(min(size, MAX_SECTION_BYTES)))
    raise NotGoError("no .go.buildinfo section")


def go_env(pid: int, proc: Path = Path("/proc"), keys: tuple[str, ...] = GO_ENV) -> dict[str, str]:
    """The Go runtime's four settings (or the given runtime settings) from
    the process's environment, and only those."""
    try:
        with open(proc / str(pid) / "environ", "rb") as f:
            raw = f.read(MAX_ENVIRON_BYTES)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.decode("ascii", "replace") in keys:
            out[key.decode()] = value.decode("utf-8", "replace")[: 256 if keys is GO_ENV else 8192]
    return out


class BuildInfoCache:
    """Build info per binary; a binary replaced on disk is a new key."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, int, int, int], BuildInfo | str] = OrderedDict()

    def get(self, exe: str) -> BuildInfo | str:
        """BuildInfo, or the reason there is none."""
        try:
            st = os.stat(exe)
        except OSError as exc:
            return f"cannot stat {exe}: {exc.strerror}"
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = read_buildinfo(exe)
            except NotGoError as exc:
                hit = str(exc)
            except OSError as exc:
                hit = f"cannot read {exe}: {exc.strerror}"
            self._cache[key] = hit
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return hit
