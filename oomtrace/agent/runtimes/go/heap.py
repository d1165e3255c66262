"""A Go victim's heap profile, from BPF's copy of the runtime's buckets to a
pprof file in the record.

BPF walks runtime.mbuckets when the victim dequeues its SIGKILL (bpf/go.c)
and sends one event per bucket, then one that ends the walk. Here they are
gathered per kill (the events can come before or after the kill's own, on
another buffer), the PCs turned into frames by the parser process from the
binary the victim ran (go/frames.py), and the profile built the way
runtime/pprof writes a heap profile (runtime/pprof/protomem.go): four sample
types scaled by the sampling rate, the runtime's own frames above the first
frame of the program hidden, inlined frames folded into one location.

The assembly (record/assembler.py) holds a Go victim's kill until its profile is
here or the hold runs out; then take() gives the profile, or why there is
none."""

from __future__ import annotations

import gzip
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from oomtrace.agent.kernel.decode import GoBucket, GoProfileEnd, ProfileStatus
from oomtrace.v1 import event_pb2, pprof_pb2

log = structlog.get_logger(__name__)

# A profile bigger than this (gzipped) leaves only its top sites in the
# record: records are bounded by the collector's message size (1 MiB).
MAX_PPROF_BYTES = 384 << 10  # each: the kill's and the one before it
TOP_SITES = 10
# A walk whose kill never came (its events outlived a lost kill) is dropped.
STALE_NS = 60_000_000_000

ENABLE_HINT = (
    "import runtime/pprof (or net/http/pprof) in the program: the linker then keeps "
    "memory profiling on, which costs nothing until a profile is written"
)
# How the reasons for no profile start when profiling itself was off (the
# verdict says how to turn it on).
OFF_BY_LINKER = "the linker turned memory profiling off in this binary"
OFF_BY_PROGRAM = "the program had turned memory profiling off"
# Before 5.18 the oom reaper frees a victim's memory at once, and a victim
# that was asleep can lose that race to its own SIGKILL.
REAPED = (
    "the victim's memory could not be read when it dequeued its SIGKILL "
    "(already freed by the oom reaper?)"
)


@dataclass(frozen=True, slots=True)
class BinaryProfile:
    """What the agent knows of a victim's binary when its kill arrives: the
    binary held open (a dup the caller hands over), where mbuckets is in the
    file (with the walk's run-time address it gives the load bias), and
    moduledata's gofunc offset for its Go version."""

    fd: int
    mbuckets: int
    gofunc: int
    name: str


class Frames(Protocol):
    """The parser process, as the profiles see it (GoProbes)."""

    def symbolize(self, token: Any, fd: int, pcs: list[int], gofunc: int) -> None: ...
    def symbolized(self) -> list[tuple[Any, list[list[Any] | None] | None, str]]: ...


@dataclass
class _Walk:
    tgid: int
    kill_ns: int  # 0: a "before" walk, taken at a GC near the memcg's limit
    seen_ns: int
    expected: bool = False  # the kill arrived, flagged due (or said why not)
    binary: BinaryProfile | None = None
    buckets: list[GoBucket] = field(default_factory=list)
    end: GoProfileEnd | None = None
    before: _Walk | None = None  # the process's last "before" walk, if any
    symbolizing: bool = False
    pcs: list[int] = field(default_factory=list)  # link-time, as sent to be symbolised
    profile: event_pb2.GoHeapProfile | None = None
    before_profile: event_pb2.GoHeapProfile | None = None
    missing: str = ""

    @property
    def done(self) -> bool:
        return not self.symbolizing and (self.profile is not None or bool(self.missing))


@dataclass(frozen=True, slots=True)
class KillProfiles:
    """What a kill's record gets: the profile at the kill (or why none), and
    the one taken before it near the memcg's limit, if any."""

    profile: event_pb2.GoHeapProfile | None = None
    missing: str = ""
    before: event_pb2.GoHeapProfile | None = None


# "Before" walks are kept per process until its kill, the newest only; a
# process that is never killed has its walk dropped after this.
BEFORE_KEPT_NS = 15 * 60 * 1_000_000_000
MAX_BEFORE = 1024


class HeapProfiles:
    def __init__(self, frames: Frames, *, now_ns: Any, hooked: bool = True) -> None:
        """hooked: the walk's hook (signal_deliver) is attached."""
        self.frames = frames
        self.now_ns = now_ns
        self.hooked = hooked
        self._walks: dict[tuple[int, int], _Walk] = {}
        self._before: dict[int, _Walk] = {}  # by tgid: the newest finished "before" walk
        self.profiles = 0  # profiles put in records
        self.before_profiles = 0
        self.missing = 0  # Go victims' records without one

    def _walk(self, tgid: int, kill_ns: int) -> _Walk:
        key = (tgid, kill_ns)
        w = self._walks.get(key)
        if w is None:
            w = self._walks[key] = _Walk(tgid, kill_ns, self.now_ns())
        return w

    def expect(self, tgid: int, kill_ns: int, binary: BinaryProfile | None) -> None:
        """A kill flagged with a profile due: its walk is waited for."""
        w = self._walk(tgid, kill_ns)
        w.expected = True
        w.before = self._before.pop(tgid, None)
        if binary is None:
            w.missing = "the victim's binary was no longer known to the agent"
        elif not self.hooked:
            os.close(binary.fd)
            w.missing = "raw_tracepoint/signal_deliver could not be attached on this kernel"
        else:
            w.binary = binary
        self._submit(w)

    def not_due(self, tgid: int, kill_ns: int, why: str) -> None:
        """A kill whose profile is not walked, and why."""
        w = self._walk(tgid, kill_ns)
        w.expected = True
        w.missing = why
        self._before.pop(tgid, None)

    @property
    def waiting(self) -> bool:
        """A profile is on its way: the event loop polls sooner."""
        return any(w.expected and not w.done for w in self._walks.values())

    def on_event(self, ev: GoBucket | GoProfileEnd) -> None:
        w = self._walk(ev.tgid, ev.kill_ns)
        if not isinstance(ev, GoProfileEnd):
            w.buckets.append(ev)
        elif ev.kill_ns:
            w.end = ev
            self._submit(w)
        else:
            # A "before" walk is whole: kept for the process's kill.
            del self._walks[(ev.tgid, 0)]
            w.end = ev
            self._before.pop(ev.tgid, None)
            self._before[ev.tgid] = w
            while len(self._before) > MAX_BEFORE:
                del self._before[next(iter(self._before))]

    def _submit(self, w: _Walk) -> None:
        if w.symbolizing or w.binary is None or (w.end is None and not w.missing):
            return
        if not w.missing:
            w.missing = _why_unusable(w)
        # The kill's walk, and the one before it: symbolised together.
        walks = [x for x in (w, w.before) if x is not None and not _why_unusable(x)]
        if not walks:
            return
        binary = w.binary
        w.pcs = sorted({pc - _bias(x, binary) for x in walks for b in x.buckets for pc in b.pcs})
        self.frames.symbolize((w.tgid, w.kill_ns), w.binary.fd, w.pcs, w.binary.gofunc)
        w.symbolizing = True

    def poll(self) -> None:
        for token, frames, error in self.frames.symbolized():
            w = self._walks.get(token)
            if w is None:
                continue
            w.symbolizing = False
            if frames is None:
                w.missing = w.missing or f"its stacks could not be symbolised: {error}"
                continue
            self._build(w, dict(zip(w.pcs, frames, strict=False)))
        now = self.now_ns()
        for key, w in list(self._walks.items()):
            if not w.expected and now - w.seen_ns > STALE_NS:
                self._forget(key)
        for tgid, b in list(self._before.items()):
            if now - b.seen_ns > BEFORE_KEPT_NS:
                del self._before[tgid]

    def _build(self, w: _Walk, by_pc: dict[int, list[Any] | None]) -> None:
        assert w.binary is not None
        now = self.now_ns()
        wall = time.time_ns() - now  # the boot clock's zero, on the wall clock
        try:
            sites: Sites = {}
            if not w.missing and w.end is not None:
                w.profile, sites = build(
                    w.buckets, w.end, by_pc, _bias(w, w.binary), w.binary.name, wall + w.kill_ns
                )
            b = w.before
            if b is not None and b.end is not None and not _why_unusable(b):
                bp, before_sites = build(
                    b.buckets, b.end, by_pc, _bias(b, w.binary), w.binary.name, wall + b.end.boot_ns
                )
                bp.taken_ns_before_kill = max(0, w.kill_ns - b.end.boot_ns)
                if b.end.memcg_max_pages:
                    bp.memcg_percent = b.end.memcg_usage_pages * 100 // b.end.memcg_max_pages
                w.before_profile = bp
                if w.profile is not None:
                    w.profile.growth.extend(growth(sites, before_sites))
        except ValueError as exc:
            w.missing = w.missing or f"the profile could not be built: {exc}"

    def pending(self, tgid: int, kill_ns: int) -> bool:
        w = self._walks.get((tgid, kill_ns))
        return w is not None and w.expected and not w.done

    def take(self, tgid: int, kill_ns: int) -> KillProfiles:
        """The kill's profiles, or why there is none (the hold ran out first)."""
        key = (tgid, kill_ns)
        w = self._walks.get(key)
        if w is None or not w.expected:
            return KillProfiles()
        self._forget(key)
        if w.before_profile is not None:
            self.before_profiles += 1
        if w.profile is not None:
            self.profiles += 1
            return KillProfiles(w.profile, "", w.before_profile)
        self.missing += 1
        why = w.missing
        if not why:
            why = (
                "the victim did not dequeue its SIGKILL before the agent stopped waiting"
                if w.end is None
                else "its stacks were not symbolised before the agent stopped waiting"
            )
        return KillProfiles(None, why, w.before_profile)

    def _forget(self, key: tuple[int, int]) -> None:
        w = self._walks.pop(key)
        if w.binary is not None:
            os.close(w.binary.fd)


def _bias(w: _Walk, binary: BinaryProfile) -> int:
    """A PIE's load bias: where the walk found mbuckets, less where the file has it."""
    assert w.end is not None
    return w.end.mbuckets - binary.mbuckets


def _why_unusable(w: _Walk) -> str:
    """Why a finished walk gives no profile ("" when it does)."""
    end = w.end
    if end is None:
        return "the walk did not end"
    if end.status is ProfileStatus.READ_FAILED:
        return REAPED
    if end.status is ProfileStatus.BAD_BUCKET:
        return "a bucket of the runtime's profile did not look like one; the walk stopped"
    if end.rate <= 0:
        return f"{OFF_BY_PROGRAM} (runtime.MemProfileRate = 0)"
    if not w.buckets:
        return "the runtime had sampled no allocation yet"
    return ""


@dataclass(slots=True)
class SiteTotals:
    """One site's figures, scaled to estimates of every allocation. `inuse`
    is as of the last completed GC (what runtime/pprof shows); `since_gc` is
    what the runtime has not published yet: allocated since that GC, less what
    the sweeps since freed (since_gc_alloc_bytes: the allocations alone)."""

    inuse_bytes: int = 0
    inuse_objects: int = 0
    alloc_bytes: int = 0
    since_gc_bytes: int = 0
    since_gc_objects: int = 0
    since_gc_alloc_bytes: int = 0

    @property
    def now_bytes(self) -> int:
        """In use as far as the runtime knew at the walk."""
        return self.inuse_bytes + self.since_gc_bytes

    @property
    def now_objects(self) -> int:
        return self.inuse_objects + self.since_gc_objects


# (function, file, line) -> its figures
Sites = dict[tuple[str, str, int], SiteTotals]


def growth(at_kill: Sites, before: Sites) -> list[event_pb2.HeapSite]:
    """The sites whose bytes in use grew most between the two walks. Each
    side counts what was not yet published too, so the growth is what was
    allocated less what was freed in between, however many GCs ran."""
    out = []
    for (function, file, line), now in at_kill.items():
        old = before.get((function, file, line), SiteTotals())
        if now.now_bytes - old.now_bytes > 0:
            out.append(
                event_pb2.HeapSite(
                    function=function,
                    file=file,
                    line=line,
                    inuse_bytes=now.now_bytes - old.now_bytes,
                    inuse_objects=now.now_objects - old.now_objects,
                    alloc_bytes=now.alloc_bytes
                    + now.since_gc_alloc_bytes
                    - old.alloc_bytes
                    - old.since_gc_alloc_bytes,
                )
            )
    return sorted(out, key=lambda x: -x.inuse_bytes)[:TOP_SITES]


# -- the profile ----------------------------------------------------------------------

_RUNTIME = ("runtime.", "internal/runtime/")


def scale(count: int, size: int, rate: int) -> tuple[int, int]:
    """runtime/pprof's scaleHeapSample: a sampled (count, bytes) to the
    estimate of all allocations, given one sample per `rate` bytes on average.
    A negative difference (more swept than allocated since a GC) scales as
    its opposite does."""
    if count == 0 or size == 0:
        return 0, 0
    if count < 0 or size < 0:
        neg_count, neg_size = scale(-count, -size, rate)
        return -neg_count, -neg_size
    if rate <= 1:
        return count, size
    avg = size / count
    s = 1 / (1 - math.exp(-avg / rate))
    return int(count * s), int(size * s)


@dataclass(frozen=True, slots=True)
class _Frame:
    function: str
    file: str
    line: int
    start_line: int
    entry: int
    inlined: bool


def _frames(by_pc: dict[int, list[Any] | None], pcs: Sequence[int]) -> list[tuple[int, _Frame]]:
    out = []
    for pc in pcs:
        f = by_pc.get(pc)
        if f is None:
            out.append((pc, _Frame("?", "?", 0, 0, pc, False)))
        else:
            out.append(
                (pc, _Frame(str(f[0]), str(f[1]), int(f[2]), int(f[3]), int(f[4]), bool(f[5])))
            )
    return out


def _hide_runtime(frames: list[tuple[int, _Frame]]) -> list[tuple[int, _Frame]]:
    """The frames from the first that is not the runtime's (all of them if
    every frame is): what protomem.go shows of a heap sample."""
    for i, (_pc, f) in enumerate(frames):
        if not f.function.startswith(_RUNTIME):
            return frames[i:]
    return frames


def build(
    buckets: Sequence[GoBucket],
    end: GoProfileEnd,
    by_pc: dict[int, list[Any] | None],
    bias: int,
    binary_name: str,
    wall_ns: int,
) -> tuple[event_pb2.GoHeapProfile, Sites]:
    """The record's part (the pprof file, gzipped, and the top sites), and
    every site's totals."""
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        return strings.setdefault(text, len(strings))

    prof = pprof_pb2.Profile()
    for typ, unit in (
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ):
        prof.sample_type.add(type=s(typ), unit=s(unit))
    prof.period_type.type, prof.period_type.unit = s("space"), s("bytes")
    prof.period = end.rate
    prof.time_nanos = wall_ns
    m = prof.mapping.add(id=1, filename=s(binary_name), has_functions=True)
    m.has_filenames = m.has_line_numbers = m.has_inline_frames = True

    functions: dict[tuple[str, str], int] = {}
    locations: dict[tuple[int, ...], int] = {}
    sites: Sites = defaultdict(SiteTotals)
    total_inuse = total_alloc = total_since = 0

    def function_id(f: _Frame) -> int:
        key = (f.function, f.file)
        fid = functions.get(key)
        if fid is None:
            fid = functions[key] = len(functions) + 1
            prof.function.add(
                id=fid,
                name=s(f.function),
                system_name=s(f.function),
                filename=s(f.file),
                start_line=f.start_line,
            )
        return fid

    for b in buckets:
        frames = _hide_runtime(_frames(by_pc, [pc - bias for pc in b.pcs]))
        # Fold inlined frames into the physical frame that follows them (the
        # runtime lists each inlined call at its inline mark's PC).
        groups: list[list[tuple[int, _Frame]]] = []
        for pc, f in frames:
            if groups and groups[-1][-1][1].inlined and groups[-1][-1][1].entry == f.entry:
                groups[-1].append((pc, f))
            else:
                groups.append([(pc, f)])
        loc_ids = []
        for g in groups:
            key = tuple(pc for pc, _f in g)
            lid = locations.get(key)
            if lid is None:
                lid = locations[key] = len(locations) + 1
                loc = prof.location.add(id=lid, mapping_id=1, address=g[0][0] + bias - 1)
                for _pc, f in g:
                    loc.line.add(function_id=function_id(f), line=f.line)
            loc_ids.append(lid)
        alloc_objects, alloc_space = scale(b.allocs, b.alloc_bytes, end.rate)
        inuse_objects, inuse_space = scale(
            b.allocs - b.frees, b.alloc_bytes - b.free_bytes, end.rate
        )
        sample = prof.sample.add(
            location_id=loc_ids, value=[alloc_objects, alloc_space, inuse_objects, inuse_space]
        )
        if b.allocs:
            sample.label.add(key=s("bytes"), num=b.alloc_bytes // b.allocs)
        p = b.pending
        since_objects, since_space = scale(
            p.allocs - p.frees, p.alloc_bytes - p.free_bytes, end.rate
        )
        _objects, since_alloc = scale(p.allocs, p.alloc_bytes, end.rate)
        total_inuse += inuse_space
        total_alloc += alloc_space
        total_since += since_space
        if frames:
            _pc, leaf = frames[0]
            site = sites[(leaf.function, leaf.file, leaf.line)]
            site.inuse_bytes += inuse_space
            site.inuse_objects += inuse_objects
            site.alloc_bytes += alloc_space
            site.since_gc_bytes += since_space
            site.since_gc_objects += since_objects
            site.since_gc_alloc_bytes += since_alloc
    prof.string_table.extend(strings)

    out = event_pb2.GoHeapProfile(
        sample_rate=end.rate,
        buckets=end.buckets,
        buckets_cut=end.more,
        stacks_cut=end.stacks_cut,
        buckets_lost=end.lost,
        walk_ns=end.walk_ns,
        inuse_bytes=total_inuse,
        alloc_bytes=total_alloc,
        since_gc_bytes=total_since,
    )
    data = gzip.compress(prof.SerializeToString(), compresslevel=6)
    if len(data) <= MAX_PPROF_BYTES:
        out.pprof = data
    # The sites holding most at the walk, counting what the last GC had not
    # published: at a kill, that is often what crossed the limit.
    for (function, file, line), t in sorted(sites.items(), key=lambda kv: -kv[1].now_bytes)[
        :TOP_SITES
    ]:
        out.top.add(
            function=function,
            file=file,
            line=line,
            inuse_bytes=t.inuse_bytes,
            inuse_objects=t.inuse_objects,
            alloc_bytes=t.alloc_bytes,
            since_gc_bytes=t.since_gc_bytes,
        )
    return out, dict(sites)
