"""A JVM's memory flags as HotSpot resolves them, and where each came from.

HotSpot reads its options in this order, the last of a flag winning
(Arguments::parse): JAVA_TOOL_OPTIONS, then the command line (to which the
java launcher of JDK 9 and later has prepended JDK_JAVA_OPTIONS), then
_JAVA_OPTIONS. From them the maximum heap is worked out as its ergonomics
do (Arguments::set_heap_size): an explicit -Xmx/-XX:MaxHeapSize; otherwise
MaxRAMPercentage (25) of the memory it sees (the container's limit with
UseContainerSupport, the default, else the host's; capped by MaxRAM), or,
where MinRAMPercentage (50) of it is below the default MaxHeapSize (96 MiB
* 1.3 on 64-bit), that smaller share. Measured on OpenJDK 17 and 25 in v1
memory cgroups of 128, 200, 256, 300 and 1024 MiB: 64, 100, 126, 126 and
256 MiB.

Only the flags named in TRACKED are kept; the option strings themselves
never leave the node (they may hold -Dpassword=...)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from oomtrace.v1 import runtime_pb2

MIB = 1 << 20
# ScaleForWordSize(96 MiB) on a 64-bit VM: MaxHeapSize's own default.
DEFAULT_MAX_HEAP = 96 * MIB * 13 // 10
DEFAULT_MAX_RAM = 128 << 30  # MaxRAM on x86_64 and aarch64
HEAP_ALIGNMENT = 2 * MIB  # what the VMs measured align an ergonomic heap to
MAX_OPTIONS = 4096  # tokens looked at per source
MAX_TEXT = 64 << 10

FlagSource = runtime_pb2.FlagSource
COMMAND_LINE = runtime_pb2.COMMAND_LINE
JAVA_TOOL_OPTIONS = runtime_pb2.JAVA_TOOL_OPTIONS
JDK_JAVA_OPTIONS = runtime_pb2.JDK_JAVA_OPTIONS
UNDERSCORE_JAVA_OPTIONS = runtime_pb2.UNDERSCORE_JAVA_OPTIONS
DEFAULT = runtime_pb2.DEFAULT

ENV_VARS = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")
SOURCE_NAMES = {
    COMMAND_LINE: "command line",
    JAVA_TOOL_OPTIONS: "JAVA_TOOL_OPTIONS",
    JDK_JAVA_OPTIONS: "JDK_JAVA_OPTIONS",
    UNDERSCORE_JAVA_OPTIONS: "_JAVA_OPTIONS",
    DEFAULT: "default",
}

# -XX:Name=value flags kept (sizes and numbers), and -XX:+/-Name booleans.
VALUE_FLAGS = frozenset(
    {
        "MaxHeapSize",
        "InitialHeapSize",
        "MaxRAM",
        "MaxRAMPercentage",
        "MaxRAMFraction",
        "MinRAMPercentage",
        "MinRAMFraction",
        "InitialRAMPercentage",
        "MaxDirectMemorySize",
        "MaxMetaspaceSize",
        "CompressedClassSpaceSize",
        "ReservedCodeCacheSize",
        "ThreadStackSize",
        "NativeMemoryTracking",
        "HeapDumpPath",
        "ErrorFile",
        "OnOutOfMemoryError",
    }
)
BOOL_FLAGS = frozenset(
    {
        "UseContainerSupport",
        "UsePerfData",
        "ExitOnOutOfMemoryError",
        "CrashOnOutOfMemoryError",
        "HeapDumpOnOutOfMemoryError",
        "UseSerialGC",
        "UseParallelGC",
        "UseG1GC",
        "UseZGC",
        "UseShenandoahGC",
    }
)
# Values shown in full in the record; paths and commands are not (a path is
# the victim's business, a command may carry anything): only "set".
PRIVATE_VALUES = frozenset({"HeapDumpPath", "ErrorFile", "OnOutOfMemoryError"})
# -X options that are flags by another name.
X_ALIASES = {"-Xmx": "MaxHeapSize", "-Xms": "InitialHeapSize", "-Xss": "ThreadStackSize"}
# Launcher options whose value is the next argument.
LAUNCHER_VALUED = frozenset(
    {
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--limit-modules",
        "--add-reads",
        "--add-exports",
        "--add-opens",
        "--patch-module",
        "--enable-native-access",
        "--source",
    }
)


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    value: str
    source: runtime_pb2.FlagSource.ValueType
    text: str  # the argument as written (redacted for PRIVATE_VALUES)


@dataclass(frozen=True, slots=True)
class JvmFlags:
    """The last of each tracked flag, and what could not be read."""

    flags: dict[str, Flag] = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    def value(self, name: str) -> str | None:
        f = self.flags.get(name)
        return f.value if f is not None else None

    def enabled(self, name: str, default: bool) -> bool:
        v = self.value(name)
        return default if v is None else v == "true"


def split_options(text: str) -> list[str]:
    """An options variable's words, as HotSpot splits them: on whitespace,
    with single or double quotes grouping (no escapes)."""
    out: list[str] = []
    word: list[str] = []
    quote = ""
    in_word = False
    for ch in text[:MAX_TEXT]:
        if quote:
            if ch == quote:
                quote = ""
            else:
                word.append(ch)
        elif ch in "'\"":
            quote, in_word = ch, True
        elif ch.isspace():
            if in_word:
                out.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if in_word:
        out.append("".join(word))
    return out[:MAX_OPTIONS]


def launcher_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """The java launcher's own options, up to the main class, jar, module
    or source file (what follows belongs to the program), and the @argfiles
    among them (which the agent does not open)."""
    opts: list[str] = []
    argfiles: list[str] = []
    i = 1
    while i < len(argv) and i <= MAX_OPTIONS:
        a = argv[i]
        if a.startswith("@") and len(a) > 1:
            argfiles.append(a)
        elif not a.startswith("-") or a in ("-jar", "-m", "--module"):
            break
        elif a in LAUNCHER_VALUED:
            i += 1
        elif a.startswith(("--module=", "--source=")) or a == "--":
            if a.startswith("--module="):
                break
        else:
            opts.append(a)
        i += 1
    return opts, argfiles


def _flag(arg: str, source: runtime_pb2.FlagSource.ValueType) -> Flag | None:
    if arg.startswith("-XX:"):
        body = arg[4:]
        if body[:1] in "+-" and body[1:] in BOOL_FLAGS:
            return Flag(body[1:], "true" if body[0] == "+" else "false", source, arg)
        name, eq, value = body.partition("=")
        if eq and name in VALUE_FLAGS:
            text = f"-XX:{name}=<set>" if name in PRIVATE_VALUES else arg
            return Flag(name, "<set>" if name in PRIVATE_VALUES else value, source, text)
        return None
    for prefix, name in X_ALIASES.items():
        if arg.startswith(prefix) and len(arg) > len(prefix):
            return Flag(name, arg[len(prefix) :], source, arg)
    return None


def resolve(
    argv: list[str] | None, env: dict[str, str], java_major: int, launcher: bool
) -> JvmFlags:
    """argv: the process's command line (None: not known, as for a JVM
    embedded through JNI); env: the three option variables that were set."""
    missing: list[str] = []
    sources: list[tuple[runtime_pb2.FlagSource.ValueType, list[str]]] = []
    if "JAVA_TOOL_OPTIONS" in env:
        sources.append((JAVA_TOOL_OPTIONS, split_options(env["JAVA_TOOL_OPTIONS"])))
    if launcher and java_major >= 9 and "JDK_JAVA_OPTIONS" in env:
        sources.append((JDK_JAVA_OPTIONS, split_options(env["JDK_JAVA_OPTIONS"])))
    if argv is None:
        missing.append(
            "jvm.flags: the JVM was not started by the java launcher; options it "
            "was created with through JNI cannot be seen"
        )
    elif launcher:
        opts, argfiles = launcher_options(argv)
        sources.append((COMMAND_LINE, opts))
        if argfiles:
            missing.append(f"jvm.flags: {len(argfiles)} @argfile(s) on the command line not read")
    if "_JAVA_OPTIONS" in env:
        sources.append((UNDERSCORE_JAVA_OPTIONS, split_options(env["_JAVA_OPTIONS"])))
    flags: dict[str, Flag] = {}
    for source, words in sources:
        for w in words:
            if w.startswith(("-XX:Flags=", "-XX:VMOptionsFile=")):
                missing.append(f"jvm.flags: {w.split('=', 1)[0]} file not read")
                continue
            f = _flag(w, source)
            if f is not None:
                flags[f.name] = f
    return JvmFlags(flags, tuple(missing))


_SIZE = re.compile(r"^(\d+)([kKmMgGtT]?)$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int | None:
    """A HotSpot size ("1g", "512m", "1048576"), or None."""
    m = _SIZE.match(text.strip())
    if not m or len(m.group(1)) > 20:
        return None
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if 0 <= v <= 1e6 else None


@dataclass(frozen=True, slots=True)
class MaxHeap:
    bytes: int
    source: runtime_pb2.FlagSource.ValueType  # the flag's, or DEFAULT
    text: str  # how it was worked out


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def max_heap(
    f: JvmFlags, container_limit: int | None, host_memory: int, java_version: tuple[int, int]
) -> MaxHeap | None:
    """The maximum heap the JVM worked out (None: not known, e.g. a JVM too
    old to tell)."""
    explicit = f.flags.get("MaxHeapSize")
    if explicit is not None:
        size = parse_size(explicit.value)
        if size is not None and size > 0:
            return MaxHeap(
                size, explicit.source, f"{explicit.text} ({SOURCE_NAMES[explicit.source]})"
            )
    container = f.enabled("UseContainerSupport", _container_aware(java_version))
    seen = host_memory
    what = f"host memory of {host_memory // MIB} MiB"
    if container and container_limit and container_limit < host_memory:
        seen, what = container_limit, f"{container_limit // MIB} MiB container limit"
    elif not container and container_limit:
        what += " (-XX:-UseContainerSupport: the container limit ignored)"
    max_ram_flag = f.flags.get("MaxRAM")
    max_ram = parse_size(max_ram_flag.value) if max_ram_flag is not None else None
    if max_ram:
        seen, what = max_ram, f"MaxRAM of {max_ram // MIB} MiB"
    else:
        seen = min(seen, DEFAULT_MAX_RAM)
    pct, pct_src = _percentage(f, "MaxRAMPercentage", "MaxRAMFraction", 25.0)
    min_pct, min_src = _percentage(f, "MinRAMPercentage", "MinRAMFraction", 50.0)
    reasonable_max = int(seen * pct / 100)
    reasonable_min = int(seen * min_pct / 100)
    if reasonable_min < DEFAULT_MAX_HEAP:
        size, rule, src = reasonable_min, f"MinRAMPercentage {min_pct:g} %", min_src
        rule += " (a small memory: that share is below the default 124.8 MiB heap)"
    else:
        size, rule, src = (
            max(reasonable_max, DEFAULT_MAX_HEAP),
            f"MaxRAMPercentage {pct:g} %",
            pct_src,
        )
    text = f"{rule} of the {what}"
    text = "the JVM's default: " + text if src == DEFAULT else f"{text} ({SOURCE_NAMES[src]})"
    return MaxHeap(_align_up(size, HEAP_ALIGNMENT), src, text)


def _percentage(
    f: JvmFlags, pct_name: str, fraction_name: str, default: float
) -> tuple[float, runtime_pb2.FlagSource.ValueType]:
    pct = f.flags.get(pct_name)
    v = _number(pct.value) if pct is not None else None
    if pct is not None and v is not None:
        return v, pct.source
    frac = f.flags.get(fraction_name)
    n = _number(frac.value) if frac is not None else None
    if frac is not None and n:
        return 100.0 / n, frac.source
    return default, DEFAULT


def _container_aware(version: tuple[int, int]) -> bool:
    """UseContainerSupport came with JDK 10 and 8u191."""
    major, update = version
    return major >= 10 or (major == 8 and update >= 191) or major == 0


def java_version(text: str) -> tuple[int, int]:
    """("17.0.15") -> (17, 0); ("1.8.0_372") -> (8, 372); (0, 0) unreadable."""
    m = re.match(r"1\.8\.0(?:_(\d+))?", text)
    if m:
        return 8, int(m.group(1) or 0)
    m = re.match(r"(\d+)(?:\.(\d+))?", text)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)
