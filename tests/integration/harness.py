"""Helpers for the privileged tests: scratch memory cgroups, processes the
tests start (and stop, by pid), the agent as a subprocess, and the kernel's
own OOM report read from /dev/kmsg to compare records with.

Safety: every cgroup here is named oomtrace-test-<random>, has a small limit
(memory and memory+swap alike on v1), and is removed in teardown; nothing
touches /sys/fs/cgroup/memory/process_api."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from oomtrace.agent.cgroups import hierarchy as cgroups

REPO = Path(__file__).resolve().parents[2]
OOMTRACE = REPO / ".venv" / "bin" / "oomtrace"
SYSTEM_PYTHON = "/usr/bin/python3"
MIB = 1024 * 1024

# A process that allocates (and touches) 1 MiB at a time until it is killed.
ALLOCATE_FOREVER = "a=[]\nwhile True: a.append(bytearray(1 << 20))"


def hierarchy() -> cgroups.MemoryHierarchy:
    return cgroups.memory_hierarchy()


class ScratchCgroup:
    """A memory cgroup of the tests' own, with children on demand."""

    def __init__(self, parent: Path, name: str, version: int) -> None:
        self.path = parent / name
        self.version = version
        self.path.mkdir()
        self.children: list[ScratchCgroup] = []
        self.pids: list[int] = []

    @property
    def rel(self) -> str:
        """The path as the kernel's report prints it."""
        h = hierarchy()
        assert h.mount is not None
        return "/" + str(self.path.relative_to(h.mount))

    def child(self, name: str) -> ScratchCgroup:
        if self.version == 2 and not self.children:
            # Children need the memory controller enabled in their parent; v2
            # then forbids processes in the parent itself, so only now.
            (self.path / "cgroup.subtree_control").write_text("+memory")
        c = ScratchCgroup(self.path, name, self.version)
        self.children.append(c)
        return c

    def limit(self, nbytes: int) -> None:
        if self.version == 1:
            # memsw must be raised after memory and lowered after it too.
            (self.path / "memory.limit_in_bytes").write_text(str(nbytes))
            with contextlib.suppress(OSError):
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(nbytes))
        else:
            (self.path / "memory.max").write_text(str(nbytes))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")

    def oom_kill_count(self) -> int:
        if self.version == 1:
            text = (self.path / "memory.oom_control").read_text()
        else:
            text = (self.path / "memory.events").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def usage_and_limit(self) -> tuple[int, int]:
        if self.version == 1:
            return (
                int((self.path / "memory.usage_in_bytes").read_text()),
                int((self.path / "memory.limit_in_bytes").read_text()),
            )
        return int((self.path / "memory.current").read_text()), int(
            (self.path / "memory.max").read_text()
        )

    def spawn(
        self, code: str, *args: str, oom_score_adj: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Starts `python3 -c code args…` inside this cgroup from its first instruction."""
        return self.spawn_argv([SYSTEM_PYTHON, "-c", code, *args], oom_score_adj=oom_score_adj)

    def spawn_argv(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        oom_score_adj: int | None = None,
        stdout: IO[bytes] | None = None,
        stderr: IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts argv inside this cgroup from its first instruction; its
        output goes to `stdout` (and `stderr`) if given, else nowhere."""
        procs = self.path / "cgroup.procs"

        def enter() -> None:
            procs.write_text(str(os.getpid()))
            if oom_score_adj is not None:
                Path("/proc/self/oom_score_adj").write_text(str(oom_score_adj))

        p = subprocess.Popen(
            argv,
            env=env,
            preexec_fn=enter,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.DEVNULL if stderr is None else stderr,
        )
        self.pids.append(p.pid)
        return p

    def destroy(self) -> None:
        for c in self.children:
            c.destroy()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@contextlib.contextmanager
def scratch_cgroup(limit: int | None = 64 * MIB) -> Iterator[ScratchCgroup]:
    h = hierarchy()
    if h.mount is None:
        raise RuntimeError("no memory cgroup hierarchy on this host")
    cg = ScratchCgroup(h.mount, f"oomtrace-test-{secrets.token_hex(4)}", h.version)
    try:
        if limit is not None:
            cg.limit(limit)
        yield cg
    finally:
        cg.destroy()


# -- the agent ------------------------------------------------------------------


class AgentProcess:
    """`oomtrace agent --stdout` in a subprocess; records arrive on a queue."""

    def __init__(
        self, *extra: str, status_file: Path | None = None, state_dir: Path | None = None
    ) -> None:
        """Without a state_dir the agent gets a fresh one and does not backfill:
        kills of earlier tests are not this test's business."""
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="oomtrace-agent-"))
            extra = ("--no-backfill", *extra)
        args = [str(OOMTRACE), "agent", "--stdout", "--state-dir", str(state_dir), *extra]
        # Its own status file, never the host's /run/oomtrace: a test run
        # leaves nothing behind for the next to find.
        args += ["--status-file", str(status_file or state_dir / "status.json")]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.records: queue.Queue[dict[str, Any]] = queue.Queue()
        self.logs: list[dict[str, Any]] = []
        self.collector_addr = ""  # set when the test gave it a collector
        self.metrics_addr = ""  # and its --metrics-listen
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"event": "raw", "line": line.decode(errors="replace")}
            self.logs.append(entry)
            if entry.get("event") == "agent.ready":
                self._ready.set()

    def wait_ready(self, timeout: float = 600) -> None:
        """Until the agent says it is ready: the BCC compile takes seconds
        here and minutes under a guest's emulation on a busy machine. An agent
        that exits fails this at once."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"agent not ready after {timeout}s (exit {self.proc.poll()}); "
                    f"its log: {self.logs}"
                )

    def wait_log(
        self, event: str, where: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """The first log entry named `event` that matches `where`."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in list(self.logs):
                if entry.get("event") == event and where(entry):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} log entry in {timeout}s: {self.logs[-20:]}")
            time.sleep(0.05)

    def take(
        self, n: int, timeout: float = 20, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The next n records (matching `where`), waiting at most timeout seconds."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(out)} of {n} records in {timeout}s: {out}")
            try:
                r = self.records.get(timeout=left)
            except queue.Empty:
                continue
            if where is None or where(r):
                out.append(r)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# The session agent's --high-stall-seconds: a memory.high stall test need not
# hold for the default 30 s.
HIGH_STALL_TEST_S = 6


def wait_until(cond: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CollectorProcess:
    def __init__(self, db: Path, port: int, *extra: str) -> None:
        self.addr = f"127.0.0.1:{port}"
        # Plaintext on loopback unless the test gives TLS files.
        plain = [] if any(a.startswith("--tls-cert") for a in extra) else ["--insecure"]
        self.proc = subprocess.Popen(
            [str(OOMTRACE), "collector", "--listen", self.addr, "--db", str(db), *plain, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self.logs: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                text = line.decode(errors="replace")
                self.logs.append(text)
                if "collector.ready" in text:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.kill()
            raise AssertionError(f"collector not ready: {self.logs}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return self.proc.returncode


# -- the kernel's own report -------------------------------------------------------

_KILLED = re.compile(
    r"Killed process (?P<pid>\d+) \((?P<comm>[^)]*)\) total-vm:(?P<total_vm>\d+)kB, "
    r"anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, shmem-rss:(?P<shmem>\d+)kB, "
    r"UID:(?P<uid>\d+) pgtables:(?P<pgtables>\d+)kB oom_score_adj:(?P<adj>-?\d+)"
)
_CONSTRAINT = re.compile(r"oom-kill:constraint=(?P<constraint>\w+),(?P<rest>.*)")
_INVOKED = re.compile(r"(?P<comm>.+?) invoked oom-killer: .*oom_score_adj=(?P<adj>-?\d+)")
# dump_stack()'s first line names the invoking thread: "CPU: 0 UID: 0 PID: 3512 Comm: python3 ..."
_STACK_HEAD = re.compile(r"CPU: \d+ (?:UID: \d+ )?PID: (?P<tid>\d+) Comm: (?P<comm>\S+)")


@dataclass
class KernelKill:
    """One kill as the kernel's log tells it."""

    pid: int
    comm: str
    total_vm_kb: int
    anon_kb: int
    file_kb: int
    shmem_kb: int
    uid: int
    pgtables_kb: int
    oom_score_adj: int
    constraint: str
    oom_memcg: str
    task_memcg: str
    invoker_comm: str
    invoker_pid: int


class KmsgReader:
    """Kernel log lines written after it was opened, read as they come by a
    thread: a burst of reports can wrap a small log ring before a test looks."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lines: list[str] = []
        self.overwritten = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._drain()
            select.select([self.fd], [], [], 0.05)

    def _drain(self) -> None:
        # Under the lock from the first read to the last: the follower and
        # read() both drain, and each record lands once, in order.
        with self._lock:
            while True:
                try:
                    data = os.read(self.fd, 8192)
                except BlockingIOError:
                    return
                except OSError:  # EPIPE: the ring overwrote what we had not read
                    self.overwritten += 1
                    continue
                _header, _, text = data.decode(errors="replace").partition(";")
                self.lines.append(text.split("\n", 1)[0])

    def read(self) -> None:
        """Everything the kernel has logged by now, read before returning."""
        self._drain()

    def kills(self) -> dict[int, KernelKill]:
        """By victim pid. The report's lines come in order: invoked, ...,
        oom-kill:..., Killed process."""
        self.read()
        with self._lock:
            lines = list(self.lines)
        out: dict[int, KernelKill] = {}
        invoker = ("", 0)
        constraint: dict[str, str] = {}
        for text in lines:
            if m := _INVOKED.search(text):
                invoker = (m.group("comm").strip(), 0)
            elif (m := _STACK_HEAD.search(text)) and invoker[1] == 0:
                invoker = (invoker[0], int(m.group("tid")))
            elif m := _CONSTRAINT.search(text):
                constraint = {"constraint": m.group("constraint")}
                for part in m.group("rest").split(","):
                    k, _, v = part.partition("=")
                    constraint[k] = v
            elif m := _KILLED.search(text):
                pid = int(m.group("pid"))
                out[pid] = KernelKill(
                    pid=pid,
                    comm=m.group("comm"),
                    total_vm_kb=int(m.group("total_vm")),
                    anon_kb=int(m.group("anon")),
                    file_kb=int(m.group("file")),
                    shmem_kb=int(m.group("shmem")),
                    uid=int(m.group("uid")),
                    pgtables_kb=int(m.group("pgtables")),
                    oom_score_adj=int(m.group("adj")),
                    constraint=constraint.get("constraint", ""),
                    oom_memcg=constraint.get("oom_memcg", ""),
                    task_memcg=constraint.get("task_memcg", ""),
                    invoker_comm=invoker[0],
                    invoker_pid=invoker[1],
                )
                # The report's header and oom-kill line are ratelimited (oom_rs:
                # 10 per 5 s); "Killed process" never is. Start afresh.
                invoker, constraint = ("", 0), {}
        return out

    def wait_kills(self, pids: set[int], timeout: float = 10) -> dict[int, KernelKill]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.kills()
            if pids <= found.keys() or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        os.close(self.fd)


def split_rss_counting() -> bool:
    """Kernels before 6.2 cache RSS changes per task (task_struct.rss_stat)
    and fold them into the mm's counters every 64 page events or at exit."""
    from oomtrace.agent.kernel.btf import Btf

    return Btf.load().has_field("task_struct", "rss_stat")


def assert_matches_kernel(
    record: dict[str, Any], k: KernelKill, *, full_report: bool = True
) -> None:
    """Every figure the kernel prints, compared with the record. full_report:
    the kernel must have printed its whole report (not ratelimited).

    A record that has the kernel's report takes the victim's figures from
    its "Killed process" line: exact. Without it they are the BPF snapshot
    at mark_victim, and the kernel prints its line just after: with split
    RSS counting, threads of the victim other than the trigger are still
    running (or already exiting) on other CPUs and may fold their per-task
    caches in meanwhile: up to 64 pages a thread a counter."""
    v = record["victim"]
    kib = 1024
    if "kernel_report" in record:
        assert v.get("figures_from") == "KERNEL_LINE", v
    assert v["pid"] == k.pid
    assert v["comm"] == k.comm
    assert int(v["total_vm_bytes"]) == k.total_vm_kb * kib
    others_running = record["trigger"]["pid"] != v["pid"] or v["threads"] > 1
    slack = (
        64 * 4096 * v["threads"]
        if others_running and split_rss_counting() and v.get("figures_from") != "KERNEL_LINE"
        else 0
    )
    for name, kb in (
        ("anon_rss_bytes", k.anon_kb),
        ("file_rss_bytes", k.file_kb),
        ("shmem_rss_bytes", k.shmem_kb),
    ):
        assert abs(int(v[name]) - kb * kib) <= slack, f"{name}: record {v[name]}, kernel {kb} kB"
    assert int(v["pgtables_bytes"]) == k.pgtables_kb * kib
    assert v["uid"] == k.uid
    assert v["oom_score_adj"] == k.oom_score_adj
    if not k.constraint:
        assert not full_report, f"the kernel ratelimited its report of pid {k.pid}"
        return  # the kernel ratelimited the rest of its report for this kill
    expected = {"CONSTRAINT_MEMCG": "MEMCG", "CONSTRAINT_NONE": "GLOBAL"}.get(k.constraint)
    assert record["constraint"] == expected, (
        f"record {record['constraint']} ({record['constraint_source']}), kernel {k.constraint}; "
        f"cgroup {record['cgroup']}"
    )
    assert record["cgroup"]["path"] == k.task_memcg
    assert record["cgroup"]["oom_memcg_path"] == k.oom_memcg
    assert record["trigger"]["comm"] == k.invoker_comm
    if k.invoker_pid:
        # dump_stack's "PID:" is the invoking thread's id.
        assert record["trigger"]["tid"] == k.invoker_pid


def is_root() -> bool:
    return os.geteuid() == 0
