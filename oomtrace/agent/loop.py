"""The agent's event loop, kept thin: kernel events are decoded and handed
to the kill assembler (record/assembler.py), assembled kills are built into records
(record/live.py) and sent to the sinks in the order the kills happened; kills
only the kernel's log knows of, and pressure windows, go the same way. Every
loss is counted here and written to the status file."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.cgroups import names as cgroup_names
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.delivery.privacy import Privacy
from oomtrace.agent.errors import BpfLoadError, DecodeError
from oomtrace.agent.host import Clock, boot_id, boot_ns_now, node_name
from oomtrace.agent.kernel import decode
from oomtrace.agent.kernel.decode import KernelKill, Kind, ReapStage
from oomtrace.agent.kernel.oom_caller import KernelText, OomPath
from oomtrace.agent.kernel_log.reports import ParsedReport
from oomtrace.agent.pressure.sampler import Point, WindowReport
from oomtrace.agent.record import runtime_death
from oomtrace.agent.record.assembler import KillAssembler, NoTimelines, NoWorkloads
from oomtrace.agent.record.live import build_event
from oomtrace.agent.record.logged import LogContext, counter_event, event_from_report
from oomtrace.agent.record.memcg_files import AtKill
from oomtrace.agent.record.parts import fit_to_wire
from oomtrace.agent.record.pressure_window import pressure_record
from oomtrace.agent.runtimes.go.buildinfo import GoProcess
from oomtrace.agent.runtimes.go.heap import BinaryProfile, HeapProfiles
from oomtrace.agent.runtimes.go.sampling import GoPoint
from oomtrace.agent.runtimes.processes import ProcessCache
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
        on_profile: Callable[[bytes], None] | None = None,
    ) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def kernel_lost(self) -> dict[str, int]: ...

    @property
    def user_lost(self) -> dict[str, int]: ...


@dataclass
class Counters:
    """Everything the agent counts; logged when it changes, written to the
    status file for `oomtrace doctor`."""

    kills_seen: int = 0  # the kernel's
    userspace_kills_seen: int = 0  # userspace OOM killers' (--userspace-killers)
    records_emitted: int = 0
    decode_errors: int = 0
    # Events whose handling raised (a bug, or input nothing foresaw): BCC
    # would print and drop the exception; here it is counted and logged.
    callback_errors: int = 0
    held_too_long: int = 0
    sink_errors: int = 0
    # Records cut to fit the collector's message limit (what, in `missing`).
    records_trimmed: int = 0
    pressure_records: int = 0
    # Seconds the pressure sampler took no point for (it was starved).
    pressure_points_missed: int = 0
    # Kills where both oom_control and the kernel stack placed the kill
    # (memcg or global), and how many of those disagreed: a disagreement
    # means kernel_text misreads this kernel, and where oom_kill_process
    # cannot be hooked the stack is all there is.
    oom_path_checks: int = 0
    oom_path_mismatches: int = 0
    # Runtime processes (JVM, Node, Go) whose exit could not be watched (the
    # BPF map was full): a runtime's own OOM death among them goes unseen.
    runtime_watch_full: int = 0
    # Runtime exits whose own words said they ran out of memory (RUNTIME records).
    runtime_deaths: int = 0
    kernel_lost: dict[str, int] = field(default_factory=dict)
    user_lost: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogRecovery(Protocol):
    """The kernel's log, as the loop sees it (KernelLog, or NoKernelLog)."""

    def claim(self, victim_pid: int) -> ParsedReport | None: ...
    def orphans(
        self, now_ns: int | None = None, live: Collection[int] = ()
    ) -> list[ParsedReport]: ...
    def take_counter(self) -> dict[str, int]: ...
    def recorded(self, n: int = 1, cgroup_path: str = "") -> None: ...
    def checkpoint_seq(self) -> int: ...


class Pressure(Protocol):
    """The pressure sampler, as the loop sees it (PressureSampler, or NoPressure)."""

    points_missed: int

    def learn(self, cgroup_id: int, path: str, *, new: bool = False) -> None: ...
    def forget(self, cgroup_id: int) -> None: ...
    def take_reports(self) -> list[WindowReport]: ...
    def timeline(self, cgroup_id: int, kill_ns: int) -> list[Point]: ...
    def go_timeline(self, tgid: int, kill_ns: int) -> list[GoPoint]: ...
    def missed(self, since_ns: int, until_ns: int) -> list[int]: ...


class Containers(Protocol):
    """What each cgroup holds, as the loop sees it (WorkloadCache, or NoContainers)."""

    def learn(self, cgroup_id: int, path: str) -> Workload: ...
    def removed(self, cgroup_id: int) -> None: ...
    def tick(self) -> None: ...
    def lookup(self, cgroup_id: int, path: str) -> Workload | None: ...
    def by_path(self, path: str) -> Workload | None: ...


class GoDiscovery(Protocol):
    def ensure(self, tgid: int, go: GoProcess) -> None: ...
    def poll(self, wait_s: float = 0.0) -> None: ...
    def sweep(self) -> None: ...
    @property
    def pending(self) -> int: ...
    def binary_profile(self, pid: int) -> BinaryProfile | None: ...
    def profile_reason(self, pid: int) -> str: ...


class NoKernelLog:
    def claim(self, victim_pid: int) -> ParsedReport | None:
        return None

    def orphans(self, now_ns: int | None = None, live: Collection[int] = ()) -> list[ParsedReport]:
        return []

    def take_counter(self) -> dict[str, int]:
        return {}

    def recorded(self, n: int = 1, cgroup_path: str = "") -> None:
        pass

    def checkpoint_seq(self) -> int:
        return -1


class NoPressure(NoTimelines):
    points_missed = 0

    def learn(self, cgroup_id: int, path: str, *, new: bool = False) -> None:
        pass

    def forget(self, cgroup_id: int) -> None:
        pass

    def take_reports(self) -> list[WindowReport]:
        return []


class NoContainers(NoWorkloads):
    def learn(self, cgroup_id: int, path: str) -> Workload:
        return Workload(path, cgroup_names.parse(path), None)

    def removed(self, cgroup_id: int) -> None:
        pass

    def tick(self) -> None:
        pass

    def by_path(self, path: str) -> Workload | None:
        return None


class NoGoProbes:
    pending = 0

    def ensure(self, tgid: int, go: GoProcess) -> None:
        pass

    def poll(self, wait_s: float = 0.0) -> None:
        pass

    def sweep(self) -> None:
        pass

    def binary_profile(self, pid: int) -> BinaryProfile | None:
        return None

    def profile_reason(self, pid: int) -> str:
        return ""


class Observer(Protocol):
    """Told of each record sent (the Prometheus metrics, or NoObserver)."""

    def recorded(self, ev: event_pb2.OomEvent) -> None: ...
    def pressure_recorded(self, reasons: Sequence[str]) -> None: ...


class NoObserver:
    def recorded(self, ev: event_pb2.OomEvent) -> None:
        pass

    def pressure_recorded(self, reasons: Sequence[str]) -> None:
        pass


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
        cluster: str = "",
        workloads: Containers | None = None,
        kernel_log: LogRecovery | None = None,
        report_wait_ns: int = 300_000_000,
        sampler: Pressure | None = None,
        go_probes: GoDiscovery | None = None,
        watch_runtime: Callable[[int], None] | None = None,
        heap_profiles: HeapProfiles | None = None,
        kernel_text: KernelText | None = None,
        observer: Observer | None = None,
        privacy: Privacy | None = None,
        clock: Clock = boot_ns_now,
    ) -> None:
        self.privacy = privacy if privacy is not None else Privacy()
        self.source = source
        self.observer: Observer = observer if observer is not None else NoObserver()
        self.sinks = sinks
        self.hierarchy = hierarchy
        self.hooks = hooks
        self.processes = processes if processes is not None else ProcessCache()
        self.status_file = status_file
        self.node = node or node_name()
        self.cluster = cluster  # on every record ("" when none is known)
        self.boot_id = boot_id()
        self.workloads: Containers = workloads if workloads is not None else NoContainers()
        self.kernel_log: LogRecovery = kernel_log if kernel_log is not None else NoKernelLog()
        self.sampler: Pressure = sampler if sampler is not None else NoPressure()
        self.go_probes: GoDiscovery = go_probes if go_probes is not None else NoGoProbes()
        # Asks BPF for a runtime process's failing exit status (bcc_loader).
        self.watch_runtime: Callable[[int], None] = watch_runtime or (lambda tgid: None)
        self.heap_profiles = heap_profiles
        self.kernel_text = kernel_text
        self.clock = clock
        self.assembler = KillAssembler(
            boot_id=self.boot_id,
            hierarchy=hierarchy,
            processes=self.processes,
            hold_ns=hold_ns,
            report_wait_ns=report_wait_ns,
            reports=kernel_log,
            workloads=self.workloads,
            timelines=self.sampler,
            profiles=heap_profiles,
            memcg=AtKill(hierarchy.mount, hierarchy.version),
            clock=clock,
        )
        self.counters = Counters()
        self._stop = threading.Event()
        self._last_status_ns = 0
        # When the loop last went round: what the liveness probe reads.
        self.loop_at_ns = clock()

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
        if kill.user_signal:
            self.counters.userspace_kills_seen += 1
        else:
            self.counters.kills_seen += 1
        self._check_oom_path(kill)
        self._expect_profile(kill)
        self.assembler.add(kill)

    def _expect_profile(self, kill: KernelKill) -> None:
        """A Go victim's heap profile: waited for when BPF walks it, else
        why not (said on the record of a Go process only)."""
        tgid = kill.victim_tgid
        if self.heap_profiles is None or not tgid:
            return
        if kill.go_profile_due:
            self.heap_profiles.expect(tgid, kill.profile_key, self.go_probes.binary_profile(tgid))
        else:
            reason = self.go_probes.profile_reason(tgid)
            if reason:
                self.heap_profiles.not_due(tgid, kill.profile_key, reason)

    def on_profile(self, raw: bytes) -> None:
        ev = self._decode(decode.decode_profile_event, raw, "profile")
        if ev is not None and self.heap_profiles is not None:
            self.heap_profiles.on_event(ev)

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
        if note.kind is Kind.EXEC:
            info = self.processes.remember(note.tgid)
            if info is not None and info.go is not None:
                self.go_probes.ensure(note.tgid, info.go)
            if info is not None and info.outputs is not None:
                try:
                    self.watch_runtime(note.tgid)
                except BpfLoadError as exc:  # the map is full: its OOM death goes unseen
                    self.counters.runtime_watch_full += 1
                    log.warning("runtime.not_watched", pid=note.tgid, error=str(exc))
        elif note.kind is Kind.RUNTIME_EXIT:
            self._runtime_exit(note.tgid, note.what, note.boot_ns)
        elif note.kind is Kind.EXIT:
            self.assembler.exited(note.tgid, note.boot_ns)
        elif note.kind is Kind.REAP:
            self.assembler.reaped(note.tid, ReapStage(note.what), note.boot_ns)

    def on_cgroup(self, raw: Any) -> None:
        note = self._decode(decode.decode_cgroup_note, raw, "cgroup")
        if note is None:
            return
        if note.kind is Kind.CGROUP_MKDIR:
            self.workloads.learn(note.cgroup_id, note.path)
            self.sampler.learn(note.cgroup_id, note.path, new=True)
        else:
            self.workloads.removed(note.cgroup_id)
            self.sampler.forget(note.cgroup_id)

    def _runtime_exit(self, tgid: int, exit_code: int, boot_ns: int) -> None:
        """A JVM, Node or Go process ended with a failure: a record only if
        its own words say it ran out of memory (build/runtime_death.py)."""
        info = self.processes.get(tgid)
        if info is None:
            return
        path = info.outputs.memory_cgroup if info.outputs is not None else ""
        death = runtime_death.confirm(
            info, exit_code, self.workloads.by_path(path) if path else None
        )
        if isinstance(death, str):
            log.debug("runtime.exit_not_oom", pid=tgid, exit_code=exit_code, why=death)
            return
        self.counters.runtime_deaths += 1
        self._send(
            runtime_death.death_event(
                info,
                death,
                tgid=tgid,
                boot_ns=boot_ns,
                node=self.node,
                boot_id=self.boot_id,
                hierarchy=self.hierarchy,
                workloads=self.workloads,
            )
        )

    # -- records -----------------------------------------------------------

    def flush(self, now_ns: int | None = None) -> None:
        """Sends every kill the assembler has ready, in kill order."""
        for a in self.assembler.ready(now_ns):
            self._send(build_event(a, node=self.node, hooks=self.hooks))
        self.counters.held_too_long = self.assembler.held_too_long

    def emit_pressure(self) -> None:
        """Pressure records for the windows the sampler thread closed."""
        for report in self.sampler.take_reports():
            workload = self.workloads.lookup(report.cgroup_id, report.path)
            record = pressure_record(report, self.node, workload)
            record.cluster = self.cluster
            self.counters.pressure_records += 1
            self.observer.pressure_recorded(report.reasons)
            for sink in self.sinks:
                emit = getattr(sink, "emit_pressure", None)
                if emit is not None:
                    emit(record)
            log.info("pressure.recorded", cgroup=report.path, reasons=list(report.reasons))

    def record_from_log(self, now_ns: int | None = None) -> None:
        """Kills only the kernel's log (or only its counter) knows of."""
        # A kill the BPF side has, still being assembled (its victim slow to
        # exit, or queued behind one that is), is no orphan however long it
        # takes: its live record claims the report.
        for report in self.kernel_log.orphans(now_ns, live=self.assembler.victims()):
            path = report.constraint_fields.get("task_memcg", "")
            self._send(event_from_report(report, self._log_context(path)))
        for path, n in self.kernel_log.take_counter().items():
            ctx = self._log_context(path)
            seq = self.kernel_log.checkpoint_seq()
            ev = counter_event(n, ctx, seq, path, noticed_ns=self.clock())
            self._send(ev, kills=n)

    def _log_context(self, cgroup_path: str) -> LogContext:
        """For a kill known only from the log: the workload by path."""
        workload = self.workloads.by_path(cgroup_path) if cgroup_path else None
        return LogContext(self.node, self.boot_id, self.hierarchy.version, workload)

    def _send(self, event: event_pb2.OomEvent, kills: int = 1) -> None:
        # The one door records leave by: redacted, then cut to size.
        event.cluster = self.cluster
        self.privacy.apply(event)
        if fit_to_wire(event):
            self.counters.records_trimmed += 1
            log.warning("record.trimmed", id=event.id, missing=list(event.missing)[-3:])
        for sink in self.sinks:
            try:
                sink.emit(event)
            except OSError as exc:
                self.counters.sink_errors += 1
                log.error("record.sink_failed", sink=type(sink).__name__, error=str(exc))
        self.counters.records_emitted += 1
        self.observer.recorded(event)
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
        if (
            self.assembler.waiting_for_report()
            or self.go_probes.pending
            or (self.heap_profiles is not None and self.heap_profiles.waiting)
        ):
            return 5  # a kernel-log line, a Go binary's parse or a profile is on its way
        return poll_ms if len(self.assembler) else idle_poll_ms

    def _guarded(self, handle: Callable[[Any], None], kind: str) -> Callable[[Any], None]:
        """A callback for BCC that never lets an exception escape into it."""

        def guarded(raw: Any) -> None:
            try:
                handle(raw)
            except Exception:
                self.counters.callback_errors += 1
                log.exception("bpf.callback_failed", kind=kind)

        return guarded

    def health(self, stalled_after_s: float = 30.0) -> tuple[bool, str]:
        """(alive, why) for a liveness probe: the loop goes round at least
        once a second when idle, so one that has not for stalled_after_s is
        stuck (a hung callback, a deadlock), and a restart is the cure."""
        age_s = (self.clock() - self.loop_at_ns) / 1e9
        if age_s > stalled_after_s:
            return False, f"the event loop has not gone round for {age_s:.0f} s"
        return True, f"recording; the event loop went round {age_s:.1f} s ago"

    def run(self, poll_ms: int = 50, idle_poll_ms: int = 1000) -> None:
        """Polls until stopped. Events wake the poll at once; the timeout only
        paces hold deadlines (poll_ms while kills are pending) and housekeeping."""
        self.source.open_buffers(
            self._guarded(self.on_kill, "kill"),
            self._guarded(self.on_note, "note"),
            self._guarded(self.on_cgroup, "cgroup"),
            self._guarded(self.on_profile, "profile"),
        )
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self._stop.is_set():
            self.source.poll(self._poll_timeout_ms(poll_ms, idle_poll_ms))
            self.flush()
            self.record_from_log()
            self.emit_pressure()
            self.workloads.tick()
            self.go_probes.poll()
            if self.heap_profiles is not None:
                self.heap_profiles.poll()
            now = self.clock()
            self.loop_at_ns = now
            if now - self._last_status_ns >= 5_000_000_000:
                self._last_status_ns = now
                self.go_probes.sweep()
                self.check_losses()
                self.write_status()
        # Drain: what the kernel already handed over is recorded before exit.
        self.source.poll(0)
        self.flush(now_ns=self.clock() + self.assembler.hold_ns)
        self.emit_pressure()
        self.check_losses()
        self.write_status()
