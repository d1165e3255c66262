"""JVMs and Node.js OOM-killed by their cgroup's limit: the record names the
runtime, its memory flags and where each came from, HotSpot's own heap
figures, and a verdict with the flag and a value that fits.

JVM starts are slow on a busy 2-core machine: the test program is compiled
once per JDK (javac) and each test runs one JVM."""

from __future__ import annotations

import subprocess
from pathlib import Path
from tempfile import TemporaryFile
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


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Grow.class per JDK (compiled for the oldest)."""
    out = {}
    for jdk in (JDK17, TEMURIN25):
        if (jdk / "bin/javac").exists():
            d = Path(tmp_path_factory.mktemp(jdk.name))
            subprocess.run(
                [str(jdk / "bin/javac"), "-d", str(d), str(GROW)], check=True, timeout=300
            )
            out[jdk] = d
    return out


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
) -> dict[str, Any]:
    with scratch_cgroup(limit) as cg:
        p = cg.spawn_argv([str(NODE), *argv, "-e", NODE_GROW], env={"PATH": "/usr/bin", **env})
        assert p.wait(120) == -9
        (rec,) = agent.take(1, timeout=30, where=lambda r: r["victim"]["pid"] == p.pid)
    return rec


@need_node
def test_node_default_flags(agent: AgentProcess) -> None:
    """Node with default flags in a 128 MiB cgroup: V8's default heap limit
    (259 MiB here: at least 256 MiB of old space) is above the limit."""
    rec = kill_node(agent, [], {}, 128 * MIB)
    n = rec["node_runtime"]
    assert n["version"].startswith("v")
    assert n["heap_limit_source"] == "DEFAULT"
    assert int(n["heap_limit_bytes"]) == 259 * MIB
    assert "NODE_HEAP_LIMIT_UNSET" in codes(rec)
    v = next(v for v in rec["verdicts"] if v["code"] == "NODE_HEAP_LIMIT_UNSET")
    assert "--max-old-space-size=96" in v["suggestion"]


@need_node
def test_node_max_old_space_size_too_big(agent: AgentProcess) -> None:
    """--max-old-space-size from NODE_OPTIONS, overridden by the command line."""
    rec = kill_node(
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
    assert int(n["heap_limit_bytes"]) == (1024 + 48) * MIB
    assert "NODE_HEAP_LIMIT_ABOVE_CGROUP" in codes(rec)
