"""The memory cgroup hierarchy: where it is mounted, which version it is, how
a kill's memcg ancestry becomes paths, and which memcg's limit was hit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from oomtrace.agent.kernel.decode import KernelKill, MemcgLevel
from oomtrace.agent.kernel.oom_caller import OomPath

MOUNTINFO = Path("/proc/self/mountinfo")

# A charge that fails is at most a THP (2 MiB) plus the per-cpu charge batch
# (64 pages); by mark_victim the counter still sits within that of its limit.
_AT_LIMIT_MARGIN = 2 * 1024 * 1024 + 64 * 4096


@dataclass(frozen=True, slots=True)
class MemoryHierarchy:
    version: int  # 1 or 2; 0 when no hierarchy has the memory controller
    mount: Path | None

    @property
    def hierarchy_id(self) -> int:
        """The kernel's id of this hierarchy (cgroup_root.hierarchy_id): v2's
        is 0; v1's is in /proc/cgroups; -1 when there is none."""
        if self.version == 2:
            return 0
        if self.version == 1:
            try:
                for line in Path("/proc/cgroups").read_text().splitlines():
                    fields = line.split()
                    if fields and fields[0] == "memory":
                        return int(fields[1])
            except (OSError, ValueError, IndexError):
                return -1
        return -1

    def find_by_id(self, cgroup_id: int, limit: int = 20000) -> str | None:
        """Path of the cgroup whose directory inode is cgroup_id (the kernfs id),
        by a bounded walk. Used only when the in-kernel name chain was cut."""
        if self.mount is None or cgroup_id == 0:
            return None
        seen = 0
        for root, dirs, _files in os.walk(self.mount):
            for d in dirs:
                seen += 1
                if seen > limit:
                    return None
                full = os.path.join(root, d)
                try:
                    if os.stat(full).st_ino == cgroup_id:
                        return "/" + os.path.relpath(full, self.mount)
                except OSError:
                    continue
        return None


def parse_mountinfo(text: str) -> MemoryHierarchy:
    """The hierarchy that holds the memory controller, from mountinfo text:
    a v1 `cgroup` mount with the `memory` option, else the cgroup2 mount whose
    cgroup.controllers lists memory."""
    v2_mounts: list[Path] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, super_opts = rfields[0], rfields[2]
        mount = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup" and "memory" in super_opts.split(","):
            return MemoryHierarchy(1, mount)
        if fstype == "cgroup2":
            v2_mounts.append(mount)
    for mount in v2_mounts:
        try:
            controllers = (mount / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" in controllers:
            return MemoryHierarchy(2, mount)
    return MemoryHierarchy(0, None)


def memory_hierarchy() -> MemoryHierarchy:
    return parse_mountinfo(MOUNTINFO.read_text())


def level_paths(
    memcgs: tuple[MemcgLevel, ...], depth_cut: bool, last_path: str | None = None
) -> list[str]:
    """Path of each level as the kernel's report prints it (`/a/b`, root `/`).

    The chain ends at the hierarchy root (whose name is not part of paths)
    unless depth_cut; then last_path, if known (found by id), is the path of
    the last level, and otherwise paths start with `…/`."""
    names = [m.name for m in memcgs]
    if not names:
        return []
    top = (last_path or f"…/{names[-1]}") if depth_cut else "/"
    out = []
    for i in range(len(names)):
        below = list(reversed(names[i:-1]))
        out.append(top.rstrip("/") + "/" + "/".join(below) if below else top)
    return out


def at_limit(level: MemcgLevel) -> bool:
    """True when a counter of this memcg is close enough to its limit that a
    charge there fails (what makes the kernel start a memcg OOM)."""
    for usage, limit in (
        (level.usage_bytes, level.limit_bytes),
        (level.memsw_usage_bytes, level.memsw_limit_bytes),
    ):
        if limit is not None and usage + min(_AT_LIMIT_MARGIN, limit // 8) >= limit:
            return True
    return False


def derive_oom_level(
    memcgs: tuple[MemcgLevel, ...], trigger_memcg_id: int, path: OomPath = OomPath.UNKNOWN
) -> int | None:
    """Index in memcgs of the memcg whose limit was hit, when the kernel did
    not say (no oom_kill_process hook): the lowest memcg on the victim's path
    that sits at its limit and is also on the trigger's path (the trigger
    charged it). None means a global OOM.

    path: who called the OOM killer, read off the kernel stack. GLOBAL is
    final. MEMCG is too, even when no memcg sits at its limit any more (a
    previous victim's pages were uncharged between the kernel's margin check
    and mark_victim): the memcg is then the one with the least headroom. Only
    UNKNOWN leaves it all to the page counters."""
    if path is OomPath.GLOBAL:
        return None
    trigger_index = next((i for i, m in enumerate(memcgs) if m.cgroup_id == trigger_memcg_id), None)
    start = trigger_index if trigger_index is not None else 0
    # The trigger charges its own memcg and every ancestor; any at-limit one
    # from there up can have failed the charge, and the lowest is the first hit.
    # Below the trigger's memcg nothing was charged: only a last resort.
    charged, below = range(start, len(memcgs)), range(0, start)
    for levels in (charged, below):
        for i in levels:
            if at_limit(memcgs[i]):
                return i
    if path is OomPath.MEMCG:
        for levels in (charged, below):
            rooms = {i: r for i in levels if (r := _headroom(memcgs[i])) is not None}
            if rooms:
                return min(rooms, key=lambda i: (rooms[i], i))
    return None


def _headroom(level: MemcgLevel) -> int | None:
    """Bytes left under the tightest limit of this memcg (None: no limit)."""
    rooms = [
        limit - usage
        for usage, limit in (
            (level.usage_bytes, level.limit_bytes),
            (level.memsw_usage_bytes, level.memsw_limit_bytes),
        )
        if limit is not None
    ]
    return min(rooms) if rooms else None


def oom_level(kill: KernelKill) -> int | None:
    """Index in kill.memcgs of the memcg whose limit was hit: the one the
    kernel's oom_control names when that hook ran (None for a global OOM, or
    when it lies beyond the recorded ancestry), else derived from the kernel
    stack and the page counters. The one answer the record, its incident and
    its timeline use."""
    if kill.oom_control is not None:
        oom_id = kill.oom_control.memcg_id
        return next(
            (i for i, m in enumerate(kill.memcgs) if oom_id and m.cgroup_id == oom_id), None
        )
    return derive_oom_level(kill.memcgs, kill.trigger_memcg_id, kill.oom_path)


def effective_limit(memcgs: tuple[MemcgLevel, ...]) -> int | None:
    limits = [m.limit_bytes for m in memcgs if m.limit_bytes is not None]
    return min(limits) if limits else None


def effective_memsw_limit(memcgs: tuple[MemcgLevel, ...]) -> int | None:
    limits = [m.memsw_limit_bytes for m in memcgs if m.memsw_limit_bytes is not None]
    return min(limits) if limits else None


def local_oom_kills(h: MemoryHierarchy, limit: int = 20000) -> dict[str, int]:
    """Each memory cgroup's own oom_kill count, by path: v1's
    memory.oom_control counts the cgroup alone, v2's memory.events counts
    descendants too, so v2 reads memory.events.local."""
    if h.mount is None:
        return {}
    name = "memory.oom_control" if h.version == 1 else "memory.events.local"
    out: dict[str, int] = {}
    for n, (root, _dirs, files) in enumerate(os.walk(h.mount)):
        if n >= limit:
            break
        if name not in files:
            continue
        try:
            text = Path(root, name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                rel = "/" + os.path.relpath(root, h.mount)
                out["/" if rel == "/." else rel] = int(value)
    return out
