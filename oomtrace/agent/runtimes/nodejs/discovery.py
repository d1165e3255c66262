"""Which processes are Node.js, read when a process is discovered: an
executable named node or nodejs whose binary (or the libnode it maps, as
Debian's build does) holds Node's release URL, from which the version is
read; NODE_OPTIONS from its environment and the heap flags from its command
line. The version scan is bounded and cached per binary (device, inode,
size, mtime)."""

from __future__ import annotations

import mmap
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from oomtrace.agent.runtimes.go.buildinfo import go_env
from oomtrace.agent.runtimes.nodejs.settings import NodeFlag, resolve

MAX_BINARY_BYTES = 512 << 20
NAMES = ("node", "nodejs")
_VERSION = re.compile(rb"node-v(\d{1,3}\.\d{1,3}\.\d{1,4})(?:-headers)?\.tar")


@dataclass(frozen=True, slots=True)
class NodeProcess:
    version: str  # "v20.20.2", "" when not found
    flags: dict[str, NodeFlag]
    env: dict[str, str]  # NODE_OPTIONS, if set (never shipped)


def binary_version(path: str | os.PathLike[str]) -> str:
    """Node's version from its release URL in the binary; "" if none."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return ""
            with mmap.mmap(f.fileno(), min(size, MAX_BINARY_BYTES), prot=mmap.PROT_READ) as m:
                found = _VERSION.search(m)
                return "v" + found.group(1).decode() if found else ""
    except (OSError, ValueError):
        return ""


class VersionCache:
    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()

    def get(self, path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return ""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = binary_version(path)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return self._cache[key]


def _libnode(pid: int, proc: Path) -> str | None:
    try:
        with open(proc / str(pid) / "maps", "rb") as f:
            raw = f.read(4 << 20)
    except OSError:
        return None
    m = re.search(rb" (/\S*/libnode\.so[\d.]*)\n", raw)
    if m:
        return m.group(1).decode("utf-8", "replace")
    # Read at exec, before the loader has mapped it: where distributions
    # install it (Debian's nodejs links libnode.so.N).
    for d in ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib", "usr/local/lib"):
        try:
            names = sorted(
                n for n in os.listdir(proc / str(pid) / "root" / d) if n.startswith("libnode.so")
            )
        except OSError:
            continue
        if names:
            return f"/{d}/{names[-1]}"
    return None


def discover(
    pid: int, exe: str, argv: list[str], cache: VersionCache, proc: Path = Path("/proc")
) -> NodeProcess | None:
    if os.path.basename(exe) not in NAMES:
        return None
    version = cache.get(str(proc / str(pid) / "exe"))
    if not version:
        lib = _libnode(pid, proc)
        if lib is not None:
            version = cache.get(str(proc / str(pid) / "root" / lib.lstrip("/")))
    env = go_env(pid, proc, ("NODE_OPTIONS",))
    return NodeProcess(version, resolve(argv, env), env)
