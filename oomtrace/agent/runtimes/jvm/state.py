"""A JVM's memory as HotSpot itself last counted it: its hsperfdata file,
found through the victim's mount namespace (/proc/PID/root) under the pid
the victim has in its own pid namespace (NSpid), read at the kill, and
summed into the record's `jvm.perf` part.

The file is read when the kill reaches the agent, before the victim has
exited: its /proc/PID/root is the only way into a container's /tmp, and
it goes with the victim. After the exit the host's own /tmp is tried (a
victim in the host's mount namespace). Bounded: a file larger than
perfdata.MAX_FILE_BYTES, a directory of more than MAX_USERS users, a
symlink planted in place of the file, each give a reason."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from oomtrace.agent.runtimes.jvm import perfdata
from oomtrace.agent.runtimes.outputs import ns_pid
from oomtrace.agent.runtimes.processes import ProcessCache, ProcessInfo
from oomtrace.v1 import runtime_pb2

MAX_USERS = 64  # hsperfdata_<user> directories looked at in one /tmp


@dataclass(frozen=True, slots=True)
class PerfRead:
    """The file's bytes, or why there are none."""

    data: bytes = b""
    missing: str = ""
    read_at: str = ""  # "before_exit", "after_exit"


def _read_file(path: Path, uid: int | None) -> bytes | str:
    """The file's bytes, or a reason. O_NOFOLLOW: the victim owns /tmp."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"cannot be opened ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if uid is not None and st.st_uid != uid:
            return f"owned by uid {st.st_uid}, not the victim's {uid}"
        if st.st_size > perfdata.MAX_FILE_BYTES:
            return f"{st.st_size} bytes, larger than hsperfdata ever is"
        return os.pread(fd, perfdata.MAX_FILE_BYTES, 0)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    finally:
        os.close(fd)


def find(tmp: Path, nspid: int, uid: int | None) -> bytes | str:
    """/tmp/hsperfdata_*/<nspid> under one root: the victim's user name is
    the one its root's passwd file gives, which the agent need not read, so
    every hsperfdata_ directory is looked in (bounded), the file owned by
    the victim's uid kept."""
    try:
        with os.scandir(tmp) as it:
            dirs = []
            for entry in it:
                if entry.name.startswith("hsperfdata_"):
                    dirs.append(entry.name)
                    if len(dirs) >= MAX_USERS:
                        break
    except OSError as exc:
        return f"{tmp} cannot be listed ({exc.strerror})"
    reasons = []
    for name in sorted(dirs):
        got = _read_file(tmp / name / str(nspid), uid)
        if isinstance(got, bytes):
            return got
        if got != "absent":
            reasons.append(f"{name}/{nspid}: {got}")
    return "; ".join(reasons) or f"no hsperfdata_*/{nspid} in {tmp}"


def read_at_kill(
    pid: int, uid: int | None, proc: Path = Path("/proc"), nspid: int | None = None
) -> PerfRead:
    """The victim's hsperfdata through its root while it is alive, else the
    host's /tmp under its host pid."""
    nspid = nspid or ns_pid(pid, proc)
    if nspid is not None:
        got = find(proc / str(pid) / "root" / "tmp", nspid, uid)
        if isinstance(got, bytes):
            return PerfRead(got, read_at="before_exit")
        first = got
    else:
        first = "its namespaced pid could not be read (it had exited)"
    got = find(Path("/tmp"), pid, uid)
    if isinstance(got, bytes):
        return PerfRead(got, read_at="after_exit")
    return PerfRead(missing=f"no hsperfdata file: through the victim's root: {first}")


def perf_part(pd: perfdata.PerfData, read_at: str) -> runtime_pb2.JvmPerfData:
    """The record's summary of one buffer."""
    L, S = pd.longs, pd.strings
    out = runtime_pb2.JvmPerfData(
        file_bytes=pd.size, entries=pd.entries, bad_entries=pd.bad_entries, read_at=read_at
    )
    out.gc_policy = S.get("sun.gc.policy.name", "")
    out.last_gc_cause = S.get("sun.gc.lastCause", "")
    out.gc_cause = S.get("sun.gc.cause", "")
    out.vm_version = S.get("java.property.java.vm.version", "")
    out.vm_vendor = S.get("java.property.java.vm.vendor", "")
    for gen in range(8):
        base = f"sun.gc.generation.{gen}"
        if f"{base}.capacity" not in L:
            break
        used = 0
        for sp in range(8):
            sbase = f"{base}.space.{sp}"
            if f"{sbase}.used" not in L:
                break
            used += _u(L[f"{sbase}.used"])
            out.spaces.append(_space(S.get(f"{sbase}.name", f"space {gen}.{sp}"), L, sbase))
        g = _space(S.get(f"{base}.name", f"generation {gen}"), L, base)
        g.used_bytes = used
        out.generations.append(g)
    gens = out.generations
    out.heap_used_bytes = sum(g.used_bytes for g in gens)
    out.heap_committed_bytes = sum(g.committed_bytes for g in gens)
    # Serial and Parallel split the heap between their generations ("Copy:MSC",
    # "ParScav:MSC"); G1, Shenandoah and ZGC give each the whole heap's maximum.
    split = ":" in out.gc_policy
    maxes = [g.max_bytes for g in gens]
    out.heap_max_bytes = (sum(maxes) if split else max(maxes)) if maxes else 0
    for name, part in (
        ("metaspace", out.metaspace),
        ("compressedclassspace", out.compressed_class_space),
    ):
        base = f"sun.gc.{name}"
        if f"{base}.used" in L:
            part.CopyFrom(_space(name, L, base))
    if "sun.ci.nmethodCodeSize" in L:
        out.code_bytes = _u(L["sun.ci.nmethodCodeSize"])
    out.threads_live = min(_u(L.get("java.threads.live", 0)), 1 << 31)
    out.threads_daemon = min(_u(L.get("java.threads.daemon", 0)), 1 << 31)
    out.threads_peak = min(_u(L.get("java.threads.livePeak", 0)), 1 << 31)
    hz = L.get("sun.os.hrt.frequency", 0)
    for c in range(8):
        base = f"sun.gc.collector.{c}"
        if f"{base}.invocations" not in L:
            break
        ticks = _u(L.get(f"{base}.time", 0))
        out.collectors.append(
            runtime_pb2.JvmCollector(
                name=S.get(f"{base}.name", f"collector {c}"),
                count=_u(L[f"{base}.invocations"]),
                time_ns=ticks * 1_000_000_000 // hz if hz > 0 else 0,
            )
        )
    return out


def _u(v: int) -> int:
    """A long the victim wrote, as an unsigned field can hold it."""
    return min(max(v, 0), (1 << 63) - 1)


def _space(name: str, L: dict[str, int], base: str) -> runtime_pb2.JvmSpace:
    return runtime_pb2.JvmSpace(
        name=name[:64],
        used_bytes=_u(L.get(f"{base}.used", 0)),
        committed_bytes=_u(L.get(f"{base}.capacity", 0)),
        max_bytes=_u(L.get(f"{base}.maxCapacity", 0)),
    )


def read_jvm_at_kill(
    processes: ProcessCache, tgid: int, process: ProcessInfo | None
) -> tuple[ProcessInfo | None, PerfRead | None]:
    """At the kill, while the victim is still there: a process not known as
    any runtime is looked at once more for an embedded JVM (libjvm.so in its
    mappings), and a JVM's hsperfdata is read."""
    if not tgid:
        return process, None
    if process is None or (process.jvm is None and process.go is None and process.node is None):
        process = processes.remember(tgid, maps=True) or process
    if process is None or process.jvm is None:
        return process, None
    jvm = process.jvm
    if not jvm.flags.enabled("UsePerfData", True):
        text = jvm.flags.flags["UsePerfData"].text
        return process, PerfRead(missing=f"hsperfdata is off: {text}")
    return process, read_at_kill(tgid, jvm.uid, processes.proc)
