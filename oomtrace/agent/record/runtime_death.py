"""A runtime's own OOM death as a record (source RUNTIME): a JVM, Node or
Go process, known as one at discovery, whose exit status (OOMT_RUNTIME_EXIT
from the exit tracepoint) says failure, and whose own words confirm it ran
out of memory: its stderr where that was a file, and for a JVM its hs_err
file. An exit whose words do not say so is never a record. The record goes
the way of a kernel kill (spool, collector, metrics, Events), with the
cgroup, container and pod, the runtime's part and the heap limit."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from oomtrace import __version__
from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.delivery.privacy import redact
from oomtrace.agent.explain.verdicts import verdicts
from oomtrace.agent.host import boot_ns_to_datetime
from oomtrace.agent.record.parts import fill_workload, record_id
from oomtrace.agent.runtimes.jvm import death as jvm_death
from oomtrace.agent.runtimes.jvm.record import fill_jvm
from oomtrace.agent.runtimes.nodejs import death as node_death
from oomtrace.agent.runtimes.nodejs.record import fill_node
from oomtrace.agent.runtimes.processes import ProcessInfo
from oomtrace.v1 import event_pb2

TAIL_BYTES = 64 << 10  # of stderr, from its end
HS_ERR_BYTES = 8 << 10  # of an hs_err file, from its start
GO_WORDS = "fatal error: runtime: out of memory"


class Workloads(Protocol):
    def by_path(self, path: str) -> Workload | None: ...


@dataclass(frozen=True, slots=True)
class Death:
    runtime: str  # "jvm", "node", "go"
    status: int
    signal: int
    message: str
    message_from: str
    heap_used_bytes: int | None = None


def _tail(path: str, n: int, from_end: bool = True) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, n, max(size - n, 0) if from_end else 0).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


POD_LOGS = Path("/var/log/pods")
DOCKER_CONTAINERS = Path("/var/lib/docker/containers")


def container_log(workload: Workload | None, pod_logs: Path, docker: Path) -> str:
    """The container's log file, where its runtime keeps its stderr: the
    kubelet's /var/log/pods/<ns>_<pod>_<uid>/<container>/<restarts>.log (the
    highest is the current one), or Docker's <id>-json.log; "" if none."""
    c = workload.container if workload is not None else None
    if c is None:
        return ""
    if c.pod_uid and c.name:
        d = pod_logs / f"{c.pod_namespace}_{c.pod_name}_{c.pod_uid}" / c.name
        try:
            logs = [n for n in os.listdir(d)[:1000] if n.removesuffix(".log").isdigit()]
        except OSError:
            logs = []
        if logs:
            return str(d / max(logs, key=lambda n: int(n.removesuffix(".log"))))
    if c.id and c.runtime == "docker":
        f = docker / c.id / f"{c.id}-json.log"
        if f.is_file():
            return str(f)
    return ""


def confirm(
    info: ProcessInfo,
    exit_code: int,
    workload: Workload | None = None,
    pod_logs: Path = POD_LOGS,
    docker: Path = DOCKER_CONTAINERS,
) -> Death | str:
    """The death, or why it is not one (an ordinary failure, or words that
    cannot be read): its stderr where that is a file, else its container's log."""
    signal, status = exit_code & 0x7F, (exit_code >> 8) & 0xFF
    out = info.outputs
    if out is None:
        return "not a runtime process"
    stderr = out.stderr if out.stderr and out.same_mount_ns else ""
    stderr = stderr or container_log(workload, pod_logs, docker)
    if not stderr:
        return "stderr is not a file the agent can read"
    out = replace(out, stderr=stderr)
    tail = _tail(out.stderr, TAIL_BYTES)
    if info.jvm is not None:
        hs_err = ""
        hs_path = ""
        if signal == jvm_death.SIGABRT and out.cwd:
            hs_path = str(Path(out.cwd) / f"hs_err_pid{out.ns_pid}.log")
            hs_err = _tail(hs_path, HS_ERR_BYTES, from_end=False)
        words = jvm_death.oom_words(status, signal, tail, hs_err)
        if words is None:
            return "a JVM's failure that was not OutOfMemoryError"
        where = hs_path if hs_err and words.startswith("#") else out.stderr
        return Death("jvm", status, signal, words, where)
    if info.node is not None:
        words = node_death.oom_words(status, signal, tail)
        if words is None:
            return "a Node failure that was not its heap limit"
        return Death("node", status, signal, words, out.stderr, node_death.heap_used_bytes(tail))
    if info.go is not None and signal == 0 and status == 2 and GO_WORDS in tail:
        return Death("go", status, signal, GO_WORDS, out.stderr)
    return "not a runtime's OOM death"


def death_event(
    info: ProcessInfo,
    death: Death,
    *,
    tgid: int,
    boot_ns: int,
    node: str,
    boot_id: str,
    hierarchy: cgroups.MemoryHierarchy,
    workloads: Workloads,
) -> event_pb2.OomEvent:
    own = record_id(boot_id, boot_ns, tgid)
    ev = event_pb2.OomEvent(
        id=own,
        incident_id=own,
        node=node,
        boot_id=boot_id,
        killed_at_boot_ns=boot_ns,
        source=event_pb2.OomEvent.RUNTIME,
        agent_version=__version__,
        kills=1,
        constraint=event_pb2.OomEvent.UNKNOWN,
    )
    ev.killed_at.FromDatetime(boot_ns_to_datetime(boot_ns))
    v = ev.victim
    v.pid, v.comm, v.cmdline, v.exe = tgid, info.comm, info.cmdline, info.exe
    missing = ["victim memory: the runtime ended itself; the kernel took no snapshot"]
    d = ev.runtime_death
    d.runtime = death.runtime
    d.exit_code = death.status if not death.signal else 128 + death.signal
    d.signal = death.signal
    d.message = redact(death.message)[:512]
    d.message_from = death.message_from[:256]
    if death.heap_used_bytes is not None:
        d.heap_used_bytes = death.heap_used_bytes
    path = info.outputs.memory_cgroup if info.outputs is not None else ""
    c = ev.cgroup
    c.version = hierarchy.version
    c.path = path
    if path and hierarchy.mount is not None:
        usage, limit = _cgroup_memory(hierarchy, path)
        c.memory_usage_bytes, c.memory_limit_bytes = usage, limit
    workload = workloads.by_path(path) if path else None
    if workload is not None:
        fill_workload(ev.container, ev.pod, workload, missing)
    fill_jvm(ev, info, None)
    fill_node(ev, info)
    if ev.HasField("jvm"):
        ev.jvm.perf_missing = "the JVM ended itself: it removes its hsperfdata as it exits"
        if ev.jvm.HasField("max_heap_bytes"):
            d.heap_limit_bytes = ev.jvm.max_heap_bytes
    if ev.HasField("node_runtime"):
        d.heap_limit_bytes = ev.node_runtime.heap_limit_bytes
    ev.missing.extend(missing)
    ev.verdicts.extend(verdicts(ev))
    return ev


def _cgroup_memory(hierarchy: cgroups.MemoryHierarchy, path: str) -> tuple[int, int]:
    assert hierarchy.mount is not None
    base = hierarchy.mount / path.lstrip("/")
    names = (
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
        if hierarchy.version == 1
        else ("memory.current", "memory.max")
    )
    out = []
    for name in names:
        try:
            text = (base / name).read_text().strip()
        except OSError:
            text = "0"
        out.append(int(text) if text.isdigit() and int(text) < 1 << 60 else 0)
    return out[0], out[1]
