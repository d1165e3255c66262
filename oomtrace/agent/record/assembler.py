"""One kill, one assembly: every fact about a kill is worked out here, once,
and the record builders only copy it.

A kill is held until its victim's last thread has exited (or the oom reaper
has finished with it), so the record can say how long freeing took; a victim
that does not exit within `hold_ns` is assembled anyway, saying so. Kills
leave in the order they happened: one still waiting holds back the ones after
it. Then each gets, in one place: its id and incident, the path of every memcg
level (a depth-cut chain resolved once), which memcg's limit was hit, the
trigger's path, the workload, the kernel's own report of it, and the timeline.

Pure apart from its collaborators, each behind a Protocol with a null object
for when it is not there, and its clock: tests drive it with their own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.host import Clock, boot_ns_now
from oomtrace.agent.kernel.decode import KernelKill, ReapStage
from oomtrace.agent.kernel_log.reports import ParsedReport
from oomtrace.agent.pressure.sampler import Point
from oomtrace.agent.record.breakdown import MemcgFiles
from oomtrace.agent.record.parts import record_id
from oomtrace.agent.runtimes.go.heap import KillProfiles
from oomtrace.agent.runtimes.go.sampling import GoPoint
from oomtrace.agent.runtimes.jvm.state import PerfRead, read_jvm_at_kill
from oomtrace.agent.runtimes.processes import ProcessCache, ProcessInfo
from oomtrace.v1.event_pb2 import NodeMemInfo, TmpfsMount

# Kills marked back to back by one OOM-killer call (a memory.oom.group kill)
# come within this of each other.
INCIDENT_WINDOW_NS = 1_000_000_000


# -- collaborators --------------------------------------------------------------------


class Reports(Protocol):
    """The kernel's log: each live kill claims its report there."""

    def claim(self, victim_pid: int) -> ParsedReport | None: ...


class Workloads(Protocol):
    def lookup(self, cgroup_id: int, path: str) -> Workload | None: ...


class Timelines(Protocol):
    """The pressure sampler's one-second points."""

    def timeline(self, cgroup_id: int, kill_ns: int) -> list[Point]: ...
    def go_timeline(self, tgid: int, kill_ns: int) -> list[GoPoint]: ...
    def missed(self, since_ns: int, until_ns: int) -> list[int]: ...


class Profiles(Protocol):
    """Go victims' heap profiles, as the assembly waits for them (go/heap.py)."""

    def pending(self, tgid: int, kill_ns: int) -> bool: ...
    def take(self, tgid: int, kill_ns: int) -> KillProfiles: ...


class MemcgReader(Protocol):
    """The memcg's own files at the kill (memcg_files.AtKill), for the
    breakdown where the report has no stats, and its tasks' tmpfs mounts."""

    def files(self, path: str, after_kill_ns: int) -> MemcgFiles | None: ...
    def tmpfs(self, path: str, victim_pid: int) -> list[TmpfsMount]: ...
    def top_cgroups(self) -> list[NodeMemInfo.CgroupUsage]: ...


class NoMemcgReader:
    def files(self, path: str, after_kill_ns: int) -> MemcgFiles | None:
        return None

    def tmpfs(self, path: str, victim_pid: int) -> list[TmpfsMount]:
        return []

    def top_cgroups(self) -> list[NodeMemInfo.CgroupUsage]:
        return []


class NoProfiles:
    def pending(self, tgid: int, kill_ns: int) -> bool:
        return False

    def take(self, tgid: int, kill_ns: int) -> KillProfiles:
        return KillProfiles()


class NoReports:
    def claim(self, victim_pid: int) -> ParsedReport | None:
        return None


class NoWorkloads:
    def lookup(self, cgroup_id: int, path: str) -> Workload | None:
        return None


class NoTimelines:
    def timeline(self, cgroup_id: int, kill_ns: int) -> list[Point]:
        return []

    def go_timeline(self, tgid: int, kill_ns: int) -> list[GoPoint]:
        return []

    def missed(self, since_ns: int, until_ns: int) -> list[int]:
        return []


# -- the facts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeline:
    cgroup_path: str  # the memcg whose limit was hit, else the victim's
    points: tuple[Point, ...]
    go_points: tuple[GoPoint, ...] = ()
    missed_ns: tuple[int, ...] = ()  # seconds the sampler took no point for


@dataclass(frozen=True, slots=True)
class AssembledKill:
    """Every per-kill fact, worked out once."""

    kill: KernelKill
    id: str
    incident_id: str
    boot_id: str
    cgroup_version: int
    # Each memcg level's path, as the kernel's report prints it (kill.memcgs order).
    paths: tuple[str, ...]
    # Index in kill.memcgs of the memcg whose limit was hit (None: global OOM,
    # or that memcg lies beyond the recorded ancestry: see oom_memcg_*).
    oom_level: int | None
    oom_memcg_id: int  # the memcg whose limit was hit; 0: none
    oom_memcg_path: str
    trigger_path: str
    process: ProcessInfo | None  # the victim, as read from /proc (at exec or at the kill)
    workload: Workload | None
    exit_ns: int | None = None  # from the kill to the victim's last thread's exit
    reap_ns: int | None = None  # from the kill to the oom reaper's finish
    report: ParsedReport | None = None
    timeline: Timeline | None = None
    missing: tuple[str, ...] = ()
    heap_profiles: KillProfiles = field(default_factory=KillProfiles)  # a Go victim's
    # The memcg whose limit was hit, as its files said when the kill was
    # assembled (only where the report holds no stats), and the tmpfs mounts
    # its tasks saw.
    memcg_files: MemcgFiles | None = None
    tmpfs: tuple[TmpfsMount, ...] = ()
    # A node-wide OOM: the memory cgroups that held most, read as the kill
    # arrived, the victim's own at its at-kill usage.
    top_cgroups: tuple[NodeMemInfo.CgroupUsage, ...] = ()
    jvm_perf: PerfRead | None = None  # a JVM victim's hsperfdata, read at the kill


def resolve(
    kill: KernelKill,
    *,
    boot_id: str,
    hierarchy: cgroups.MemoryHierarchy,
    process: ProcessInfo | None = None,
    workloads: Workloads | None = None,
    timelines: Timelines | None = None,
    report: ParsedReport | None = None,
    exit_ns: int | None = None,
    reap_ns: int | None = None,
    incident_id: str = "",
    missing: Sequence[str] = (),
) -> AssembledKill:
    """The facts of one kill from what is known of it."""
    missing = list(missing)
    own_id = record_id(boot_id, kill.boot_ns, kill.victim_tgid or kill.victim_tid)
    paths: list[str] = []
    if kill.memcgs:
        last_path = None
        if kill.depth_cut:
            last_path = hierarchy.find_by_id(kill.memcgs[-1].cgroup_id)
            if last_path is None:
                missing.append("cgroup.path: nested deeper than 8 levels; shown relative")
        paths = cgroups.level_paths(kill.memcgs, kill.depth_cut, last_path)
    level = cgroups.oom_level(kill)
    if level is not None:
        oom_id, oom_path = kill.memcgs[level].cgroup_id, paths[level]
    elif kill.oom_control is not None and kill.oom_control.memcg_id:
        oom_id = kill.oom_control.memcg_id
        oom_path = hierarchy.find_by_id(oom_id) or ""
    else:
        oom_id, oom_path = 0, ""
    workload = None
    if workloads is not None and kill.memcgs:
        workload = workloads.lookup(kill.memcgs[0].cgroup_id, paths[0])
    return AssembledKill(
        kill=kill,
        id=own_id,
        incident_id=incident_id or own_id,
        boot_id=boot_id,
        cgroup_version=hierarchy.version,
        paths=tuple(paths),
        oom_level=level,
        oom_memcg_id=oom_id,
        oom_memcg_path=oom_path,
        trigger_path=_trigger_path(kill, paths, hierarchy),
        process=process,
        workload=workload,
        exit_ns=exit_ns,
        reap_ns=reap_ns,
        report=report,
        timeline=_timeline(kill, level, paths, timelines) if timelines is not None else None,
        missing=tuple(missing),
    )


def _trigger_path(kill: KernelKill, paths: list[str], hierarchy: cgroups.MemoryHierarchy) -> str:
    if not paths:
        return ""
    if kill.trigger_tgid == kill.victim_tgid:
        return paths[0]
    for m, path in zip(kill.memcgs, paths, strict=True):
        if m.cgroup_id == kill.trigger_memcg_id:
            return path
    return hierarchy.find_by_id(kill.trigger_memcg_id) or ""


def _timeline(
    kill: KernelKill, level: int | None, paths: list[str], timelines: Timelines
) -> Timeline | None:
    """The points of the memcg whose limit was hit (else the victim's), the
    seconds among them the sampler missed, and the victim's Go runtime."""
    for i in ([level] if level is not None else []) + ([0] if kill.memcgs else []):
        points = timelines.timeline(kill.memcgs[i].cgroup_id, kill.boot_ns)
        if points:
            return Timeline(
                paths[i],
                tuple(points),
                tuple(timelines.go_timeline(kill.victim_tgid, kill.boot_ns)),
                tuple(timelines.missed(points[0].boot_ns, kill.boot_ns)),
            )
    return None


def _with_victims_usage(
    top: tuple[NodeMemInfo.CgroupUsage, ...], a: AssembledKill
) -> tuple[NodeMemInfo.CgroupUsage, ...]:
    """The victim's cgroup at its usage at mark_victim (the tree was read a
    moment later, its memory perhaps already freed), in its place by size."""
    if not a.paths:
        return top
    own = a.kill.memcgs[0]
    rows = [r for r in top if r.path != a.paths[0]]
    mine = next((r for r in top if r.path == a.paths[0]), None)
    usage = max(own.usage_bytes, mine.usage_bytes if mine is not None else 0)
    rows.append(
        NodeMemInfo.CgroupUsage(
            path=a.paths[0], usage_bytes=usage, limit_bytes=own.limit_bytes or 0
        )
    )
    rows.sort(key=lambda r: -r.usage_bytes)
    return tuple(rows[: len(top)])


# -- the pending kills ----------------------------------------------------------------


@dataclass
class _Pending:
    kill: KernelKill
    process: ProcessInfo | None
    exit_ns: int | None = None
    reap_ns: int | None = None
    done: bool = False
    report: ParsedReport | None = None
    top_cgroups: tuple[NodeMemInfo.CgroupUsage, ...] = ()
    jvm_perf: PerfRead | None = None


class KillAssembler:
    def __init__(
        self,
        *,
        boot_id: str,
        hierarchy: cgroups.MemoryHierarchy,
        processes: ProcessCache,
        hold_ns: int = 3_000_000_000,
        report_wait_ns: int = 300_000_000,
        reports: Reports | None = None,
        workloads: Workloads | None = None,
        timelines: Timelines | None = None,
        profiles: Profiles | None = None,
        memcg: MemcgReader | None = None,
        clock: Clock = boot_ns_now,
    ) -> None:
        """reports: None when no kernel log is read (no report is then
        expected, nor said to be missing)."""
        self.boot_id = boot_id
        self.hierarchy = hierarchy
        self.processes = processes
        self.hold_ns = hold_ns
        self.report_wait_ns = report_wait_ns
        self.reports: Reports = reports if reports is not None else NoReports()
        self.expect_reports = reports is not None
        self.workloads: Workloads = workloads if workloads is not None else NoWorkloads()
        self.timelines: Timelines = timelines if timelines is not None else NoTimelines()
        self.profiles: Profiles = profiles if profiles is not None else NoProfiles()
        self.memcg: MemcgReader = memcg if memcg is not None else NoMemcgReader()
        self.clock = clock
        self.held_too_long = 0
        self._pending: dict[int, _Pending] = {}  # by victim tgid, in kill order
        # The OOM-killer call the last kill belonged to: (trigger tid, oom memcg
        # id, boot ns, incident id).
        self._incident: tuple[int, int, int, str] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def victims(self) -> set[int]:
        """The victims (tgid, else tid) of the kills still being assembled."""
        return set(self._pending)

    def add(self, kill: KernelKill) -> None:
        # What was read at exec, while the process was whole; else the dying
        # victim's /proc now (its exe and environ may be gone already).
        process = None
        if kill.victim_tgid:
            process = self.processes.lookup(
                kill.victim_tgid, kill.victim_comm
            ) or self.processes.remember(kill.victim_tgid)
        process, perf = read_jvm_at_kill(self.processes, kill.victim_tgid, process)
        pending = _Pending(kill, process, jvm_perf=perf)
        if not kill.user_signal and kill.memcgs and cgroups.oom_level(kill) is None:
            # The whole node ran out: who held what, now, before the freed
            # memory of the victim is taken again.
            pending.top_cgroups = tuple(self.memcg.top_cgroups())
        self._pending[kill.victim_tgid or kill.victim_tid] = pending

    def exited(self, tgid: int, boot_ns: int) -> None:
        p = self._pending.get(tgid)
        if p is not None:
            p.exit_ns = boot_ns - p.kill.boot_ns
            p.done = True

    def reaped(self, tid: int, stage: ReapStage, boot_ns: int) -> None:
        # The reaper names the marked thread, not the thread group.
        for p in self._pending.values():
            if p.kill.victim_tid == tid:
                if stage is ReapStage.FINISH:
                    p.reap_ns = boot_ns - p.kill.boot_ns
                    p.done = True
                return

    def waiting_for_report(self) -> bool:
        """A finished kill waits a moment for its kernel-log line."""
        return self.expect_reports and any(
            p.done and p.report is None and not p.kill.user_signal for p in self._pending.values()
        )

    def ready(self, now_ns: int | None = None) -> list[AssembledKill]:
        """The kills that are done (or held past hold_ns), assembled, in kill order."""
        now_ns = self.clock() if now_ns is None else now_ns
        out = []
        while self._pending:
            key, p = next(iter(self._pending.items()))
            overdue = now_ns - p.kill.boot_ns >= self.hold_ns
            if not (p.done or overdue):
                break
            # A Go victim's heap profile is walked as it dies and symbolised
            # after: moments after its exit.
            if not overdue and self.profiles.pending(key, p.kill.profile_key):
                break
            # A userspace killer's kill has no report in the kernel's log.
            if p.report is None and not p.kill.user_signal:
                p.report = self.reports.claim(p.kill.victim_tgid or p.kill.victim_tid)
                # The kernel prints "Killed process" right after mark_victim;
                # give the log reader a moment to see it.
                if (
                    p.report is None
                    and self.expect_reports
                    and now_ns - p.kill.boot_ns < self.report_wait_ns
                    and not overdue
                ):
                    break
            del self._pending[key]
            out.append(self._assemble(p))
        return out

    def _assemble(self, p: _Pending) -> AssembledKill:
        missing = []
        if not p.done:
            self.held_too_long += 1
            missing.append(
                f"exit_ns: the victim had not exited {self.hold_ns / 1e9:g}s after the kill"
            )
        if p.report is None and self.expect_reports and not p.kill.user_signal:
            missing.append("kernel_report: not found in the kernel's log")
        if p.process is None and p.kill.victim_tgid:
            # The rings are drained one after the other: a victim's exec note
            # can be handled after its kill. It is in by now (the exit note
            # that released this kill comes after it on the same ring).
            p.process = self.processes.lookup(p.kill.victim_tgid, p.kill.victim_comm)
        a = resolve(
            p.kill,
            boot_id=self.boot_id,
            hierarchy=self.hierarchy,
            process=p.process,
            workloads=self.workloads,
            timelines=self.timelines,
            report=p.report,
            exit_ns=p.exit_ns,
            reap_ns=p.reap_ns,
            missing=missing,
        )
        if p.jvm_perf is not None:
            a = replace(a, jvm_perf=p.jvm_perf)
        profiles = self.profiles.take(p.kill.victim_tgid, p.kill.profile_key)
        if profiles != KillProfiles():
            a = replace(a, heap_profiles=profiles)
        a = self._memcg_at_kill(a)
        if p.top_cgroups:
            a = replace(a, top_cgroups=_with_victims_usage(p.top_cgroups, a))
        incident = self._incident_of(a)
        return a if incident == a.id else replace(a, incident_id=incident)

    def _memcg_at_kill(self, a: AssembledKill) -> AssembledKill:
        """The memcg's files where the report has no stats to break its usage
        down from, and its tmpfs mounts always (their pages outlive the victim)."""
        path = a.oom_memcg_path or (a.paths[0] if a.paths else "")
        if not path:
            return a
        files = None
        if a.report is None or not a.report.stats:
            files = self.memcg.files(path, max(0, self.clock() - a.kill.boot_ns))
        tmpfs = tuple(self.memcg.tmpfs(path, a.kill.victim_tgid))
        return replace(a, memcg_files=files, tmpfs=tmpfs) if files or tmpfs else a

    def _incident_of(self, a: AssembledKill) -> str:
        """One OOM-killer call marks its victims back to back from the same
        trigger thread, for the same memcg: they share the first one's id."""
        kill = a.kill
        last = self._incident
        if (
            last is not None
            and last[0] == kill.trigger_tid
            and last[1] == a.oom_memcg_id
            and 0 <= kill.boot_ns - last[2] < INCIDENT_WINDOW_NS
        ):
            self._incident = (kill.trigger_tid, a.oom_memcg_id, kill.boot_ns, last[3])
            return last[3]
        self._incident = (kill.trigger_tid, a.oom_memcg_id, kill.boot_ns, a.id)
        return a.id
