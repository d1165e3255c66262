"""Attaches the Go uprobes to each Go binary once, as its processes are
discovered (at start and at exec). Addresses come only from pclntab."""

from __future__ import annotations

import os
from typing import Protocol

import structlog

from oomtrace.agent.errors import BpfLoadError
from oomtrace.agent.goruntime import GoProcess, version_tuple
from oomtrace.agent.gosymbols import SymbolError, function_entries

log = structlog.get_logger(__name__)

GC_DONE = "runtime.gcMarkTermination"
START_CYCLE = "runtime.(*gcControllerState).startCycle"
# Go minor versions whose gcControllerState layout matches the offsets the
# BPF program is compiled with (bcc_loader.GC_CONTROLLER_OFFSETS).
CONTROLLER_LAYOUT_VERSIONS = {(1, 21), (1, 27)}


class UprobeTarget(Protocol):
    def attach_go(self, path: str, gc_done: int, start_cycle: int | None) -> list[str]: ...


class GoProbes:
    def __init__(self, target: UprobeTarget) -> None:
        self.target = target
        self._done: dict[tuple[int, int], str] = {}  # binary (dev, ino) -> outcome
        self.attached_binaries = 0
        self.failed = 0

    def ensure(self, pid: int, go: GoProcess) -> None:
        exe = f"/proc/{pid}/exe"
        try:
            st = os.stat(exe)
        except OSError:
            return  # gone already
        key = (st.st_dev, st.st_ino)
        if key in self._done:
            return
        try:
            entries = function_entries(exe, {GC_DONE, START_CYCLE})
            if GC_DONE not in entries:
                raise SymbolError(f"no {GC_DONE} in pclntab")
            controller = version_tuple(go.build.version) in CONTROLLER_LAYOUT_VERSIONS
            hooks = self.target.attach_go(
                exe, entries[GC_DONE], entries.get(START_CYCLE) if controller else None
            )
        except (SymbolError, OSError, BpfLoadError) as exc:
            self._done[key] = str(exc)
            self.failed += 1
            log.info("go.probes_skipped", pid=pid, version=go.build.version, reason=str(exc))
            return
        self._done[key] = "attached"
        self.attached_binaries += 1
        log.info(
            "go.probes_attached",
            pid=pid,
            version=go.build.version,
            module=go.build.module,
            hooks=hooks,
            controller=controller,
        )
