"""A runtime's own OOM death is told from its exit status and its own
words; an ordinary failure (another status, or the same status without
those words) never is one."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.cgroups.container_runtimes import ContainerInfo
from oomtrace.agent.cgroups.names import CgroupIdentity
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.record import runtime_death
from oomtrace.agent.runtimes.go.buildinfo import BuildInfo, GoProcess
from oomtrace.agent.runtimes.jvm import death as jvm_death
from oomtrace.agent.runtimes.jvm.discovery import JvmProcess
from oomtrace.agent.runtimes.jvm.flags import JvmFlags
from oomtrace.agent.runtimes.nodejs import death as node_death
from oomtrace.agent.runtimes.nodejs.discovery import NodeProcess
from oomtrace.agent.runtimes.outputs import Outputs
from oomtrace.agent.runtimes.processes import ProcessInfo

EXIT_ON = "Terminating due to java.lang.OutOfMemoryError: Java heap space\n"
CRASH_ON = "Aborting due to java.lang.OutOfMemoryError: Java heap space\n"
UNCAUGHT = (
    'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space\n\tat Grow.main\n'
)
NODE = (
    "<--- Last few GCs --->\n[1:0x5]  1019 ms: Mark-Compact 47.9 (50.1) -> 47.6 (50.6) MB, "
    "pooled: 0 MB, 101.38 / 0.00 ms  (average mu = 0.2)\n\nFATAL ERROR: Reached heap limit "
    "Allocation failed - JavaScript heap out of memory\n"
)


def test_jvm_words() -> None:
    assert jvm_death.oom_words(3, 0, EXIT_ON, "") == EXIT_ON.strip()
    assert jvm_death.oom_words(0, 6, CRASH_ON, "") == CRASH_ON.strip()
    hs = "#\n# A fatal error has been detected\n#  fatal error: OutOfMemory encountered: Java heap space\n"
    assert (
        jvm_death.oom_words(0, 6, "", hs)
        == "#  fatal error: OutOfMemory encountered: Java heap space"
    )
    assert jvm_death.oom_words(1, 0, UNCAUGHT, "") is not None
    # the same words under another status, or a status without them
    assert jvm_death.oom_words(1, 0, EXIT_ON, "") is None
    assert jvm_death.oom_words(3, 0, "Exception: something else\n", "") is None
    assert jvm_death.oom_words(0, 11, CRASH_ON, "") is None  # SIGSEGV
    # an OutOfMemoryError in another thread does not end the JVM
    other = 'Exception in thread "pool-1" java.lang.OutOfMemoryError: Java heap space\n'
    assert jvm_death.oom_words(1, 0, other, "") is None


def test_node_words_and_heap_use() -> None:
    assert node_death.oom_words(0, 6, NODE) is not None
    assert node_death.oom_words(0, 6, "bye\n") is None  # a bare abort
    assert node_death.oom_words(1, 0, NODE) is None
    assert node_death.heap_used_bytes(NODE) == int(47.6 * (1 << 20))
    assert node_death.heap_used_bytes("no trace") is None


def _info(tmp_path: Path, stderr: str, **kw: object) -> ProcessInfo:
    err = tmp_path / "err.log"
    err.write_text(stderr)
    out = Outputs(stderr=str(err), cwd=str(tmp_path), same_mount_ns=True, ns_pid=42)
    return ProcessInfo("x", "x", "/x", outputs=out, **kw)  # type: ignore[arg-type]


def test_confirm(tmp_path: Path) -> None:
    jvm = JvmProcess("/jdk", "17.0.15", "Debian", "java launcher", JvmFlags(), {})
    d = runtime_death.confirm(_info(tmp_path, "x\n" * 50000 + EXIT_ON, jvm=jvm), 3 << 8)
    assert isinstance(d, runtime_death.Death)
    assert d.runtime == "jvm"
    assert d.status == 3
    assert isinstance(runtime_death.confirm(_info(tmp_path, "bye", jvm=jvm), 3 << 8), str)
    # CrashOnOutOfMemoryError: the words may be only in hs_err_pid<nspid>.log
    (tmp_path / "hs_err_pid42.log").write_text("#  fatal error: OutOfMemory encountered: x\n")
    crash = runtime_death.confirm(_info(tmp_path, "", jvm=jvm), 6 | 0x80)
    assert isinstance(crash, runtime_death.Death)
    assert crash.message_from.endswith("hs_err_pid42.log")
    node = NodeProcess("v20.20.2", {}, {})
    nd = runtime_death.confirm(_info(tmp_path, NODE, node=node), 6)
    assert isinstance(nd, runtime_death.Death)
    assert nd.heap_used_bytes
    go = GoProcess(BuildInfo("go1.22.0", "m"), {})
    words = "fatal error: runtime: out of memory\n\ngoroutine 1 [running]:\n"
    assert isinstance(
        runtime_death.confirm(_info(tmp_path, words, go=go), 2 << 8), runtime_death.Death
    )
    assert isinstance(runtime_death.confirm(_info(tmp_path, words, go=go), 1 << 8), str)
    # stderr that is not a file the agent can read: a reason, no record
    gone = ProcessInfo("x", "x", "/x", node=node, outputs=Outputs())
    assert (
        runtime_death.confirm(gone, 6, pod_logs=tmp_path)
        == "stderr is not a file the agent can read"
    )


def test_confirm_from_the_pods_log(tmp_path: Path) -> None:
    """A container's stderr is a pipe to its runtime: the words are read
    from the kubelet's log of the container's current run."""
    c = ContainerInfo(
        "containerd", "abc", name="api", pod_name="web-1", pod_namespace="prod", pod_uid="u1"
    )
    w = Workload("/kubepods/x", CgroupIdentity(), c)
    d = tmp_path / "prod_web-1_u1" / "api"
    d.mkdir(parents=True)
    (d / "0.log").write_text("2026-12-04T00:00:00Z stderr F old run\n")
    (d / "1.log").write_text(
        "".join(f"2026-12-04T00:00:01Z stderr F {x}\n" for x in NODE.splitlines())
    )
    node = NodeProcess("v20.20.2", {}, {})
    info = ProcessInfo(
        "node", "node", "/node", node=node, outputs=Outputs(memory_cgroup="/kubepods/x")
    )
    got = runtime_death.confirm(info, 6, w, pod_logs=tmp_path, docker=tmp_path)
    assert isinstance(got, runtime_death.Death)
    assert got.message_from == str(d / "1.log")
    assert got.heap_used_bytes


def test_the_pods_event_says_the_runtime_ended_itself() -> None:
    from oomtrace.collector.kube_events import note
    from oomtrace.v1 import event_pb2

    ev = event_pb2.OomEvent(id="x" * 32, source=event_pb2.OomEvent.RUNTIME)
    ev.victim.comm, ev.victim.pid = "node", 7
    ev.container.name = "api"
    ev.cgroup.path, ev.cgroup.memory_limit_bytes = "/kubepods/x", 256 << 20
    ev.runtime_death.runtime, ev.runtime_death.exit_code = "node", 134
    text = note(ev)
    assert text.startswith("node[7] in container api ran out of its node heap limit")
    assert "exit 134; not a kernel OOM kill" in text
