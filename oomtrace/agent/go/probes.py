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
from typing import Protocol

import structlog

from oomtrace.agent.errors import BpfLoadError
from oomtrace.agent.go.buildinfo import GoProcess
from oomtrace.agent.go.layouts import GC_CONTROLLER
from oomtrace.agent.go.settings import version_tuple
from oomtrace.agent.go.symbols import (
    GC_START,
    START_CYCLE,
    RuntimeGlobals,
    SymbolError,
    elf_entry,
    entries_in,
    probe_address,
    read_binary,
    runtime_globals,
)

log = structlog.get_logger(__name__)

GC_DONE = "runtime.gcMarkTermination"
AT_ENTRY = 9


class UprobeTarget(Protocol):
    def attach_go(self, path: str, gc_done: int) -> list[str]: ...

    def locate_go(
        self, tgid: int, controller: int, gomaxprocs: int, offsets: dict[str, int]
    ) -> None: ...


@dataclass
class GoBinary:
    """What one Go binary (by device and inode) gave: the probe's outcome, and
    what the probe may read in its processes."""

    outcome: str  # "attached", or why not
    pie: bool = False
    entry: int = 0  # e_entry: with AT_ENTRY, gives a PIE process's load bias
    globals: RuntimeGlobals | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    controller_reason: str = ""  # why the controller is not read, if it is not


class GoProbes:
    def __init__(self, target: UprobeTarget) -> None:
        self.target = target
        self.binaries: dict[tuple[int, int], GoBinary] = {}
        self.attached_binaries = 0
        self.failed = 0
        self.located = 0  # processes whose controller the probe reads

    def ensure(self, pid: int, go: GoProcess) -> None:
        exe = f"/proc/{pid}/exe"
        try:
            st = os.stat(exe)
        except OSError:
            return  # gone already
        key = (st.st_dev, st.st_ino)
        binary = self.binaries.get(key)
        if binary is None:
            binary = self.binaries[key] = self._attach(pid, exe, go)
        if binary.outcome == "attached" and binary.globals is not None:
            self._locate(pid, binary)

    def _attach(self, pid: int, exe: str, go: GoProcess) -> GoBinary:
        try:
            data = read_binary(exe)
            entries = entries_in(data, {GC_DONE, GC_START, START_CYCLE})
            if GC_DONE not in entries:
                raise SymbolError(f"no {GC_DONE} in pclntab")
            hooks = self.target.attach_go(exe, probe_address(data, entries[GC_DONE], GC_DONE))
        except (SymbolError, OSError, BpfLoadError) as exc:
            self.failed += 1
            log.info("go.probes_skipped", pid=pid, version=go.build.version, reason=str(exc))
            return GoBinary(str(exc))
        self.attached_binaries += 1
        binary = GoBinary("attached")
        binary.offsets = GC_CONTROLLER.get(version_tuple(go.build.version), {})
        if not binary.offsets:
            binary.controller_reason = f"no gcController layout for {go.build.version}"
        else:
            try:
                binary.pie, binary.entry = elf_entry(data)
                binary.globals = runtime_globals(data, entries)
            except SymbolError as exc:
                binary.controller_reason = str(exc)
        log.info(
            "go.probes_attached",
            pid=pid,
            version=go.build.version,
            module=go.build.module,
            hooks=hooks,
            controller=binary.globals is not None,
            reason=binary.controller_reason or None,
        )
        return binary

    def _locate(self, pid: int, binary: GoBinary) -> None:
        assert binary.globals is not None
        try:
            bias = load_bias(pid, binary.entry) if binary.pie else 0
            self.target.locate_go(
                pid,
                binary.globals.gc_controller + bias,
                binary.globals.gomaxprocs + bias,
                binary.offsets,
            )
        except (OSError, BpfLoadError) as exc:
            log.info("go.locate_failed", pid=pid, reason=str(exc))
            return
        self.located += 1


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
