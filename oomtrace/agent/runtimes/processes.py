"""What the kernel event cannot carry about a process: its full command line
and executable path. Read from /proc while the process is alive: when the
agent starts, at every exec, and at the kill (often too late: the victim is
dying). Reads are bounded; nothing here raises for a vanished process."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from oomtrace.agent.kernel.decode import decode_cmdline
from oomtrace.agent.runtimes.go.buildinfo import (
    BuildInfo,
    BuildInfoCache,
    GoProcess,
    allowed_cpus,
    go_env,
)
from oomtrace.agent.runtimes.jvm import discovery as jvm_discovery
from oomtrace.agent.runtimes.nodejs import discovery as node_discovery
from oomtrace.agent.runtimes.outputs import Outputs, read_outputs

PROC = Path("/proc")
_CMDLINE_MAX = 4096


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    comm: str
    cmdline: str
    exe: str
    go: GoProcess | None = None
    start_boot_ns: int | None = None  # when it started, on the boot clock
    jvm: jvm_discovery.JvmProcess | None = None
    node: node_discovery.NodeProcess | None = None
    outputs: Outputs | None = None  # a runtime's (JVM, Node, Go) stderr, cwd, cgroup


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_boot_ns(stat: str) -> int | None:
    """A /proc/PID/stat line's starttime (field 22, clock ticks since boot,
    on the boot clock) in ns. The comm in parentheses may hold anything, so
    fields are counted after its closing parenthesis."""
    rest = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(rest[19]) * 1_000_000_000 // _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def read_process(
    pid: int,
    proc: Path = PROC,
    builds: BuildInfoCache | None = None,
    node_versions: node_discovery.VersionCache | None = None,
    maps: bool = False,
) -> ProcessInfo | None:
    """The process's comm, cmdline and exe (and, given a build-info cache, its
    Go build and settings), or None if it is gone (or a kernel thread, which
    has no cmdline)."""
    base = proc / str(pid)
    try:
        with open(base / "cmdline", "rb") as f:
            raw = f.read(_CMDLINE_MAX)
        comm = (base / "comm").read_text(errors="replace").rstrip("\n")
    except OSError:
        return None
    try:
        exe = os.readlink(base / "exe")
    except OSError:
        exe = ""
    try:
        started = start_boot_ns((base / "stat").read_text(errors="replace"))
    except OSError:
        started = None
    if not raw:
        return None
    go = None
    if builds is not None:
        # Through /proc/PID/exe: the binary as the process sees it, whatever
        # its mount namespace.
        build = builds.get(str(base / "exe"))
        if isinstance(build, BuildInfo):
            go = GoProcess(build, go_env(pid, proc), allowed_cpus(pid, proc))
    exe = exe.removesuffix(" (deleted)")
    argv = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]
    jvm = node = None
    if go is None:
        jvm = jvm_discovery.discover(pid, exe, argv, proc, maps=maps)
        if jvm is None and node_versions is not None:
            node = node_discovery.discover(pid, exe, argv, node_versions, proc)
    return ProcessInfo(
        comm=comm,
        cmdline=decode_cmdline(raw),
        exe=exe,
        go=go,
        start_boot_ns=started,
        jvm=jvm,
        node=node,
        outputs=read_outputs(pid, proc) if go or jvm or node else None,
    )


class ProcessCache:
    """Processes seen alive, by pid, least recently seen evicted first."""

    def __init__(self, capacity: int = 32768, proc: Path = PROC) -> None:
        self.capacity = capacity
        self.proc = proc
        self.builds = BuildInfoCache()
        self.node_versions = node_discovery.VersionCache()
        self._by_pid: OrderedDict[int, ProcessInfo] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._by_pid)

    def remember(self, pid: int, maps: bool = False) -> ProcessInfo | None:
        """maps: also look for an embedded JVM among its mappings (at the kill)."""
        info = read_process(pid, self.proc, self.builds, self.node_versions, maps)
        known = self._by_pid.get(pid)
        if info is not None and known is not None and known.comm == info.comm and info.go is None:
            # A later read of the same process that lost its exe (it is
            # exiting) must not drop what an earlier, whole read found.
            info = replace(
                info,
                go=known.go,
                exe=info.exe or known.exe,
                jvm=known.jvm or info.jvm,
                node=known.node or info.node,
                outputs=known.outputs or info.outputs,
            )
        if info is not None:
            self._by_pid[pid] = info
            self._by_pid.move_to_end(pid)
            while len(self._by_pid) > self.capacity:
                self._by_pid.popitem(last=False)
                self.evicted += 1
        return info

    def scan(self) -> int:
        """Remembers every process now running; returns how many."""
        count = 0
        try:
            entries = os.listdir(self.proc)
        except OSError:
            return 0
        for name in entries:
            if name.isdigit() and self.remember(int(name)) is not None:
                count += 1
        return count

    def items(self) -> list[tuple[int, ProcessInfo]]:
        return list(self._by_pid.items())

    def get(self, pid: int) -> ProcessInfo | None:
        """The last process seen with this pid (its exit, whatever its comm)."""
        return self._by_pid.get(pid)

    def lookup(self, pid: int, comm: str) -> ProcessInfo | None:
        """The cached process with this pid, if its comm still matches (a
        reused pid that never exec'd would keep a stale entry otherwise)."""
        info = self._by_pid.get(pid)
        if info is None or info.comm[:15] != comm[:15]:
            return None
        return info
