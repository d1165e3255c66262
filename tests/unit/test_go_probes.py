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

from oomtrace.agent.go.probes import GoProbes
from oomtrace.agent.procinfo import ProcessCache
from tests.integration.containers import oomgo_or_skip


class FakeTarget:
    def __init__(self) -> None:
        self.attached: list[tuple[str, int, int]] = []  # path, address, inode of the file
        self.detached: list[tuple[str, int]] = []
        self.located: list[int] = []

    def attach_go(self, path: str, gc_done: int) -> list[str]:
        self.attached.append((path, gc_done, os.stat(path).st_ino))
        return ["uprobe/runtime.gcMarkTermination"]

    def detach_go(self, path: str, gc_done: int) -> None:
        self.detached.append((path, gc_done))

    def locate_go(
        self, tgid: int, controller: int, gomaxprocs: int, offsets: dict[str, int]
    ) -> None:
        self.located.append(tgid)


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
    ((path, addr, inode),) = target.attached  # once for both processes
    assert path.startswith("/proc/self/fd/")  # the file it read, not /proc/PID/exe again
    assert inode == newest.stat().st_ino
    assert target.located == pids
    started[0].kill()
    started[0].wait()
    probes.sweep()
    assert target.detached == []  # one process still runs it
    started[1].kill()
    started[1].wait()
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
    assert len(target.attached) == 1
    assert probes.capped == 1
