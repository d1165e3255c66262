"""The GC probe's bookkeeping, with real Go processes and a stand-in for BCC:
one probe per binary, attached through the file it read, taken off when the
last process running the binary is gone, and capped in number."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oomtrace.agent.runtimes.go.probes import GoProbes
from oomtrace.agent.runtimes.go.worker import Parsed, ParserWorker
from oomtrace.agent.runtimes.processes import ProcessCache
from tests.integration.containers import oomgo_or_skip


class FakeTarget:
    def __init__(self) -> None:
        self.attached: list[tuple[str, int, int]] = []  # path, address, inode of the file
        self.detached: list[tuple[str, int]] = []
        self.located: list[int] = []
        self.profiles: list[tuple[int, tuple[int, int] | None]] = []

    def attach_go(self, path: str, gc_done: int) -> list[str]:
        self.attached.append((path, gc_done, os.stat(path).st_ino))
        return ["uprobe/runtime.gcMarkTermination"]

    def detach_go(self, path: str, gc_done: int) -> None:
        self.detached.append((path, gc_done))

    def locate_go(
        self,
        tgid: int,
        controller: int,
        gomaxprocs: int,
        offsets: dict[str, int],
        profile: tuple[int, int] | None = None,
        profile_layout: dict[str, int] | None = None,
    ) -> None:
        self.located.append(tgid)
        self.profiles.append((tgid, profile))


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("go")
    return oomgo_or_skip(out, "newest"), oomgo_or_skip(out, "1.21")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def run(binary: Path, started: list[subprocess.Popen[bytes]]) -> int:
    """The pid of the binary running `sleep`, once its exec is complete: the
    exe link changes before the new program's arguments are in place."""
    p = subprocess.Popen([str(binary), "sleep"])
    started.append(p)
    deadline = time.monotonic() + 10
    while not (
        os.path.realpath(f"/proc/{p.pid}/exe") == str(binary.resolve())
        and Path(f"/proc/{p.pid}/cmdline").read_bytes().endswith(b"sleep\0")
    ):
        assert time.monotonic() < deadline, "the Go program did not start"
        time.sleep(0.01)
    return p.pid


def test_one_probe_per_binary_taken_off_with_its_last_process(
    binaries: tuple[Path, Path], started: list[subprocess.Popen[bytes]]
) -> None:
    newest, _ = binaries
    target, cache = FakeTarget(), ProcessCache()
    probes = GoProbes(target)
    pids = [run(newest, started) for _ in range(2)]
    for pid in pids:
        info = cache.remember(pid)
        assert info is not None
        assert info.go is not None
        probes.ensure(pid, info.go)
    assert target.attached == []  # parsed off the event loop: not yet
    assert probes.pending == 1  # one parse for both processes
    probes.poll(wait_s=30)
    probes.close()
    ((path, addr, inode),) = target.attached  # once for both processes
    assert path.startswith("/proc/self/fd/")  # the file it read, not /proc/PID/exe again
    assert inode == newest.stat().st_ino
    assert sorted(target.located) == sorted(pids)
    started[0].kill()
    started[0].wait()
    probes.sweep()
    assert probes.profile_reason(pids[0])  # a dead process is known until the next sweep
    probes.sweep()
    assert probes.profile_reason(pids[0]) == "the process was not probed"
    assert target.detached == []  # one process still runs it
    started[1].kill()
    started[1].wait()
    probes.sweep()
    assert target.detached == []  # its kill may still be on its way
    probes.sweep()
    assert target.detached == [(path, addr)]
    assert probes.binaries == {}
    fd = int(path.rsplit("/", 1)[1])
    assert not os.path.exists(f"/proc/self/fd/{fd}") or os.readlink(f"/proc/self/fd/{fd}") != str(
        newest.resolve()
    )  # the file is let go too


def test_probed_binaries_are_capped_and_the_rest_counted(
    binaries: tuple[Path, Path], started: list[subprocess.Popen[bytes]]
) -> None:
    target, cache = FakeTarget(), ProcessCache()
    probes = GoProbes(target, max_binaries=1)
    for binary in binaries:
        pid = run(binary, started)
        info = cache.remember(pid)
        assert info is not None
        assert info.go is not None
        probes.ensure(pid, info.go)
    probes.poll(wait_s=30)
    probes.close()
    assert len(target.attached) == 1
    assert probes.capped == 1


def test_a_parse_that_takes_too_long_or_too_much_is_a_reason_not_a_crash(
    binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    """The parser's own process is killed at its deadline, capped in memory,
    and may die: each is a reason for that binary, and the next binary is
    parsed by a new worker."""
    newest, _ = binaries

    def parse_with(worker: ParserWorker, path: Path) -> Parsed:
        fd = os.open(path, os.O_RDONLY)
        try:
            worker.submit("k", fd)
            ((key, parsed),) = worker.wait(60)
        finally:
            os.close(fd)
        assert key == "k"
        return parsed

    slow = ParserWorker(timeout_s=0.0)
    assert "took over" in parse_with(slow, newest).error
    slow.timeout_s = 60
    assert parse_with(slow, newest).gc_done  # a new worker, a real answer
    assert slow.restarts == 1
    slow.close()

    starved = ParserWorker(data_limit=16 << 20)
    error = parse_with(starved, newest).error
    assert "more than 16 MiB" in error or "parser died" in error, error
    starved.close()

    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + os.urandom(4096))
    worker = ParserWorker()
    assert parse_with(worker, junk).error
    assert parse_with(worker, newest).gc_done  # the same worker goes on
    assert worker.restarts == 0
    worker.close()
