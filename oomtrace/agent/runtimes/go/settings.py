"""What was in effect in a Go process at the kill, and where it came from: the
GC settings the runtime held (the environment's, the program's own, or the
default), and the GCs counted just before the kill. Pure functions of what
discovery and the GC probe saw."""

from __future__ import annotations

import enum
import re

from oomtrace.agent.runtimes.go.buildinfo import GoProcess

NO_MEMORY_LIMIT = 1 << 62  # the runtime's "no limit" is math.MaxInt64
RECENT_NS = 10_000_000_000  # "recent" GCs: the last 10 s before the kill
STALLED_NS = 1_000_000_000  # no GC for this long before the kill: count up to the last one


class Source(enum.Enum):
    """Where a runtime setting in effect came from (GoRuntime.SettingSource)."""

    ENV = "env"
    PROGRAM = "program"  # debug.SetMemoryLimit, debug.SetGCPercent, runtime.GOMAXPROCS
    DEFAULT = "default"


def _gogc_from_env(text: str) -> int | None:
    text = text.strip().lower()
    if text == "off":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


def _source(env_value: int | None, in_effect: int, default: bool) -> Source:
    """ENV when the environment set what is in effect; PROGRAM when the
    program set something else (over the environment, or without it);
    DEFAULT when neither did."""
    if env_value is not None:
        return Source.ENV if env_value == in_effect else Source.PROGRAM
    return Source.DEFAULT if default else Source.PROGRAM


def gogc_source(env: dict[str, str], gc_percent: int) -> Source:
    env_value = _gogc_from_env(env["GOGC"]) if "GOGC" in env else None
    return _source(env_value, gc_percent, gc_percent == 100)


def memory_limit_source(env: dict[str, str], limit_bytes: int) -> Source:
    """limit_bytes: as the runtime holds it; NO_MEMORY_LIMIT or more is none."""
    unlimited = limit_bytes >= NO_MEMORY_LIMIT or limit_bytes <= 0
    env_value = None
    if "GOMEMLIMIT" in env:
        text = env["GOMEMLIMIT"].strip()
        env_value = NO_MEMORY_LIMIT if text.lower() == "off" else parse_size(text)
        if env_value is not None and unlimited and env_value >= NO_MEMORY_LIMIT:
            return Source.ENV
    return _source(env_value, limit_bytes, unlimited)


def gomaxprocs_source(go: GoProcess, gomaxprocs: int) -> Source:
    """Without GOMAXPROCS in the environment the runtime defaults to the CPUs
    the process may use, and from Go 1.25 to fewer under a cgroup CPU limit:
    there a lower value than the CPU count is taken as the default, since a
    program's own runtime.GOMAXPROCS call cannot be told from it."""
    env_value = None
    if "GOMAXPROCS" in go.env:
        try:
            env_value = int(go.env["GOMAXPROCS"])
        except ValueError:
            env_value = None
    if env_value is not None and env_value > 0:
        return _source(env_value, gomaxprocs, False)
    if go.cpus is None:
        return Source.DEFAULT
    cgroup_aware = version_tuple(go.build.version) >= (1, 25)
    default = gomaxprocs == go.cpus or (cgroup_aware and gomaxprocs < go.cpus)
    return Source.DEFAULT if default else Source.PROGRAM


def count_recent_gcs(
    gc_count: int,
    gc_times_ns: tuple[int, ...],
    ring: int,
    kill_ns: int,
    start_ns: int | None,
    last_gc_ns: int = 0,
) -> tuple[int, int, int]:
    """(GCs counted, the span they ended in, ns, and how long before the kill
    that span ends): only what was seen, never extrapolated. The span ends at
    the kill, or at the last GC when that came more than STALLED_NS before
    it: a process held at its memory cgroup's limit can sit in the kernel's
    reclaim for seconds with no GC at all (6.12 reclaims and refaults the
    program's own text a long while before it kills), and the GCs before
    that stall are what its runtime was doing. A process younger than 10 s
    at the span's end had all of its gc_count GCs in its life; a full ring of
    GC times that all fall in the 10 s covers only back to its oldest entry;
    otherwise the ring holds every GC of those 10 s."""
    end = last_gc_ns if last_gc_ns and kill_ns - last_gc_ns > STALLED_NS else kill_ns
    before_kill = kill_ns - end
    if start_ns is not None and 0 < end - start_ns <= RECENT_NS:
        return gc_count, end - start_ns, before_kill
    recent = [t for t in gc_times_ns if 0 <= end - t <= RECENT_NS]
    if recent and len(recent) == len(gc_times_ns) == ring:
        return len(recent), end - recent[0], before_kill
    return len(recent), RECENT_NS, before_kill


def parse_size(text: str) -> int | None:
    """A GOMEMLIMIT value in bytes (`40MiB`, `1GiB`, `123456`), or None."""
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
    text = text.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            try:
                return int(float(number) * units[suffix])
            except ValueError:
                return None
    try:
        return int(text)
    except ValueError:
        return None


def version_tuple(version: str) -> tuple[int, int]:
    """("go1.21.13") -> (1, 21); (0, 0) when unreadable."""
    m = re.match(r"go(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
