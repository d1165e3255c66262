"""Which processes are JVMs, read when a process is discovered (at agent
start, at exec), while its environment and command line can still be read.

A JVM of any HotSpot vendor is known by its java launcher (an executable
named `java` with a libjvm.so beside it in its JDK) or, for a JVM embedded
in another program, by libjvm.so among its mappings (looked at when a
process is read again at the kill, since a launcher maps it only after
exec). The version and vendor come from the JDK's `release` file
(JAVA_VERSION, IMPLEMENTOR), else from the path of the JDK. All paths are
read through /proc/PID/root: the JDK inside a container's image."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from oomtrace.agent.runtimes.go.buildinfo import go_env
from oomtrace.agent.runtimes.jvm.flags import ENV_VARS, JvmFlags, java_version, resolve

MAX_RELEASE_BYTES = 16 << 10
MAX_MAPS_BYTES = 4 << 20
# Where a JDK keeps libjvm.so, relative to its home (JDK 9+, then JDK 8's JRE).
LIBJVM = (
    "lib/server/libjvm.so",
    "lib/client/libjvm.so",
    "jre/lib/amd64/server/libjvm.so",
    "jre/lib/aarch64/server/libjvm.so",
)


@dataclass(frozen=True, slots=True)
class JvmProcess:
    java_home: str  # as the process sees it
    version: str  # "17.0.15", "" when unknown
    vendor: str
    detected_by: str  # "java launcher", "libjvm.so mapping"
    flags: JvmFlags
    env: dict[str, str]  # the option variables that were set (never shipped)
    uid: int | None = None


def _release(root: Path, home: str) -> dict[str, str]:
    try:
        with open(root / home.lstrip("/") / "release", "rb") as f:
            text = f.read(MAX_RELEASE_BYTES).decode("utf-8", "replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key in ("JAVA_VERSION", "IMPLEMENTOR", "JAVA_RUNTIME_VERSION"):
            out[key] = value.strip().strip('"')[:128]
    return out


def _has_libjvm(root: Path, home: str) -> bool:
    return any(os.path.isfile(root / home.lstrip("/") / lib) for lib in LIBJVM)


def _version_from_path(home: str) -> str:
    m = re.search(r"(?:jdk|java|jre|openjdk)[-_]?(1\.8\.0[_\d]*|\d+(?:\.\d+)*)", home)
    return m.group(1) if m else ""


def home_of_libjvm(path: str) -> str:
    """/usr/lib/jvm/x/lib/server/libjvm.so -> /usr/lib/jvm/x."""
    for lib in LIBJVM:
        if path.endswith("/" + lib):
            return path[: -len(lib) - 1]
    return str(Path(path).parent.parent)


def mapped_libjvm(pid: int, proc: Path) -> str | None:
    """The path of libjvm.so in the process's mappings, if it has one."""
    try:
        with open(proc / str(pid) / "maps", "rb") as f:
            raw = f.read(MAX_MAPS_BYTES)
    except OSError:
        return None
    i = raw.find(b"/libjvm.so")
    if i < 0:
        return None
    start = raw.rfind(b" ", 0, i) + 1
    end = raw.find(b"\n", i)
    return raw[start : end if end > 0 else len(raw)].decode("utf-8", "replace").strip()


def _uid(pid: int, proc: Path) -> int | None:
    try:
        return os.stat(proc / str(pid)).st_uid
    except OSError:
        return None


def discover(
    pid: int, exe: str, argv: list[str], proc: Path = Path("/proc"), maps: bool = False
) -> JvmProcess | None:
    """The process as a JVM, or None. maps: also look for libjvm.so among
    its mappings (a JVM embedded in another program)."""
    root = proc / str(pid) / "root"
    home, by = "", ""
    if os.path.basename(exe) == "java":
        candidate = str(Path(exe).parent.parent)
        if _has_libjvm(root, candidate) or (root / candidate.lstrip("/") / "release").is_file():
            home, by = candidate, "java launcher"
    if not home and maps:
        lib = mapped_libjvm(pid, proc)
        if lib is not None:
            home, by = home_of_libjvm(lib.removesuffix(" (deleted)")), "libjvm.so mapping"
    if not home:
        return None
    release = _release(root, home)
    version = release.get("JAVA_VERSION", "") or _version_from_path(home)
    env = go_env(pid, proc, ENV_VARS)
    launcher = by == "java launcher"
    flags = resolve(argv if launcher else None, env, java_version(version)[0], launcher)
    return JvmProcess(
        home, version, release.get("IMPLEMENTOR", ""), by, flags, env, _uid(pid, proc)
    )
