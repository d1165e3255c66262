"""What a memory cgroup's own files say at a kill, for the breakdown where
the kernel's report cannot: memory.stat, usage, limit, v1's kmem and swap;
and the tmpfs mounts its tasks see (an emptyDir of medium Memory, /dev/shm),
with how much each holds, so a verdict can name where shmem lives; and for
a node-wide OOM, the cgroups of the tree that held most.

Everything here is read from files a victim's cgroup and its tasks control
(mount points are names they chose): bounded in bytes and count, and every
failure is a None or an empty list, never an exception."""

from __future__ import annotations

import os
import re
from pathlib import Path

from oomtrace.agent.record.breakdown import MemcgFiles
from oomtrace.v1 import event_pb2

PROC = Path("/proc")
_STAT_MAX = 64 * 1024
_MOUNTINFO_MAX = 1 << 20
MAX_PIDS = 64  # tasks whose mounts are looked at
MAX_MOUNTS = 16  # tmpfs mounts kept, largest first
MAX_DIRS = 5000  # cgroups looked at for a node-wide OOM's top ones
MAX_DEPTH = 6
TOP = 5
_EMPTY_DIR = re.compile(
    r"/pods/(?P<uid>[0-9a-f-]{36})/volumes/kubernetes\.io~empty-dir/(?P<name>[^/]+)$"
)


def _read(path: Path, limit: int = _STAT_MAX) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path, 64)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        return None


def read_files(mount: Path, path: str, version: int, after_kill_ns: int = 0) -> MemcgFiles | None:
    """The cgroup's files (path as the kernel prints it, under the
    hierarchy's mount); None when it is gone or unreadable."""
    d = mount / path.lstrip("/")
    text = _read(d / "memory.stat")
    if text is None:
        return None
    stats: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.isdigit():
            stats[key] = int(value)
    if version == 1:
        usage = _int(d / "memory.usage_in_bytes")
        limit = _int(d / "memory.limit_in_bytes")
        memsw = _int(d / "memory.memsw.usage_in_bytes")
        kmem = _int(d / "memory.kmem.usage_in_bytes")
        swap = memsw - usage if memsw is not None and usage is not None and memsw >= usage else None
    else:
        usage = _int(d / "memory.current")
        limit = _int(d / "memory.max")
        kmem = None
        swap = _int(d / "memory.swap.current")
    if usage is None:
        return None
    return MemcgFiles(path, stats, usage, limit or 0, kmem, swap, after_kill_ns)


def cgroup_pids(mount: Path, path: str, limit: int = MAX_PIDS) -> list[int]:
    """Tasks in the cgroup and below it now, at most `limit`."""
    out: list[int] = []
    top = mount / path.lstrip("/")
    for dirpath, _dirs, _files in os.walk(top):
        text = _read(Path(dirpath) / "cgroup.procs")
        for word in (text or "").split():
            if word.isdigit() and len(out) < limit:
                out.append(int(word))
        if len(out) >= limit:
            break
    return out


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _tmpfs_lines(mountinfo: str) -> list[tuple[str, str, str]]:
    """(major:minor, mount point, options) of each tmpfs line."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, after = left.split(), right.split()
        if len(fields) < 5 or len(after) < 3 or after[0] != "tmpfs":
            continue
        out.append((fields[2], _unescape(fields[4]), after[2]))
    return out


def tmpfs_mounts(pids: list[int], proc: Path = PROC) -> list[event_pb2.TmpfsMount]:
    """The tmpfs mounts the tasks see that hold data, largest first: each
    once (by device), named as the first task sees it, an emptyDir named by
    the host's mount of the same device."""
    host = _read(proc / "1" / "mountinfo", _MOUNTINFO_MAX) or _read(
        proc / "self" / "mountinfo", _MOUNTINFO_MAX
    )
    host_by_dev = {dev: point for dev, point, _ in _tmpfs_lines(host or "")}
    seen: dict[str, event_pb2.TmpfsMount] = {}
    namespaces: set[str] = set()
    for pid in pids[:MAX_PIDS]:
        try:
            ns = os.readlink(proc / str(pid) / "ns" / "mnt")
        except OSError:
            continue
        if ns in namespaces:
            continue
        namespaces.add(ns)
        info = _read(proc / str(pid) / "mountinfo", _MOUNTINFO_MAX)
        if info is None:
            continue
        for dev, point, _opts in _tmpfs_lines(info):
            if dev in seen or len(seen) >= 4 * MAX_MOUNTS:
                continue
            try:
                st = os.statvfs(proc / str(pid) / "root" / point.lstrip("/"))
            except OSError:
                continue
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            m = event_pb2.TmpfsMount(
                mount_point=point[:256],
                used_bytes=used,
                size_limit_bytes=st.f_blocks * st.f_frsize,
            )
            empty_dir = _EMPTY_DIR.search(host_by_dev.get(dev, "") or point)
            if empty_dir:
                m.kind, m.volume = "emptyDir", empty_dir.group("name")[:128]
            elif point == "/dev/shm":
                m.kind = "/dev/shm"
            else:
                m.kind = "tmpfs"
            seen[dev] = m
    found = sorted((m for m in seen.values() if m.used_bytes), key=lambda m: -m.used_bytes)
    return found[:MAX_MOUNTS]


def top_cgroups(
    mount: Path, version: int, limit: int = TOP
) -> list[event_pb2.NodeMemInfo.CgroupUsage]:
    """The memory cgroups holding most by their own usage (less their
    children's: a parent's usage counts its children's too), largest first,
    each with its limit (0: none, or one its ancestors set)."""
    usage_file = "memory.current" if version == 2 else "memory.usage_in_bytes"
    limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
    usage: dict[Path, int] = {}
    seen = 0
    for dirpath, dirs, _files in os.walk(mount):
        d = Path(dirpath)
        depth = len(d.relative_to(mount).parts)
        if depth >= MAX_DEPTH:
            dirs[:] = []
        seen += 1
        if seen > MAX_DIRS:
            break
        if d == mount:
            continue  # the root has no usage file of its own on v2
        u = _int(d / usage_file)
        if u is not None:
            usage[d] = u
    own = dict(usage)
    for d, u in usage.items():
        if d.parent in own:
            own[d.parent] -= u
    out = []
    for d, u in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lim = _int(d / limit_file) or 0
        out.append(
            event_pb2.NodeMemInfo.CgroupUsage(
                path="/" + str(d.relative_to(mount)),
                usage_bytes=max(u, 0),
                limit_bytes=lim if lim < (1 << 60) else 0,
            )
        )
    return out


class AtKill:
    """Reads a kill's memcg files and its tasks' tmpfs mounts (the
    assembly's MemcgReader)."""

    def __init__(self, mount: Path | None, version: int, proc: Path = PROC) -> None:
        self.mount, self.version, self.proc = mount, version, proc

    def files(self, path: str, after_kill_ns: int) -> MemcgFiles | None:
        if self.mount is None or not path:
            return None
        return read_files(self.mount, path, self.version, after_kill_ns)

    def tmpfs(self, path: str, victim_pid: int) -> list[event_pb2.TmpfsMount]:
        if self.mount is None or not path:
            return []  # no hierarchy: no tasks known to be the cgroup's
        pids = [victim_pid] if victim_pid else []
        return tmpfs_mounts(pids + cgroup_pids(self.mount, path), self.proc)

    def top_cgroups(self) -> list[event_pb2.NodeMemInfo.CgroupUsage]:
        return top_cgroups(self.mount, self.version) if self.mount is not None else []
