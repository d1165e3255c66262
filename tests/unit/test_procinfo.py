"""The process cache: reads of /proc, bounded, and never degraded by a later
read of a dying process."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.runtimes.go.buildinfo import BuildInfo, GoProcess
from oomtrace.agent.runtimes.processes import ProcessCache, ProcessInfo


def fake_proc(root: Path, pid: int, comm: str, cmdline: bytes) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(cmdline)


def test_a_later_read_of_an_exiting_process_keeps_its_go_details(tmp_path: Path) -> None:
    fake_proc(tmp_path, 7, "svc", b"/bin/svc\0--port\0" + b"80\0")
    cache = ProcessCache(proc=tmp_path)
    go = GoProcess(BuildInfo("go1.27.3", "example.com/svc"), {"GOMEMLIMIT": "1GiB"})
    cache._by_pid[7] = ProcessInfo("svc", "/bin/svc --port 80", "/bin/svc", go)
    again = cache.remember(7)  # its exe link is gone: no Go details this time
    assert again is not None
    assert again.go == go
    assert again.exe == "/bin/svc"
    assert cache.lookup(7, "svc") == again


def test_a_reused_pid_with_another_comm_is_not_mistaken(tmp_path: Path) -> None:
    fake_proc(tmp_path, 7, "svc", b"/bin/svc\0")
    cache = ProcessCache(proc=tmp_path)
    assert cache.remember(7) is not None
    assert cache.lookup(7, "other") is None


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    for pid in range(1, 6):
        fake_proc(tmp_path, pid, f"p{pid}", b"x\0")
    cache = ProcessCache(capacity=3, proc=tmp_path)
    assert cache.scan() == 5
    assert len(cache) == 3
    assert cache.evicted == 2


def test_start_time_from_the_stat_line_whatever_the_comm() -> None:
    from oomtrace.agent.runtimes.processes import _CLOCK_TICKS, start_boot_ns

    fields = ["S"] + ["0"] * 18 + ["4200"] + ["0"] * 10
    line = "123 (a) b) (c) " + " ".join(fields)
    assert start_boot_ns(line) == 4200 * 1_000_000_000 // _CLOCK_TICKS
    assert start_boot_ns("123 (x) S 1") is None
