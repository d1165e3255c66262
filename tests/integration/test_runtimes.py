"""JVMs and Node.js OOM-killed by their cgroup's limit: the record names the
runtime, its memory flags and where each came from, HotSpot's own heap
figures, and a verdict with the flag and a value that fits.

JVM starts are slow on a busy 2-core machine: the test program is compiled
once per JDK (javac) and each test runs one JVM."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from tempfile import TemporaryFile, mkdtemp
from typing import Any

import pytest

from tests.integration.harness import MIB, AgentProcess, scratch_cgroup

JDK17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")
TEMURIN25 = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
NODE = Path("/usr/bin/node")
GROW = Path(__file__).parent / "jvm" / "Grow.java"

jdks = [
    pytest.param(JDK17, id="openjdk17"),
    pytest.param(
        TEMURIN25,
        id="temurin25",
        marks=pytest.mark.skipif(
            not (TEMURIN25 / "bin/java").exists(),
            reason="no Temurin 25 JDK on this machine (it is only on some machine kinds)",
        ),
    ),
]
need_jdk17 = pytest.mark.skipif(
    not (JDK17 / "bin/javac").exists(),
    reason="openjdk-17-jdk-headless is not installed (make setup)",
)
need_node = pytest.mark.skipif(not NODE.exists(), reason="nodejs is not installed (make setup)")


# Compiled classes kept between runs, like var/oomgo: the guest kernel cannot
# write the repository, and javac under its emulation took over 300 s.
CLASS_CACHE = Path(__file__).resolve().parents[2] / "var/jvm-classes"


def compile_grow(jdk: Path, out: Path) -> Path:
    """The folder holding Grow.class as this JDK compiles it: the cached one
    when the source has not changed (make test-kernels compiles on the host
    before booting a guest), else compiled into var/jvm-classes, or into
    `out` where the repository is read-only."""
    key = hashlib.sha256(GROW.read_bytes() + str(jdk).encode()).hexdigest()[:12]
    cached = CLASS_CACHE / f"{jdk.name}-{key}"
    if (cached / "Grow.class").exists():
        return cached
    try:
        CLASS_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(mkdtemp(dir=CLASS_CACHE))
    except OSError:
        tmp = out
        out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(jdk / "bin/javac"), "-d", str(tmp), str(GROW)], check=True, timeout=900)
    if tmp == out:
        return out
    try:
        tmp.rename(cached)
    except OSError:  # another run kept it first
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def compile_every_grow(out: Path) -> dict[Path, Path]:
    """Grow.class per installed JDK (make test-kernels runs this on the host)."""
    return {
        jdk: compile_grow(jdk, out / jdk.name)
        for jdk in (JDK17, TEMURIN25)
        if (jdk / "bin/javac").exists()
    }


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Grow.class per JDK."""
    return compile_every_grow(Path(tmp_path_factory.mktemp("classes")))


def codes(rec: dict[str, Any]) -> list[str]:
    return [v["code"] for v in rec["verdicts"]]


def kill_java(
    agent: AgentProcess,
    jdk: Path,
    classes: dict[Path, Path],
    flags: list[str],
    mode: str,
    limit: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    if jdk not in classes:
        pytest.skip(f"no javac in {jdk}")
    with scratch_cgroup(limit) as cg, TemporaryFile() as out:
        argv = [str(jdk / "bin/java"), *flags, "-cp", str(classes[jdk]), "Grow", mode]
        p = cg.spawn_argv(argv, env={"PATH": "/usr/bin", **(env or {})}, stdout=out)
        assert p.wait(180) == -9
        (rec,) = agent.take(1, timeout=30, where=lambda r: r["victim"]["pid"] == p.pid)
    return rec


@need_jdk17
@pytest.mark.parametrize("jdk", jdks)
def test_jvm_heap_max_above_the_limit(
    agent: AgentProcess, jdk: Path, classes: dict[Path, Path]
) -> None:
    """java -Xmx1g in a 256 MiB cgroup: the heap was allowed past the limit."""
    rec = kill_java(agent, jdk, classes, ["-Xmx1g"], "heap", 256 * MIB)
    j = rec["jvm"]
    assert j["detected_by"] == "java launcher"
    assert j["version"].split(".")[0] == ("17" if jdk == JDK17 else "25")
    assert {"name": "MaxHeapSize", "value": "1g", "source": "COMMAND_LINE", "text": "-Xmx1g"} in j[
        "flags"
    ]
    assert int(j["max_heap_bytes"]) == 1 << 30
    perf = j["perf"]
    # HotSpot's own figures: the heap held most of what the kernel counted.
    assert int(perf["heap_max_bytes"]) == 1 << 30
    assert int(perf["heap_used_bytes"]) > 100 * MIB
    assert int(perf["metaspace"]["used_bytes"]) > 0
    assert perf["threads_live"] > 0
    assert perf["collectors"]
    assert perf["read_at"] in ("before_exit", "after_exit")
    assert "JVM_HEAP_MAX_ABOVE_LIMIT" in codes(rec), rec["verdicts"]
    v = next(v for v in rec["verdicts"] if v["code"] == "JVM_HEAP_MAX_ABOVE_LIMIT")
    # The suggested -Xmx fits under the limit with what was seen outside the heap.
    xmx = int(v["suggestion"].split("-Xmx")[1].split("m")[0])
    anon = int(rec["victim"]["anon_rss_bytes"])
    off_heap = max(anon - int(perf["heap_committed_bytes"]), 0)
    assert xmx >= 16
    assert xmx * MIB + off_heap < 256 * MIB, (v, off_heap)


@need_jdk17
def test_jvm_flags_from_the_environment(agent: AgentProcess, classes: dict[Path, Path]) -> None:
    """-Xmx from JAVA_TOOL_OPTIONS, overridden by _JAVA_OPTIONS (read after
    the command line), and secrets in those variables never copied."""
    rec = kill_java(
        agent,
        JDK17,
        classes,
        [],
        "heap",
        256 * MIB,
        env={
            "JAVA_TOOL_OPTIONS": "-Xmx100m -Dapi.token=hunter2-secret",
            "_JAVA_OPTIONS": "-Xmx512m",
        },
    )
    j = rec["jvm"]
    flags = {f["name"]: f for f in j["flags"]}
    assert flags["MaxHeapSize"] == {
        "name": "MaxHeapSize",
        "value": "512m",
        "source": "UNDERSCORE_JAVA_OPTIONS",
        "text": "-Xmx512m",
    }
    assert "hunter2" not in str(rec)
    assert int(j["perf"]["heap_max_bytes"]) == 512 * MIB
    assert "JVM_HEAP_MAX_ABOVE_LIMIT" in codes(rec), rec["verdicts"]
    v = next(v for v in rec["verdicts"] if v["code"] == "JVM_HEAP_MAX_ABOVE_LIMIT")
    assert "-Xmx512m (_JAVA_OPTIONS)" in v["explanation"]
    pct = int(v["suggestion"].split("MaxRAMPercentage=")[1].split(")")[0])
    assert 20 <= pct < 90


@need_jdk17
def test_jvm_default_heap_filling_direct_buffers(
    agent: AgentProcess, classes: dict[Path, Path]
) -> None:
    """No heap flag in a 128 MiB cgroup: the JVM's default heap is
    MinRAMPercentage (50 %) of the limit, 64 MiB; direct buffers (allowed
    1 GiB by JDK_JAVA_OPTIONS, which the launcher reads) fill the rest: the
    record says the memory was outside the heap, and names
    MaxDirectMemorySize and NMT."""
    rec = kill_java(
        agent,
        JDK17,
        classes,
        [],
        "direct",
        128 * MIB,
        env={"JDK_JAVA_OPTIONS": "-XX:MaxDirectMemorySize=1g"},
    )
    j = rec["jvm"]
    (flag,) = j["flags"]
    assert flag["source"] == "JDK_JAVA_OPTIONS"
    assert int(j["max_direct_memory_bytes"]) == 1 << 30
    assert int(j["perf"]["heap_max_bytes"]) == 64 * MIB
    assert j["max_heap_from"].startswith("the JVM's default: MinRAMPercentage 50 %")
    assert int(j["perf"]["heap_used_bytes"]) < 64 * MIB
    assert "JVM_OFF_HEAP_GROWTH" in codes(rec), rec["verdicts"]
    v = next(v for v in rec["verdicts"] if v["code"] == "JVM_OFF_HEAP_GROWTH")
    assert "MaxDirectMemorySize" in v["suggestion"]
    assert "NativeMemoryTracking" in v["suggestion"]
    assert "JVM_HEAP_MAX_ABOVE_LIMIT" not in codes(rec)


@need_jdk17
def test_jvm_without_perf_data(agent: AgentProcess, classes: dict[Path, Path]) -> None:
    rec = kill_java(agent, JDK17, classes, ["-Xmx1g", "-XX:-UsePerfData"], "heap", 128 * MIB)
    j = rec["jvm"]
    assert "perf" not in j
    assert j["perf_missing"] == "hsperfdata is off: -XX:-UsePerfData"
    assert "JVM_PERF_DATA_OFF" in codes(rec)
    assert "JVM_HEAP_MAX_ABOVE_LIMIT" in codes(rec)


NODE_GROW = (
    "const keep = []; setTimeout(function grow() { for (let i = 0; i < 200; i++) "
    "keep.push(new Array(2048).fill(i + Math.random())); setImmediate(grow); }, 1000);"
)


def kill_node(
    agent: AgentProcess, argv: list[str], env: dict[str, str], limit: int
) -> tuple[dict[str, Any], int]:
    """The record of a growing node's kill, and the heap_size_limit the same
    node binary, flags and cgroup report (the rule the record derives is
    checked against the installed Node, whatever its version)."""
    with scratch_cgroup(limit) as cg, TemporaryFile() as out:
        probe = cg.spawn_argv(
            [str(NODE), *argv, "-p", "v8.getHeapStatistics().heap_size_limit"],
            env={"PATH": "/usr/bin", **env},
            stdout=out,
        )
        assert probe.wait(60) == 0
        out.seek(0)
        heap_size_limit = int(out.read())
        p = cg.spawn_argv([str(NODE), *argv, "-e", NODE_GROW], env={"PATH": "/usr/bin", **env})
        # Usually seconds; once, on a busy v1 host, over 120 s: at the limit
        # the kernel kept reclaiming node's own code pages (charged to the
        # cgroup) instead of killing, and the heap crept on.
        assert p.wait(300) == -9
        (rec,) = agent.take(1, timeout=30, where=lambda r: r["victim"]["pid"] == p.pid)
    return rec, heap_size_limit


@need_node
def test_node_default_flags(agent: AgentProcess) -> None:
    """Node with default flags in a 128 MiB cgroup: V8's default heap limit
    (259 MiB on Node 20: at least 256 MiB of old space) is above the limit."""
    rec, measured = kill_node(agent, [], {}, 128 * MIB)
    n = rec["node_runtime"]
    assert n["version"].startswith("v")
    assert n["heap_limit_source"] == "DEFAULT"
    assert int(n["heap_limit_bytes"]) == measured
    assert "NODE_HEAP_LIMIT_UNSET" in codes(rec)
    v = next(v for v in rec["verdicts"] if v["code"] == "NODE_HEAP_LIMIT_UNSET")
    assert "--max-old-space-size=96" in v["suggestion"]


@need_node
def test_node_max_old_space_size_too_big(agent: AgentProcess) -> None:
    """--max-old-space-size from NODE_OPTIONS, overridden by the command line."""
    rec, measured = kill_node(
        agent,
        ["--max-old-space-size=1024"],
        {"NODE_OPTIONS": "--max-old-space-size=64 --no-warnings"},
        128 * MIB,
    )
    n = rec["node_runtime"]
    (flag,) = n["flags"]
    assert flag == {
        "name": "max-old-space-size",
        "value": "1024",
        "source": "COMMAND_LINE",
        "text": "--max-old-space-size=1024",
    }
    assert int(n["heap_limit_bytes"]) == measured
    assert "NODE_HEAP_LIMIT_ABOVE_CGROUP" in codes(rec)


# -- a runtime's own OOM death ----------------------------------------------------


def run_to_exit(
    agent: AgentProcess, argv: list[str], limit: int, tmp_path: Path, env: dict[str, str]
) -> tuple[int, int, str]:
    """(pid, returncode, stderr) of a run whose stderr is a file, as a
    service's often is."""
    err = tmp_path / "stderr.log"
    with scratch_cgroup(limit) as cg, err.open("wb") as f:
        p = cg.spawn_argv(argv, env={"PATH": "/usr/bin", **env}, stdout=f, stderr=f)
        rc = p.wait(180)
    return p.pid, rc, err.read_text(errors="replace")


def runtime_record(
    agent: AgentProcess, pid: int, not_recorded: tuple[int, ...] = ()
) -> dict[str, Any]:
    """The RUNTIME record of pid; and none of the runs in not_recorded,
    which exited before it (records leave in exit order: the agent's log
    line of any of theirs would come before this one's)."""
    (rec,) = agent.take(1, timeout=30, where=lambda r: r["victim"]["pid"] == pid)
    agent.wait_log("oom.recorded", lambda e: e.get("victim_pid") == pid)
    recorded = {e.get("victim_pid") for e in agent.logs if e.get("event") == "oom.recorded"}
    assert not recorded & set(not_recorded), "an ordinary failure became a record"
    return rec


@need_node
def test_node_heap_limit_death(agent: AgentProcess, tmp_path: Path) -> None:
    """V8's heap-limit abort, well under the cgroup's limit: a RUNTIME
    record with Node's own words, its heap limit and usage. An exit 7 and a
    SIGABRT without those words before it are ordinary failures: none."""
    exit7, rc, _ = run_to_exit(agent, [str(NODE), "-e", "process.exit(7)"], 256 * MIB, tmp_path, {})
    assert rc == 7
    abort, rc, _ = run_to_exit(
        agent, [str(NODE), "-e", "console.error('bye'); process.abort()"], 256 * MIB, tmp_path, {}
    )
    assert rc == -6
    pid, rc, err = run_to_exit(
        agent,
        [str(NODE), "--max-old-space-size=48", "-e", NODE_GROW],
        256 * MIB,
        tmp_path,
        {},
    )
    assert rc == -6, err[-2000:]
    assert "JavaScript heap out of memory" in err
    rec = runtime_record(agent, pid, not_recorded=(exit7, abort))
    assert rec["source"] == "RUNTIME"
    d = rec["runtime_death"]
    assert d["runtime"] == "node"
    assert d["exit_code"] == 134
    assert d["signal"] == 6
    assert "JavaScript heap out of memory" in d["message"]
    assert int(d["heap_limit_bytes"]) == (48 + 3) * MIB  # young: 3 semi-spaces of 1 MiB in 256 MiB
    assert 30 * MIB < int(d["heap_used_bytes"]) <= 51 * MIB
    assert "oomtrace-test-" in rec["cgroup"]["path"]
    assert int(rec["cgroup"]["memory_limit_bytes"]) == 256 * MIB
    assert [v["code"] for v in rec["verdicts"]] == ["NODE_HEAP_LIMIT_REACHED"]


@need_jdk17
def test_jvm_exit_on_out_of_memory_error_and_an_ordinary_failure(
    agent: AgentProcess, classes: dict[Path, Path], tmp_path: Path
) -> None:
    """-XX:+ExitOnOutOfMemoryError: a RUNTIME record (exit 3, the JVM's
    words). The same program exiting 3 on its own (System.exit(3)) is an
    ordinary failure: no record."""
    cp = str(classes[JDK17])
    java = str(JDK17 / "bin/java")
    plain_pid, rc, _ = run_to_exit(
        agent, [java, "-Xmx32m", "-cp", cp, "Grow", "exit3", "0"], 256 * MIB, tmp_path, {}
    )
    assert rc == 3
    pid, rc, err = run_to_exit(
        agent,
        [java, "-cp", cp, "Grow", "heap", "0"],
        256 * MIB,
        tmp_path,
        {"JAVA_TOOL_OPTIONS": "-Xmx32m -XX:+ExitOnOutOfMemoryError"},
    )
    assert rc == 3, err[-2000:]
    rec = runtime_record(agent, pid, not_recorded=(plain_pid,))
    d = rec["runtime_death"]
    assert d["runtime"] == "jvm"
    assert d["exit_code"] == 3
    assert d["message"].startswith("Terminating due to java.lang.OutOfMemoryError")
    assert int(d["heap_limit_bytes"]) == 32 * MIB
    assert rec["jvm"]["flags"]
    assert [v["code"] for v in rec["verdicts"]] == ["JVM_OUT_OF_MEMORY_ERROR"]
