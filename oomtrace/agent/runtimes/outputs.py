"""Where a runtime process's own words go, read when it is discovered (its
fds, cwd and cgroup are gone by the time its exit reaches the agent): its
stderr when that is a regular file, whether it shares the agent's mount
namespace (so the path can be opened again from here), its working
directory (where a JVM writes hs_err_pid<pid>.log) and its memory cgroup."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Outputs:
    stderr: str = ""  # a regular file's path, as the process sees it
    cwd: str = ""
    same_mount_ns: bool = False
    memory_cgroup: str = ""  # the memory controller's path, as /proc/PID/cgroup gives it
    ns_pid: int = 0


def _mount_ns(pid: int | str, proc: Path) -> int | None:
    try:
        return os.stat(proc / str(pid) / "ns" / "mnt").st_ino
    except OSError:
        return None


def memory_cgroup(pid: int, proc: Path = Path("/proc")) -> str:
    """The v1 memory controller's line, else v2's unified one."""
    try:
        text = (proc / str(pid) / "cgroup").read_text(errors="replace")[:8192]
    except OSError:
        return ""
    unified = ""
    for line in text.splitlines():
        _id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            return path
        if controllers == "":
            unified = path
    return unified


def ns_pid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The process's pid in its own (innermost) pid namespace."""
    try:
        with open(proc / str(pid) / "status", "rb") as f:
            text = f.read(64 << 10).decode("ascii", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            try:
                return int(fields[-1])
            except (IndexError, ValueError):
                return None
    return None


def read_outputs(pid: int, proc: Path = Path("/proc")) -> Outputs:
    stderr = ""
    try:
        target = os.readlink(proc / str(pid) / "fd" / "2")
        if target.startswith("/") and os.path.isfile(proc / str(pid) / "fd" / "2"):
            stderr = target.removesuffix(" (deleted)")
    except OSError:
        pass
    try:
        cwd = os.readlink(proc / str(pid) / "cwd")
    except OSError:
        cwd = ""
    own = _mount_ns("self", proc)
    return Outputs(
        stderr=stderr,
        cwd=cwd,
        same_mount_ns=own is not None and own == _mount_ns(pid, proc),
        memory_cgroup=memory_cgroup(pid, proc),
        ns_pid=ns_pid(pid, proc) or pid,
    )
