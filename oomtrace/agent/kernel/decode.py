"""Hop one of the event model: BCC's view of a bpf/oomtrace.h struct to a
plain, typed kernel record. Pages become bytes here, because the page size is
a fact of the kernel that produced them."""

from __future__ import annotations

import enum
import resource
import struct
from dataclasses import dataclass
from typing import Any

from oomtrace.agent.errors import DecodeError
from oomtrace.agent.kernel.oom_caller import KernelText, OomPath

PAGE_SIZE = resource.getpagesize()

# Mirror bpf/oomtrace.h (tests/unit/test_header.py reads both and fails when
# they differ): BCC's event() decodes the structs themselves, but their array
# lengths, kinds and flags are needed here by name.
MEMCG_DEPTH = 8  # OOMT_MEMCG_DEPTH
KSTACK_DEPTH = 24  # OOMT_KSTACK_DEPTH
CGROUP_NAME_LEN = 128  # OOMT_CGROUP_NAME_LEN
KILLER_SAID_LEN = 256  # OOMT_KILLER_SAID_LEN
GO_RING = 32  # OOMT_GO_RING
GO_STACK_DEPTH = 64  # OOMT_GO_STACK_DEPTH


class Kind(enum.IntEnum):
    """enum oomt_kind: what an event is."""

    KILL = 1
    EXIT = 2
    REAP = 3
    EXEC = 4
    CGROUP_MKDIR = 5
    CGROUP_RMDIR = 6
    GO_BUCKET = 7
    GO_PROFILE = 8
    USER_KILL = 9
    RUNTIME_EXIT = 10


class ReapStage(enum.IntEnum):
    """OOMT_REAP_*: an OOMT_REAP note's `what`."""

    START = 1
    FINISH = 2
    SKIP = 3


# oomt_kill.flags (OOMT_F_*)
F_OOM_CONTROL = 0x1
F_CMDLINE = 0x2
F_NO_MM = 0x4
F_DEPTH_CUT = 0x8
F_TASK_UNKNOWN = 0x10
# oomt_kill.go_flags (OOMT_GO_*)
GO_F_GC = 0x1
GO_F_CONTROLLER = 0x2
GO_F_PROFILE_DUE = 0x4

# The kernel's "unlimited" for a page counter is PAGE_COUNTER_MAX, which is
# LONG_MAX / PAGE_SIZE; anything this large means no limit.
_UNLIMITED_PAGES = (1 << 62) // PAGE_SIZE


class OcConstraint(enum.IntEnum):
    """enum oom_constraint in mm/oom_kill.c."""

    NONE = 0
    CPUSET = 1
    MEMORY_POLICY = 2
    MEMCG = 3


@dataclass(frozen=True, slots=True)
class MemcgLevel:
    """One memory cgroup on the victim's path, read at the kill."""

    cgroup_id: int
    name: str
    usage_bytes: int
    limit_bytes: int | None  # None: unlimited
    memsw_usage_bytes: int
    memsw_limit_bytes: int | None
    failcnt: int


@dataclass(frozen=True, slots=True)
class OomControl:
    constraint: OcConstraint
    total_bytes: int  # the memory weighed against (oom_control.totalpages)
    chosen_points: int
    order: int
    gfp_mask: int
    memcg_id: int  # 0 for a global OOM


@dataclass(frozen=True, slots=True)
class GoState:
    """The victim's Go runtime state, as the uprobes last saw it."""

    gc_count: int
    last_gc_ns: int  # boot clock
    gc_times_ns: tuple[int, ...]  # recent GC end times, oldest first
    controller: bool  # the fields below were read (a known Go layout)
    gc_percent: int  # -1: GOGC=off
    memory_limit_bytes: int
    heap_live_bytes: int
    heap_marked_bytes: int
    heap_goal_bytes: int
    gomaxprocs: int  # runtime.gomaxprocs: the value in effect, however it was set


@dataclass(frozen=True, slots=True)
class KernelKill:
    boot_ns: int
    victim_tgid: int
    victim_tid: int
    victim_comm: str
    victim_uid: int
    oom_score_adj: int
    threads: int
    total_vm_bytes: int
    anon_rss_bytes: int
    file_rss_bytes: int
    shmem_rss_bytes: int
    swap_bytes: int
    pgtables_bytes: int
    exe_name: str
    cmdline: str | None  # None when the victim was not the trigger
    trigger_tgid: int
    trigger_tid: int
    trigger_comm: str
    trigger_memcg_id: int
    memcgs: tuple[MemcgLevel, ...]  # the victim's memcg first, then its ancestors
    depth_cut: bool  # memcgs stops short of the hierarchy root
    no_mm: bool
    task_unknown: bool
    oom_control: OomControl | None
    go: GoState | None = None
    kernel_stack: tuple[int, ...] = ()  # the trigger's, innermost first
    go_profile_due: bool = False  # the victim's heap profile is walked at its SIGKILL
    # The time its walk goes by: the kill's, or the kernel's SIGKILL's when
    # the victim dequeued that before mark_victim ran (bpf/go.c).
    go_profile_key: int = 0

    @property
    def profile_key(self) -> int:
        """What this kill's heap profile is known by (HeapProfiles)."""
        return self.go_profile_key or self.boot_ns

    # A userspace OOM killer's kill: the signal it sent (0: the kernel's kill);
    # the trigger is then the killer.
    user_signal: int = 0
    killer_said: str = ""  # its last log write before the signal (kprobe/ksys_write)
    oom_path: OomPath = OomPath.UNKNOWN  # who called the OOM killer, from kernel_stack


def _go_state(ev: Any) -> GoState | None:
    flags = int(getattr(ev, "go_flags", 0))
    if not flags & GO_F_GC and not flags & GO_F_CONTROLLER:
        return None
    pos = int(ev.go_ring_pos)
    ring = [int(t) for t in ev.go_gc_ns]
    n = min(pos, GO_RING)
    times = tuple(ring[(pos - n + i) % GO_RING] for i in range(n))
    return GoState(
        gc_count=int(ev.go_gc_count),
        last_gc_ns=int(ev.go_last_gc_ns),
        gc_times_ns=times,
        controller=bool(flags & GO_F_CONTROLLER),
        gc_percent=int(ev.go_gc_percent),
        memory_limit_bytes=int(ev.go_memory_limit),
        heap_live_bytes=int(ev.go_heap_live),
        heap_marked_bytes=int(ev.go_heap_marked),
        heap_goal_bytes=int(ev.go_heap_goal),
        gomaxprocs=int(ev.go_gomaxprocs),
    )


@dataclass(frozen=True, slots=True)
class KernelNote:
    """The short events: a victim's exit, the reaper's progress, an exec."""

    kind: Kind
    what: int  # a ReapStage for Kind.REAP
    boot_ns: int
    tgid: int
    tid: int


def _said(ev: Any) -> str:
    """A userspace killer's last log write: one line or a few, as text."""
    n = max(0, min(int(getattr(ev, "killer_said_len", 0)), KILLER_SAID_LEN))
    raw = bytes(ev.killer_said)[:n] if n else b""
    return raw.decode("utf-8", "replace").strip()


def _text(raw: Any) -> str:
    data = bytes(raw)
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _limit(pages: int) -> int | None:
    return None if pages >= _UNLIMITED_PAGES or pages == 0 else pages * PAGE_SIZE


def decode_cmdline(raw: bytes) -> str:
    """argv as /proc/PID/cmdline holds it (NUL-separated) to one line."""
    return " ".join(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0"))


def decode_kill(ev: Any, text: KernelText | None = None) -> KernelKill:
    """An OOMT_KILL or OOMT_USER_KILL event (BCC's ctypes view, or anything
    with its fields). text: the running kernel's, to place the kill by its stack."""
    if ev.kind not in (Kind.KILL, Kind.USER_KILL):
        raise DecodeError(f"expected a kill event (kind {int(Kind.KILL)}), got kind {ev.kind}")
    depth = int(ev.memcg_depth)
    if not 0 <= depth <= MEMCG_DEPTH:
        raise DecodeError(f"kill event has memcg_depth {depth}, outside 0..{MEMCG_DEPTH}")
    names = bytes(ev.memcg_names)
    memcgs = tuple(
        MemcgLevel(
            cgroup_id=int(ev.memcg_id[i]),
            name=_text(names[i * CGROUP_NAME_LEN : (i + 1) * CGROUP_NAME_LEN]),
            usage_bytes=int(ev.memcg_usage_pages[i]) * PAGE_SIZE,
            limit_bytes=_limit(int(ev.memcg_max_pages[i])),
            memsw_usage_bytes=int(ev.memcg_memsw_usage_pages[i]) * PAGE_SIZE,
            memsw_limit_bytes=_limit(int(ev.memcg_memsw_max_pages[i])),
            failcnt=int(ev.memcg_failcnt[i]),
        )
        for i in range(depth)
    )
    flags = int(ev.flags)
    oc = None
    if flags & F_OOM_CONTROL:
        try:
            constraint = OcConstraint(int(ev.oc_constraint))
        except ValueError:
            raise DecodeError(f"unknown oom constraint {ev.oc_constraint}") from None
        oc = OomControl(
            constraint=constraint,
            total_bytes=int(ev.oc_totalpages) * PAGE_SIZE,
            chosen_points=int(ev.oc_chosen_points),
            order=int(ev.oc_order),
            gfp_mask=int(ev.oc_gfp_mask),
            memcg_id=int(ev.oc_memcg_id),
        )
    cmdline = None
    if flags & F_CMDLINE:
        n = max(0, min(int(ev.cmdline_len), len(bytes(ev.cmdline))))
        cmdline = decode_cmdline(bytes(ev.cmdline)[:n])
    stack_len = min(int(getattr(ev, "kstack_len", 0)), KSTACK_DEPTH)
    stack = tuple(int(ip) for ip in ev.kstack[:stack_len]) if stack_len else ()
    return KernelKill(
        boot_ns=int(ev.boot_ns),
        victim_tgid=int(ev.victim_tgid),
        victim_tid=int(ev.victim_tid),
        victim_comm=_text(ev.victim_comm),
        victim_uid=int(ev.victim_uid),
        oom_score_adj=int(ev.oom_score_adj),
        threads=int(ev.nr_threads),
        total_vm_bytes=int(ev.total_vm_pages) * PAGE_SIZE,
        anon_rss_bytes=int(ev.anon_pages) * PAGE_SIZE,
        file_rss_bytes=int(ev.file_pages) * PAGE_SIZE,
        shmem_rss_bytes=int(ev.shmem_pages) * PAGE_SIZE,
        swap_bytes=int(ev.swap_entries) * PAGE_SIZE,
        pgtables_bytes=int(ev.pgtables_bytes),
        exe_name=_text(ev.exe_name),
        cmdline=cmdline,
        trigger_tgid=int(ev.trigger_tgid),
        trigger_tid=int(ev.trigger_tid),
        trigger_comm=_text(ev.trigger_comm),
        trigger_memcg_id=int(ev.trigger_memcg_id),
        memcgs=memcgs,
        depth_cut=bool(flags & F_DEPTH_CUT),
        no_mm=bool(flags & F_NO_MM),
        task_unknown=bool(flags & F_TASK_UNKNOWN),
        oom_control=oc,
        go=_go_state(ev),
        go_profile_due=bool(int(getattr(ev, "go_flags", 0)) & GO_F_PROFILE_DUE),
        go_profile_key=int(getattr(ev, "go_profile_key", 0)),
        user_signal=int(ev.user_signal) if ev.kind == Kind.USER_KILL else 0,
        killer_said=_said(ev) if ev.kind == Kind.USER_KILL else "",
        kernel_stack=stack,
        oom_path=text.oom_path(stack) if text is not None else OomPath.UNKNOWN,
    )


def decode_note(ev: Any) -> KernelNote:
    kind = int(ev.kind)
    if kind not in (Kind.EXIT, Kind.REAP, Kind.EXEC, Kind.RUNTIME_EXIT):
        raise DecodeError(f"unknown note kind {kind}")
    return KernelNote(
        kind=Kind(kind),
        what=int(ev.what),
        boot_ns=int(ev.boot_ns),
        tgid=int(ev.tgid),
        tid=int(ev.tid),
    )


@dataclass(frozen=True, slots=True)
class KernelCgroupNote:
    kind: Kind  # CGROUP_MKDIR or CGROUP_RMDIR
    cgroup_id: int
    level: int
    boot_ns: int
    path: str  # relative to the hierarchy root, as the kernel passes it


def decode_cgroup_note(ev: Any) -> KernelCgroupNote:
    kind = int(ev.kind)
    if kind not in (Kind.CGROUP_MKDIR, Kind.CGROUP_RMDIR):
        raise DecodeError(f"unknown cgroup note kind {kind}")
    return KernelCgroupNote(
        kind=Kind(kind),
        cgroup_id=int(ev.cgroup_id),
        level=int(ev.level),
        boot_ns=int(ev.boot_ns),
        path=_text(ev.path),
    )


# -- a Go victim's heap profile (struct oomt_go_bucket, struct oomt_go_profile) --------

_BUCKET = struct.Struct("<IIQQQQQQQQQQII")  # then `depth` u64 PCs
_PROFILE = struct.Struct("<IIQQQqQIIIIIIQQ")


PROFILE_BEFORE = 1  # OOMT_PROFILE_BEFORE: oomt_go_profile.why


class ProfileStatus(enum.IntEnum):
    """OOMT_PROFILE_*: how a heap-profile walk ended."""

    OK = 0
    READ_FAILED = 1
    BAD_BUCKET = 2


@dataclass(frozen=True, slots=True)
class Counts:
    """A memory-profile cycle's counts (or the sum of several)."""

    allocs: int
    frees: int
    alloc_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class GoBucket:
    """One runtime memory-profile bucket: an allocation stack and its counts
    as of the last completed GC (what runtime/pprof shows), and those the
    runtime has not published yet (allocated since, freed by sweeps since)."""

    tgid: int
    kill_ns: int
    size: int
    allocs: int
    frees: int
    alloc_bytes: int
    free_bytes: int
    pending: Counts
    nstk: int
    pcs: tuple[int, ...]  # run-time return addresses, innermost first (at most nstk)


@dataclass(frozen=True, slots=True)
class GoProfileEnd:
    tgid: int
    kill_ns: int
    boot_ns: int
    walk_ns: int
    rate: int  # runtime.MemProfileRate at the kill
    mbuckets: int  # run-time address of runtime.mbuckets
    status: ProfileStatus
    buckets: int
    more: bool
    stacks_cut: int
    lost: int
    before: bool = False  # taken at a GC near the memcg's limit, not at the kill
    memcg_usage_pages: int = 0  # before: the memcg that passed the threshold
    memcg_max_pages: int = 0


def decode_profile_event(raw: bytes) -> GoBucket | GoProfileEnd:
    """A profiles-buffer event, from its raw bytes (bucket events are as long
    as their stack)."""
    if len(raw) < 4:
        raise DecodeError(f"a profile event of {len(raw)} bytes")
    kind = struct.unpack_from("<I", raw)[0]
    if kind == Kind.GO_PROFILE:
        if len(raw) < _PROFILE.size:
            raise DecodeError(f"a profile end of {len(raw)} bytes")
        f = _PROFILE.unpack_from(raw)
        try:
            status = ProfileStatus(f[7])
        except ValueError:
            raise DecodeError(f"unknown profile status {f[7]}") from None
        return GoProfileEnd(
            tgid=f[1],
            kill_ns=f[2],
            boot_ns=f[3],
            walk_ns=f[4],
            rate=f[5],
            mbuckets=f[6],
            status=status,
            buckets=f[8],
            more=bool(f[9]),
            stacks_cut=f[10],
            lost=f[11],
            before=f[12] == PROFILE_BEFORE,
            memcg_usage_pages=f[13],
            memcg_max_pages=f[14],
        )
    if kind != Kind.GO_BUCKET or len(raw) < _BUCKET.size:
        raise DecodeError(f"a profile event of kind {kind} and {len(raw)} bytes")
    f = _BUCKET.unpack_from(raw)
    depth = f[13]
    if depth > GO_STACK_DEPTH or len(raw) < _BUCKET.size + 8 * depth:
        raise DecodeError(f"a bucket of depth {depth} in {len(raw)} bytes")
    pcs = struct.unpack_from(f"<{depth}Q", raw, _BUCKET.size)
    return GoBucket(
        tgid=f[1],
        kill_ns=f[2],
        size=f[3],
        allocs=f[4],
        frees=f[5],
        alloc_bytes=f[6],
        free_bytes=f[7],
        pending=Counts(*f[8:12]),
        nstk=f[12],
        pcs=pcs,
    )
