"""The agent's event loop: kernel events in, finished OomEvent records out.

A kill is held until its victim's last thread has exited (or the oom reaper
has finished with it), so the record can say how long freeing took; a victim
that does not exit within `hold_ns` is recorded anyway, saying so. Records go
to sinks in the order their kills happened."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from oomtrace.agent import cgroups, decode
from oomtrace.agent.decode import KernelKill, KernelNote
from oomtrace.agent.errors import DecodeError
from oomtrace.agent.go.probes import GoProbes
from oomtrace.agent.host import Clock, boot_id, boot_ns_now, node_name
from oomtrace.agent.kernel_log import KernelLog
from oomtrace.agent.kernel_text import KernelText, OomPath
from oomtrace.agent.kmsg import ParsedReport
from oomtrace.agent.pressure import PressureSampler
from oomtrace.agent.procinfo import ProcessCache, ProcessInfo
from oomtrace.agent.record import (
    KillContext,
    build_event,
    counter_event,
    event_from_report,
    event_id,
    pressure_record,
)
from oomtrace.agent.workloads import WorkloadCache
from oomtrace.v1 import event_pb2

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Sink(Protocol):
    """Where finished records go: stdout, the spool, a test's list."""

    def emit(self, event: event_pb2.OomEvent) -> None: ...


class EventSource(Protocol):
    """The BPF side, as the loop sees it (BpfSession, or a fake in tests)."""

    def open_buffers(
        self,
        on_kill: Callable[[Any], None],
        on_note: Callable[[Any], None],
        on_cgroup: Callable[[Any], None] | None = None,
    ) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def kernel_lost(self) -> dict[str, int]: ...

    @property
    def user_lost(self) -> dict[str, int]: ...


@dataclass
class _Pending:
    kill: KernelKill
    process: ProcessInfo | None
    exit_ns: int | None = None
    reap_ns: int | None = None
    done: bool = False
    report: ParsedReport | None = None


@dataclass
class Counters:
    """Everything the agent counts; logged when it changes, written to the
    status file for `oomtrace doctor`."""

    kills_seen: int = 0
    records_emitted: int = 0
    decode_errors: int = 0
    held_too_long: int = 0
    sink_errors: int = 0
    pressure_records: int = 0
    # Seconds the pressure sampler took no point for (it was starved).
    pressure_points_missed: int = 0
    # Kills where both oom_control and the kernel stack placed the kill
    # (memcg or global), and how many of those disagreed: a disagreement
    # means kernel_text misreads this kernel, and where oom_kill_process
    # cannot be hooked the stack is all there is.
    oom_path_checks: int = 0
    oom_path_mismatches: int = 0
    kernel_lost: dict[str, int] = field(default_factory=dict)
    user_lost: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner:
    def __init__(
        self,
        source: EventSource,
        sinks: list[Sink],
        *,
        hierarchy: cgroups.MemoryHierarchy,
        hooks: tuple[str, ...],
        hold_ns: int = 3_000_000_000,
        processes: ProcessCache | None = None,
        status_file: Path | None = None,
        node: str | None = None,
        workloads: WorkloadCache | None = None,
        kernel_log: KernelLog | None = None,
        report_wait_ns: int = 300_000_000,
        sampler: PressureSampler | None = None,
        go_probes: GoProbes | None = None,
        kernel_text: KernelText | None = None,
        clock: Clock = boot_ns_now,
    ) -> None:
        self.source = source
        self.clock = clock
        self.sinks = sinks
        self.hierarchy = hierarchy
        self.hooks = hooks
        self.hold_ns = hold_ns
        self.processes = processes if processes is not None else ProcessCache()
        self.status_file = status_file
        self.node = node or node_name()
        self.boot_id = boot_id()
        self.workloads = workloads
        self.kernel_log = kernel_log
        self.report_wait_ns = report_wait_ns
        self.sampler = sampler
        self.go_probes = go_probes
        self.kernel_text = kernel_text
        self.counters = Counters()
        # The OOM killer invocation the last kill belonged to, for incident ids.
        self._incident: tuple[int, int, int, str] | None = (
            None  # trigger tid, oom memcg, boot ns, id
        )
        self._pending: dict[int, _Pending] = {}  # by victim tgid, in kill order
        self._stop = threading.Event()
        self._last_status_ns = 0

    # -- kernel callbacks --------------------------------------------------

    def _decode(self, fn: Callable[[Any], T], raw: Any, kind: str) -> T | None:
        """A kernel event decoded, or None: counted and logged, never raised,
        so one bad event costs only itself."""
        try:
            return fn(raw)
        except DecodeError as exc:
            self.counters.decode_errors += 1
            log.error("bpf.decode_failed", error=str(exc), kind=kind)
            return None

    def on_kill(self, raw: Any) -> None:
        kill = self._decode(partial(decode.decode_kill, text=self.kernel_text), raw, "kill")
        if kill is None:
            return
        self.counters.kills_seen += 1
        self._check_oom_path(kill)
        # What was read at exec, while the process was whole; else read the
        # dying victim's /proc now (its exe and environ may be gone already).
        process = None
        if kill.victim_tgid:
            process = self.processes.lookup(
                kill.victim_tgid, kill.victim_comm
            ) or self.processes.remember(kill.victim_tgid)
        key = kill.victim_tgid or kill.victim_tid
        self._pending[key] = _Pending(kill, process)

    def _check_oom_path(self, kill: KernelKill) -> None:
        if kill.oom_control is None or kill.oom_path is OomPath.UNKNOWN:
            return
        memcg = kill.oom_control.constraint is decode.OcConstraint.MEMCG
        said = OomPath.MEMCG if memcg else OomPath.GLOBAL
        self.counters.oom_path_checks += 1
        if kill.oom_path is not said:
            self.counters.oom_path_mismatches += 1
            log.warning(
                "kill.oom_path_mismatch",
                oom_control=kill.oom_control.constraint.name,
                kernel_stack=kill.oom_path.value,
                return_addresses=[hex(ip) for ip in kill.kernel_stack],
            )

    def on_note(self, raw: Any) -> None:
        note = self._decode(decode.decode_note, raw, "note")
        if note is None:
            return
        if note.kind == decode.KIND_EXEC:
            info = self.processes.remember(note.tgid)
            if info is not None and info.go is not None and self.go_probes is not None:
                self.go_probes.ensure(note.tgid, info.go)
        elif note.kind == decode.KIND_EXIT:
            p = self._pending.get(note.tgid)
            if p is not None:
                p.exit_ns = note.boot_ns - p.kill.boot_ns
                p.done = True
        elif note.kind == decode.KIND_REAP:
            self._on_reap(note)

    def on_cgroup(self, raw: Any) -> None:
        note = self._decode(decode.decode_cgroup_note, raw, "cgroup")
        if note is None:
            return
        if note.kind == decode.KIND_CGROUP_MKDIR:
            if self.workloads is not None:
                self.workloads.learn(note.cgroup_id, note.path)
            if self.sampler is not None:
                self.sampler.learn(note.cgroup_id, note.path, new=True)
        else:
            if self.workloads is not None:
                self.workloads.removed(note.cgroup_id)
            if self.sampler is not None:
                self.sampler.forget(note.cgroup_id)

    def _on_reap(self, note: KernelNote) -> None:
        # The reaper names the marked thread, not the thread group.
        for p in self._pending.values():
            if p.kill.victim_tid == note.tid:
                if note.what == 2:  # OOMT_REAP_FINISH
                    p.reap_ns = note.boot_ns - p.kill.boot_ns
                    p.done = True
                return

    # -- records -----------------------------------------------------------

    def flush(self, now_ns: int | None = None) -> None:
        """Emits every pending kill that is done, or held past hold_ns, in
        kill order; a kill still waiting holds back the ones after it."""
        now_ns = self.clock() if now_ns is None else now_ns
        while self._pending:
            key, p = next(iter(self._pending.items()))
            overdue = now_ns - p.kill.boot_ns >= self.hold_ns
            if not (p.done or overdue):
                break
            if self.kernel_log is not None and p.report is None:
                p.report = self.kernel_log.claim(p.kill.victim_tgid or p.kill.victim_tid)
                # The kernel prints "Killed process" right after mark_victim;
                # give the log reader a moment to see it.
                if (
                    p.report is None
                    and now_ns - p.kill.boot_ns < self.report_wait_ns
                    and not overdue
                ):
                    break
            del self._pending[key]
            missing: tuple[str, ...] = ()
            if not p.done:
                self.counters.held_too_long += 1
                missing = (
                    f"exit_ns: the victim had not exited {self.hold_ns / 1e9:g}s after the kill",
                )
            self._emit(p, missing)

    def _incident_id(self, kill: KernelKill, own_id: str) -> str:
        """One OOM-killer invocation (a memory.oom.group kill takes several
        victims) marks its victims back to back from the same trigger thread,
        for the same memcg: those records share the first one's id."""
        level = cgroups.oom_level(kill)
        if level is not None:
            oom_memcg = kill.memcgs[level].cgroup_id
        else:
            oom_memcg = kill.oom_control.memcg_id if kill.oom_control else 0
        last = self._incident
        if (
            last is not None
            and last[0] == kill.trigger_tid
            and last[1] == oom_memcg
            and 0 <= kill.boot_ns - last[2] < 1_000_000_000
        ):
            self._incident = (kill.trigger_tid, oom_memcg, kill.boot_ns, last[3])
            return last[3]
        self._incident = (kill.trigger_tid, oom_memcg, kill.boot_ns, own_id)
        return own_id

    def _emit(self, p: _Pending, missing: tuple[str, ...]) -> None:
        own_id = event_id(self.boot_id, p.kill.boot_ns, p.kill.victim_tgid or p.kill.victim_tid)
        if p.process is None and p.kill.victim_tgid:
            # The rings are drained one after the other: a victim's exec note
            # can be handled after its kill. It is in by now (the exit note
            # that released this record comes after it on the same ring).
            p.process = self.processes.lookup(p.kill.victim_tgid, p.kill.victim_comm)
        workload = None
        if self.workloads is not None and p.kill.memcgs:
            path = cgroups.level_paths(p.kill.memcgs, p.kill.depth_cut)[0]
            workload = self.workloads.lookup(p.kill.memcgs[0].cgroup_id, path)
        ctx = KillContext(
            node=self.node,
            boot_id=self.boot_id,
            hierarchy=self.hierarchy,
            process=p.process,
            trigger_cgroup_path=self._trigger_path(p.kill),
            exit_ns=p.exit_ns,
            reap_ns=p.reap_ns,
            hooks=self.hooks,
            missing=missing,
            workload=workload,
            incident_id=self._incident_id(p.kill, own_id),
            report=p.report,
            **self._timeline(p.kill),
        )
        if p.report is None and self.kernel_log is not None:
            ctx = replace(
                ctx, missing=(*ctx.missing, "kernel_report: not found in the kernel's log")
            )
        self._send(build_event(p.kill, ctx))

    def _timeline(self, kill: KernelKill) -> dict[str, Any]:
        """The points of the memcg whose limit was hit (else the victim's),
        and the seconds among them the sampler missed."""
        if self.sampler is None or not kill.memcgs:
            return {}
        level = cgroups.oom_level(kill)
        for i in ([level] if level is not None else []) + [0]:
            points = self.sampler.timeline(kill.memcgs[i].cgroup_id, kill.boot_ns)
            if points:
                path = cgroups.level_paths(kill.memcgs, kill.depth_cut)[i]
                go = (
                    tuple(self.sampler.go.timeline(kill.victim_tgid, kill.boot_ns))
                    if self.sampler.go is not None
                    else ()
                )
                missed = tuple(self.sampler.missed(points[0].boot_ns, kill.boot_ns))
                return {
                    "timeline": tuple(points),
                    "timeline_cgroup": path,
                    "go_timeline": go,
                    "timeline_missed": missed,
                }
        return {}

    def emit_pressure(self) -> None:
        """Pressure records for the windows the sampler thread closed."""
        if self.sampler is None:
            return
        for report in self.sampler.take_reports():
            workload = (
                self.workloads.lookup(report.cgroup_id, report.path) if self.workloads else None
            )
            record = pressure_record(report, self.node, workload)
            self.counters.pressure_records += 1
            for sink in self.sinks:
                emit = getattr(sink, "emit_pressure", None)
                if emit is not None:
                    emit(record)
            log.info("pressure.recorded", cgroup=report.path, reasons=list(report.reasons))

    def record_from_log(self, now_ns: int | None = None) -> None:
        """Kills only the kernel's log (or only its counter) knows of."""
        if self.kernel_log is None:
            return
        for report in self.kernel_log.orphans(now_ns):
            ctx = self._log_context(report.constraint_fields.get("task_memcg", ""))
            self._send(event_from_report(report, ctx))
        for path, n in self.kernel_log.take_counter().items():
            ctx = self._log_context(path)
            seq = self.kernel_log.checkpoint.seq
            self._send(counter_event(n, ctx, seq, path, noticed_ns=self.clock()), kills=n)

    def _log_context(self, cgroup_path: str) -> KillContext:
        """For a kill known only from the log: no process, the workload by path."""
        workload = None
        if self.workloads is not None and cgroup_path:
            workload = self.workloads.by_path(cgroup_path)
        return KillContext(
            node=self.node,
            boot_id=self.boot_id,
            hierarchy=self.hierarchy,
            process=None,
            workload=workload,
        )

    def _send(self, event: event_pb2.OomEvent, kills: int = 1) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except OSError as exc:
                self.counters.sink_errors += 1
                log.error("record.sink_failed", sink=type(sink).__name__, error=str(exc))
        self.counters.records_emitted += 1
        if self.kernel_log is not None:
            self.kernel_log.recorded(kills, event.cgroup.path)
        log.info(
            "oom.recorded",
            id=event.id,
            source=event_pb2.OomEvent.Source.Name(event.source),
            victim_pid=event.victim.pid,
            comm=event.victim.comm,
            cgroup=event.cgroup.path,
            constraint=event_pb2.OomEvent.Constraint.Name(event.constraint),
        )

    def _trigger_path(self, kill: KernelKill) -> str:
        if kill.trigger_tgid == kill.victim_tgid or not kill.memcgs:
            return cgroups.level_paths(kill.memcgs, kill.depth_cut)[0] if kill.memcgs else ""
        paths = cgroups.level_paths(kill.memcgs, kill.depth_cut)
        for m, path in zip(kill.memcgs, paths, strict=True):
            if m.cgroup_id == kill.trigger_memcg_id:
                return path
        return self.hierarchy.find_by_id(kill.trigger_memcg_id) or ""

    # -- loop ---------------------------------------------------------------

    def check_losses(self) -> None:
        """Logs any new loss the kernel or the buffers report."""
        kernel = self.source.kernel_lost()
        user = dict(self.source.user_lost)
        for cause, n in kernel.items():
            before = self.counters.kernel_lost.get(cause, 0)
            if n > before:
                log.error("bpf.events_lost", where="kernel", cause=cause, lost=n - before, total=n)
        self.counters.kernel_lost = kernel
        self.counters.user_lost = user
        if self.sampler is not None:
            self.counters.pressure_points_missed = self.sampler.points_missed

    def write_status(self) -> None:
        if self.status_file is None:
            return
        status = {"counters": self.counters.as_dict(), "hooks": list(self.hooks)}
        tmp = self.status_file.with_suffix(".tmp")
        try:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(status))
            tmp.replace(self.status_file)
        except OSError as exc:
            log.warning("agent.status_unwritable", path=str(self.status_file), error=str(exc))

    def stop(self, *_args: object) -> None:
        self._stop.set()

    def _poll_timeout_ms(self, poll_ms: int, idle_poll_ms: int) -> int:
        """Events wake the poll at once; the timeout paces what waits on time:
        a finished record waiting for its kernel-log line (the log reader is
        another thread), held kills, and housekeeping."""
        if any(p.done and p.report is None for p in self._pending.values()):
            return 5
        return poll_ms if self._pending else idle_poll_ms

    def run(self, poll_ms: int = 50, idle_poll_ms: int = 1000) -> None:
        """Polls until stopped. Events wake the poll at once; the timeout only
        paces hold deadlines (poll_ms while kills are pending) and housekeeping."""
        self.source.open_buffers(self.on_kill, self.on_note, self.on_cgroup)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self._stop.is_set():
            self.source.poll(self._poll_timeout_ms(poll_ms, idle_poll_ms))
            self.flush()
            self.record_from_log()
            self.emit_pressure()
            if self.workloads is not None:
                self.workloads.tick()
            now = self.clock()
            if now - self._last_status_ns >= 5_000_000_000:
                self._last_status_ns = now
                self.check_losses()
                self.write_status()
        # Drain: what the kernel already handed over is recorded before exit.
        self.source.poll(0)
        self.flush(now_ns=self.clock() + self.hold_ns)
        self.emit_pressure()
        self.check_losses()
        self.write_status()
