"""Attaches the Go GC probe to each Go binary once, as its processes are
discovered (at start and at exec), and tells the probe where each process's
runtime keeps its GC controller. Addresses come only from pclntab and from
the binary's own code (gosymbols); field offsets only from go_layouts, which
is generated from DWARF. A binary whose version has no layout gets GC counts
and rates, never a guessed read."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from oomtrace.agent.errors import BpfLoadError
from oomtrace.agent.runtimes.go.buildinfo import GoProcess
from oomtrace.agent.runtimes.go.heap import ENABLE_HINT, OFF_BY_LINKER, BinaryProfile
from oomtrace.agent.runtimes.go.layouts import GC_CONTROLLER, HEAP_PROFILE
from oomtrace.agent.runtimes.go.settings import version_tuple
from oomtrace.agent.runtimes.go.symbols import RuntimeGlobals, SymbolError
from oomtrace.agent.runtimes.go.worker import Parsed, ParserWorker

log = structlog.get_logger(__name__)

GC_DONE = "runtime.gcMarkTermination"
AT_ENTRY = 9


# Binaries probed at once, at most: each holds an open file and a uprobe.
MAX_PROBED_BINARIES = 256


class UprobeTarget(Protocol):
    def attach_go(self, path: str, gc_done: int) -> list[str]: ...

    def detach_go(self, path: str, gc_done: int) -> None: ...

    def locate_go(
        self,
        tgid: int,
        controller: int,
        gomaxprocs: int,
        offsets: dict[str, int],
        profile: tuple[int, int] | None = None,
        profile_layout: dict[str, int] | None = None,
    ) -> None: ...


@dataclass
class GoBinary:
    """What one Go binary (by device and inode) gave: the probe's outcome, and
    what the probe may read in its processes."""

    outcome: str  # "attached", or why not
    # The binary as it was read and probed: held open (as /proc/self/fd/N,
    # the name the probe was attached by) for as long as it is probed, so a
    # pid reused between reading and attaching cannot swap the file.
    fd: int = -1
    path: str = ""
    gc_done: int = 0
    pids: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)  # of pids, those found gone at the last sweep
    pie: bool = False
    entry: int = 0  # e_entry: with AT_ENTRY, gives a PIE process's load bias
    globals: RuntimeGlobals | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    controller_reason: str = ""  # why the controller is not read, if it is not
    version: str = ""
    # The heap profile: link-time (runtime.mbuckets, runtime.MemProfileRate)
    # and the bucket layout, when victims' profiles can be walked; else why not.
    profile: tuple[int, int] | None = None
    profile_layout: dict[str, int] = field(default_factory=dict)
    profile_reason: str = ""


@dataclass
class _Parsing:
    """A binary whose parse is under way: held open, with its processes."""

    fd: int
    go: GoProcess
    pids: set[int] = field(default_factory=set)


class GoProbes:
    def __init__(
        self,
        target: UprobeTarget,
        max_binaries: int = MAX_PROBED_BINARIES,
        parser: ParserWorker | None = None,
    ) -> None:
        self.target = target
        self.max_binaries = max_binaries
        # Binaries are parsed in a process of their own, off the event loop
        # (go/worker.py); poll() attaches what has been parsed.
        self.parser = parser or ParserWorker()
        self.parser.start()
        self.parsing: dict[tuple[int, int], _Parsing] = {}
        self.binaries: dict[tuple[int, int], GoBinary] = {}
        self.attached_binaries = 0
        self.detached_binaries = 0
        self.failed = 0
        self.capped = 0  # processes left unprobed: max_binaries were probed already
        self.located = 0  # processes whose controller the probe reads
        self._symbolizing: set[Any] = set()
        self._symbolized: list[tuple[Any, list[list[Any] | None] | None, str]] = []

    def ensure(self, pid: int, go: GoProcess) -> None:
        try:
            fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # gone already
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        parsing = self.parsing.get(key)
        if parsing is not None:
            os.close(fd)
            parsing.pids.add(pid)
            return
        binary = self.binaries.get(key)
        if binary is None:
            if self.attached_binaries - self.detached_binaries + len(self.parsing) >= (
                self.max_binaries
            ):
                os.close(fd)
                self.capped += 1
                if self.capped == 1:
                    log.warning("go.probes_capped", max_binaries=self.max_binaries)
                return
            self.parsing[key] = _Parsing(fd, go, {pid})
            self.parser.submit(key, fd)
            return
        os.close(fd)
        binary.pids.add(pid)
        if binary.outcome == "attached" and (binary.globals or binary.profile):
            self._locate(pid, binary)

    @property
    def pending(self) -> int:
        """Binaries being parsed: the event loop polls sooner while any are."""
        return len(self.parsing)

    def poll(self, wait_s: float = 0.0) -> None:
        """Attaches the probes of the binaries parsed since the last call
        (waiting up to wait_s for all of them: at start-up), and locates the
        controller in each of their processes. Called on every pass of the
        event loop: nothing to do costs one check."""
        if not self.parsing and not self._symbolizing:
            return
        done = self.parser.wait(wait_s) if wait_s else self.parser.results()
        for key, parsed in done:
            if key in self._symbolizing:
                self._symbolizing.discard(key)
                self._symbolized.append((key, parsed.frames, parsed.error))
                continue
            parsing = self.parsing.pop(key, None)
            if parsing is None:
                continue
            binary = self.binaries[key] = self._attach(parsing, parsed)
            if binary.fd < 0:
                os.close(parsing.fd)
            binary.pids = {p for p in parsing.pids if _runs(p, key)}
            if binary.outcome == "attached" and (binary.globals or binary.profile):
                for pid in binary.pids:
                    self._locate(pid, binary)

    # -- heap profiles (go/heap.py) ---------------------------------------

    def _binary_of(self, pid: int) -> GoBinary | None:
        return next((b for b in self.binaries.values() if pid in b.pids), None)

    def binary_profile(self, pid: int) -> BinaryProfile | None:
        """The victim's binary, held open for its profile's symbols (a dup
        the caller closes): the probe may come off once the victim is gone."""
        b = self._binary_of(pid)
        if b is None or b.profile is None or b.fd < 0:
            return None
        name = os.path.basename(os.readlink(b.path)) if os.path.exists(b.path) else ""
        return BinaryProfile(
            os.dup(b.fd), b.profile[0], b.profile_layout["moduledata_gofunc"], name
        )

    def profile_reason(self, pid: int) -> str:
        """Why a Go process's heap profile is not walked at its kill ("" when it is)."""
        b = self._binary_of(pid)
        if b is None:
            return "the process was not probed"
        if b.outcome != "attached":
            return f"the binary was not probed: {b.outcome}"
        return b.profile_reason

    def symbolize(self, token: Any, fd: int, pcs: list[int], gofunc: int) -> None:
        self._symbolizing.add(token)
        self.parser.submit_symbolize(token, fd, pcs, gofunc)

    def symbolized(self) -> list[tuple[Any, list[list[Any] | None] | None, str]]:
        out, self._symbolized = self._symbolized, []
        return out

    def close(self) -> None:
        self.parser.close()

    def sweep(self) -> None:
        """Detaches the probe of every binary no live process runs any more
        (a pid now running another binary does not count), and forgets it.
        A process found gone is forgotten at the sweep after: an OOM victim
        dies before its kill is read, and its kill still wants to know its
        binary (the heap profile's symbols, or why there is none)."""
        for key, binary in list(self.binaries.items()):
            gone = {pid for pid in binary.pids if not _runs(pid, key)}
            binary.pids -= gone & binary.gone
            binary.gone = gone - binary.gone
            if binary.pids:
                continue
            del self.binaries[key]
            if binary.outcome != "attached":
                continue
            try:
                self.target.detach_go(binary.path, binary.gc_done)
            except BpfLoadError as exc:
                log.warning("go.probe_detach_failed", path=binary.path, reason=str(exc))
            os.close(binary.fd)
            self.detached_binaries += 1
            log.info("go.probes_detached", version=binary.version, inode=key[1])

    def _attach(self, parsing: _Parsing, parsed: Parsed) -> GoBinary:
        fd, go = parsing.fd, parsing.go
        path = f"/proc/self/fd/{fd}"
        pid = min(parsing.pids)
        try:
            if parsed.error:
                raise SymbolError(parsed.error)
            hooks = self.target.attach_go(path, parsed.gc_done)
        except (SymbolError, BpfLoadError) as exc:
            self.failed += 1
            log.info("go.probes_skipped", pid=pid, version=go.build.version, reason=str(exc))
            return GoBinary(str(exc))
        self.attached_binaries += 1
        binary = GoBinary("attached", fd=fd, path=path, gc_done=parsed.gc_done)
        binary.version = go.build.version
        binary.offsets = GC_CONTROLLER.get(version_tuple(go.build.version), {})
        if not binary.offsets:
            binary.controller_reason = f"no gcController layout for {go.build.version}"
        elif parsed.globals is None:
            binary.controller_reason = parsed.globals_reason
        else:
            binary.globals = RuntimeGlobals(*parsed.globals)
        binary.pie, binary.entry = parsed.pie, parsed.entry
        layout = HEAP_PROFILE.get(version_tuple(go.build.version), {})
        if parsed.profile is None:
            binary.profile_reason = f"the heap profile was not found: {parsed.profile_reason}"
        elif parsed.profile[2]:
            binary.profile_reason = (
                f"{OFF_BY_LINKER} (nothing in it references runtime.MemProfile): {ENABLE_HINT}"
            )
        elif not layout:
            binary.profile_reason = f"no heap-profile layout for {go.build.version}"
        else:
            binary.profile = (parsed.profile[0], parsed.profile[1])
            binary.profile_layout = layout
        log.info(
            "go.probes_attached",
            pid=pid,
            inode=os.fstat(fd).st_ino,
            version=go.build.version,
            module=go.build.module,
            hooks=hooks,
            controller=binary.globals is not None,
            reason=binary.controller_reason or None,
            heap_profile=binary.profile is not None,
            heap_profile_reason=binary.profile_reason or None,
        )
        return binary

    def _locate(self, pid: int, binary: GoBinary) -> None:
        try:
            bias = load_bias(pid, binary.entry) if binary.pie else 0
            g = binary.globals
            self.target.locate_go(
                pid,
                g.gc_controller + bias if g else 0,
                g.gomaxprocs + bias if g else 0,
                binary.offsets if g else {},
                (binary.profile[0] + bias, binary.profile[1] + bias) if binary.profile else None,
                binary.profile_layout or None,
            )
        except (OSError, BpfLoadError) as exc:
            log.info("go.locate_failed", pid=pid, reason=str(exc))
            return
        self.located += 1


def _runs(pid: int, key: tuple[int, int]) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key


def load_bias(pid: int, e_entry: int) -> int:
    """Where a position-independent executable was loaded: the entry point the
    kernel gave the process (AT_ENTRY in its aux vector) less the file's own."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv = f.read(4096)
    for i in range(0, len(auxv) - 15, 16):
        key, value = struct.unpack_from("<QQ", auxv, i)
        if key == AT_ENTRY:
            return int(value - e_entry)
        if key == 0:
            break
    raise OSError(f"no AT_ENTRY in /proc/{pid}/auxv")
