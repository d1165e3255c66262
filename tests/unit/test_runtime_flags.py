"""JVM and Node memory flags resolved as each runtime resolves them, the
maximum heap the JVM's ergonomics work out (figures measured on OpenJDK 17
and 25 in v1 memory cgroups), V8's default heap limit (measured on Node
20.20.2), and the verdicts' suggested values."""

from __future__ import annotations

import pytest

from oomtrace.agent.runtimes.jvm import flags as jf
from oomtrace.agent.runtimes.jvm.verdicts import fitting_heap, jvm_verdicts
from oomtrace.agent.runtimes.nodejs import settings as ns
from oomtrace.agent.runtimes.nodejs.verdicts import node_verdicts
from oomtrace.v1 import runtime_pb2

MIB = 1 << 20
HOST = 23 * 1024 * MIB
J = ["java"]


def test_precedence_last_flag_wins() -> None:
    env = {
        "JAVA_TOOL_OPTIONS": "-Xmx100m -XX:MaxRAMPercentage=30",
        "JDK_JAVA_OPTIONS": "-Xmx200m",
        "_JAVA_OPTIONS": "-XX:MaxRAMPercentage=60",
    }
    f = jf.resolve([*J, "-Xmx300m", "-jar", "app.jar", "-Xmx999m"], env, 17, launcher=True)
    assert f.flags["MaxHeapSize"].value == "300m"  # the command line, after JDK_JAVA_OPTIONS
    assert f.flags["MaxHeapSize"].source == jf.COMMAND_LINE
    assert f.flags["MaxRAMPercentage"].source == jf.UNDERSCORE_JAVA_OPTIONS
    # JDK_JAVA_OPTIONS is the launcher's, from JDK 9
    f8 = jf.resolve([*J, "Main"], env, 8, launcher=True)
    assert f8.flags["MaxHeapSize"].source == jf.JAVA_TOOL_OPTIONS
    assert jf.resolve(None, env, 17, launcher=False).flags["MaxHeapSize"].value == "100m"


def test_program_arguments_and_private_values() -> None:
    f = jf.resolve(
        [*J, "-cp", "-Xmx1g", "-XX:HeapDumpPath=/secret/x", "-XX:-UsePerfData", "Main", "-Xmx5g"],
        {"JAVA_TOOL_OPTIONS": "'-XX:OnOutOfMemoryError=kill -9 %p' -Dpassword=x"},
        17,
        launcher=True,
    )
    assert "MaxHeapSize" not in f.flags  # -cp's value, then the program's own argument
    assert f.flags["HeapDumpPath"].text == "-XX:HeapDumpPath=<set>"
    assert f.flags["OnOutOfMemoryError"].value == "<set>"
    assert not f.enabled("UsePerfData", True)
    assert jf.resolve([*J, "@opts", "Main"], {}, 17, True).missing


@pytest.mark.parametrize(
    ("limit_mib", "heap_mib"), [(128, 64), (200, 100), (256, 126), (300, 126), (1024, 256)]
)
def test_default_max_heap_as_measured(limit_mib: int, heap_mib: int) -> None:
    mh = jf.max_heap(jf.JvmFlags(), limit_mib * MIB, HOST, (17, 0))
    assert mh is not None
    assert mh.bytes == heap_mib * MIB
    assert mh.source == jf.DEFAULT


def test_max_heap_flags() -> None:
    def heap(args: list[str], limit: int = 256 * MIB) -> int:
        mh = jf.max_heap(jf.resolve([*J, *args, "M"], {}, 17, True), limit, HOST, (17, 0))
        assert mh is not None
        return mh.bytes // MIB

    assert heap(["-Xmx1g"]) == 1024
    assert heap(["-XX:MaxHeapSize=300m"]) == 300
    assert heap(["-XX:MaxRAMPercentage=75"], 1024 * MIB) == 768
    assert heap(["-XX:MaxRAMFraction=2"], 1024 * MIB) == 512
    assert heap(["-XX:MaxRAMPercentage=75", "-XX:MaxRAMFraction=2"], 1024 * MIB) == 768
    assert heap(["-XX:-UseContainerSupport"]) == HOST // 4 // MIB
    assert heap(["-XX:MaxRAM=1g"]) == 256
    # the small-memory rule: MinRAMPercentage of 128 MiB is below 124.8 MiB
    assert heap(["-XX:MaxRAMPercentage=90"], 128 * MIB) == 64
    assert heap(["-XX:MinRAMPercentage=80"], 128 * MIB) == 104  # 102.4, aligned to 2 MiB


def test_versions() -> None:
    assert jf.java_version("17.0.15") == (17, 0)
    assert jf.java_version("1.8.0_372") == (8, 372)
    assert jf.java_version("") == (0, 0)
    assert jf.parse_size("1G") == 1 << 30
    assert jf.parse_size("1.5g") is None


@pytest.mark.parametrize(
    ("limit_mib", "heap_mib"),
    [(64, 259), (128, 259), (512, 259), (1024, 524), (2048, 1048), (4096, 2096), (8192, 2096)],
)
def test_v8_default_heap_limit_as_measured(limit_mib: int, heap_mib: int) -> None:
    hl = ns.heap_limit({}, limit_mib * MIB, int(23.5 * 1024) * MIB)
    assert hl.limit_bytes == heap_mib * MIB
    assert hl.source == runtime_pb2.DEFAULT


def test_v8_heap_limit_unlimited_and_flags() -> None:
    assert ns.heap_limit({}, None, int(23.5 * 1024) * MIB).limit_bytes == 4144 * MIB
    f = ns.resolve(
        ["node", "--max_old_space_size=300", "-e", "x", "app.js", "--max-old-space-size=9"],
        {"NODE_OPTIONS": "--max-old-space-size=100 --no-warnings"},
    )
    hl = ns.heap_limit(f, None, HOST)
    assert hl.limit_bytes == 348 * MIB  # measured on the host: 300 -> 348
    assert hl.source == runtime_pb2.COMMAND_LINE
    # the young generation stays what the memory gives it: 1024 -> 1027 in 128 MiB
    big = ns.resolve(["node", "--max-old-space-size=1024"], {})
    assert ns.heap_limit(big, 128 * MIB, HOST).limit_bytes == 1027 * MIB
    semi = ns.resolve(["node", "--max-old-space-size=100", "--max-semi-space-size=2"], {})
    assert ns.heap_limit(semi, None, HOST).limit_bytes == 106 * MIB
    env_only = ns.heap_limit(
        ns.resolve(["node"], {"NODE_OPTIONS": "--max-old-space-size 200"}), None, HOST
    )
    assert env_only.limit_bytes == 248 * MIB
    assert env_only.source == runtime_pb2.NODE_OPTIONS


def test_node_verdicts() -> None:
    n = runtime_pb2.NodeRuntime(heap_limit_bytes=259 * MIB, heap_limit_source=runtime_pb2.DEFAULT)
    (v,) = node_verdicts(n, 128 * MIB, 120 * MIB, 8 * MIB)
    assert v.code == "NODE_HEAP_LIMIT_UNSET"
    assert "--max-old-space-size=96" in v.suggestion
    n.heap_limit_source = runtime_pb2.COMMAND_LINE
    n.heap_limit_bytes = 1072 * MIB
    (v,) = node_verdicts(n, 1024 * MIB, 0, 0)
    assert v.code == "NODE_HEAP_LIMIT_ABOVE_CGROUP"
    assert "--max-old-space-size=768" in v.suggestion
    assert node_verdicts(n, 2048 * MIB, 0, 0) == []


def test_jvm_no_room_off_heap() -> None:
    """A heap under the limit that leaves too little for what was seen
    outside it: the suggested -Xmx leaves that and 10 % free."""
    j = runtime_pb2.JvmRuntime(max_heap_bytes=230 * MIB, max_heap_from="x")
    j.perf.heap_committed_bytes = 200 * MIB
    j.perf.heap_used_bytes = 150 * MIB
    j.perf.metaspace.committed_bytes = 20 * MIB
    j.perf.threads_live = 20
    (v,) = jvm_verdicts(j, 256 * MIB, 250 * MIB, 260 * MIB)
    assert v.code == "JVM_NO_ROOM_OFF_HEAP"
    fit = fitting_heap(256 * MIB, 50 * MIB)
    assert f"-Xmx{fit // MIB}m" in v.suggestion
    assert fit + 50 * MIB <= 0.9 * 256 * MIB
