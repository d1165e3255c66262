"""Where the memory was: real kills in scratch cgroups with the memory held
in each place the kernel accounts it (tmpfs, pipe buffers, other tasks,
mlocked page cache, the victim's own heap). Each record's breakdown is
compared with the stats the kernel printed with the same kill, its parts
must add up to the usage the kernel printed within 5 %, and its first
verdict must name the place, with the amount within 15 %. In a guest VM
only, a node-wide OOM: its Mem-Info block and the cgroup that took the node."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from oomtrace.records import USAGE_PARTS
from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    KmsgReader,
    ScratchCgroup,
    scratch_cgroup,
    wait_until,
)


def by_pid(pid: int) -> Any:
    return lambda r: r["victim"]["pid"] == pid


def printed_report(kmsg: KmsgReader, pid: int) -> list[str]:
    """The kernel's report of the kill of pid, as printed: from its
    "invoked oom-killer" line to its "Killed process" line ([] when the
    kernel ratelimited it: only the Killed line came)."""
    kmsg.read()
    lines = list(kmsg.lines)
    end = next(i for i, t in enumerate(lines) if re.search(rf"Killed process {pid} ", t))
    for i in range(end, -1, -1):
        if "invoked oom-killer" in lines[i]:
            return lines[i : end + 1]
        if i < end and "Killed process" in lines[i]:
            return []
    return []


def kernel_figures(lines: list[str]) -> dict[str, int]:
    """What the kernel printed, in bytes: usage, v1's kmem, and the stats
    (v1's total_* as bare names), by a parse of this test's own."""
    out: dict[str, int] = {}
    for t in lines:
        if m := re.match(r"(memory|kmem): usage (\d+)kB", t):
            out[m.group(1)] = int(m.group(2)) * 1024
        elif m := re.match(r"(?:total_)?([a-z_]+) (\d+)$", t):
            # v1 prints the memcg's own lines, then its subtree's (total_*): last wins.
            out[m.group(1)] = int(m.group(2))
    return out


def keep_fixture(lines: list[str], shape: str) -> None:
    """With OOMTRACE_FIXTURE_DIR set (the guests set it), the kernel's report
    of the kill is kept there, named by shape and release, for the unit tests."""
    where = os.environ.get("OOMTRACE_FIXTURE_DIR")
    if where and lines:
        Path(where).mkdir(parents=True, exist_ok=True)
        name = f"report-{shape}-{os.uname().release}.txt"
        (Path(where) / name).write_text("\n".join(lines) + "\n")


def check_breakdown(rec: dict[str, Any], kmsg: KmsgReader, shape: str = "") -> dict[str, Any]:
    """The breakdown against the kernel's printed report of the kill (the
    cgroup's files when the kernel ratelimited it), adding up within 5 %."""
    b = rec["breakdown"]
    usage = int(b["usage_bytes"])
    parts = sum(int(b[p]) for p in USAGE_PARTS)
    assert abs(usage - parts) <= 0.05 * usage, (b, parts)
    assert abs(int(b["unexplained_bytes"])) <= 0.05 * usage, b
    lines = printed_report(kmsg, rec["victim"]["pid"])
    if not lines:
        # Other kills on the machine used up the kernel's ratelimit.
        assert b["source"] == "CGROUP_FILES", b
        return dict(b)
    keep_fixture(lines, shape)
    assert b["source"] == "KERNEL_REPORT"
    k = kernel_figures(lines)
    assert usage == k["memory"]
    if "rss" in k:  # v1
        assert int(b["shmem_bytes"]) == k["shmem"]
        assert int(b["page_cache_bytes"]) == k["cache"] - k["shmem"]
        assert int(b["kernel_bytes"]) == k["kmem"]
        anon = k["rss"]
    else:
        assert int(b["shmem_bytes"]) == k["shmem"]
        assert int(b["page_cache_bytes"]) == k["file"] - k["shmem"]
        if "kernel" in k:
            assert int(b["kernel_bytes"]) == k["kernel"] + k.get("sock", 0)
        anon = k["anon"]
    assert anon == sum(
        int(b[p]) for p in ("victim_anon_bytes", "others_anon_bytes", "unmapped_anon_bytes")
    )
    assert int(b["victim_anon_bytes"]) == int(rec["victim"]["anon_rss_bytes"])
    return dict(b)


def first_verdict(rec: dict[str, Any]) -> dict[str, Any]:
    assert rec["verdicts"], rec
    return dict(rec["verdicts"][0])


def near(n: int, expected: int, share: float = 0.15) -> bool:
    return abs(n - expected) <= share * expected


def _wait_usage(cg: ScratchCgroup, nbytes: int, timeout: float = 30) -> None:
    wait_until(lambda: cg.usage_and_limit()[0] >= nbytes, timeout, f"usage {nbytes}")


def kill_with_allocator(cg: ScratchCgroup, adj: int | None = None) -> subprocess.Popen[bytes]:
    """An allocator that runs into the limit and dies; adj 1000 makes it the
    victim beside tasks that hold more (lowering theirs needs a capability
    the tests may not have)."""
    p = cg.spawn(ALLOCATE_FOREVER, oom_score_adj=adj)
    assert p.wait(60) == -9
    return p


def test_memory_in_a_tmpfs_is_found_and_its_mount_named(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    """40 MiB written to a tmpfs (mounted in a private mount namespace, so
    the host sees nothing of it), then a small allocator hits the limit."""
    with tempfile.TemporaryDirectory(prefix="oomtrace-test-tmpfs-") as mnt:
        fill = (
            f"mount -t tmpfs -o size=200m oomtrace-test {mnt} && "
            f"dd if=/dev/zero of={mnt}/fill bs=1M count=40 status=none && exec sleep 600"
        )
        with scratch_cgroup(64 * MIB) as cg:
            cg.spawn_argv(["unshare", "-m", "--propagation", "private", "sh", "-c", fill])
            _wait_usage(cg, 40 * MIB)
            p = kill_with_allocator(cg)
            (rec,) = agent.take(1, where=by_pid(p.pid))
    b = check_breakdown(rec, kmsg, "tmpfs")
    assert near(int(b["shmem_bytes"]), 40 * MIB)
    assert near(int(b["shmem_unmapped_bytes"]), 40 * MIB)
    v = first_verdict(rec)
    assert v["code"] == "TMPFS_MEMORY"
    assert mnt in v["explanation"], v
    assert re.search(r"; (3[5-9]|4[0-6]) MiB \(\d+ %\) was tmpfs", v["explanation"]), v
    (m,) = [m for m in b["tmpfs"] if m["mount_point"] == mnt]
    assert near(int(m["used_bytes"]), 40 * MIB)
    assert int(m["size_limit_bytes"]) == 200 * MIB
    assert rec["allocation"]["kind"] in ("ANON_FAULT", "HUGE_PAGE", "PAGE_TABLE", "SLAB")


FILL_PIPES = """
import fcntl, os, sys, time
pipes = []
for _ in range(int(sys.argv[1])):
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    pipes.append((r, w))
print("full", flush=True)
time.sleep(600)
"""


def test_pipe_buffers_nobody_reads_are_kernel_memory(agent: AgentProcess, kmsg: KmsgReader) -> None:
    with scratch_cgroup(64 * MIB) as cg:
        cg.spawn(FILL_PIPES, "40")
        _wait_usage(cg, 40 * MIB)
        p = kill_with_allocator(cg)
        (rec,) = agent.take(1, where=by_pid(p.pid))
    b = check_breakdown(rec, kmsg, "pipes")
    assert int(b["kernel_bytes"]) >= 40 * MIB
    v = first_verdict(rec)
    assert v["code"] == "KERNEL_MEMORY"
    assert "pipe buffers" in v["explanation"], v


HOLD = "import sys, time\nb = bytearray(int(sys.argv[1]) << 20)\nprint(flush=True)\ntime.sleep(600)"


def test_other_tasks_held_most_and_are_named(agent: AgentProcess, kmsg: KmsgReader) -> None:
    """Five workers of 10 MiB beside a growing task: the one that dies held
    a third, and the record says the others held the rest."""
    with scratch_cgroup(96 * MIB) as cg:
        workers = [cg.spawn(HOLD, "10") for _ in range(5)]
        _wait_usage(cg, 50 * MIB)
        p = kill_with_allocator(cg, adj=1000)
        (rec,) = agent.take(1, where=by_pid(p.pid))
    b = check_breakdown(rec, kmsg, "siblings")
    assert b["other_tasks"] == 5
    assert int(b["largest_other_pid"]) in {w.pid for w in workers}
    assert int(b["others_anon_bytes"]) >= 50 * MIB
    (v,) = [v for v in rec["verdicts"] if v["code"] == "SIBLINGS_HELD_MOST"]
    assert "python3[" in v["explanation"]


LOCK_FILE = """
import ctypes, mmap, os, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"x" * (40 << 20))
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, 40 << 20, prot=mmap.PROT_READ)
libc = ctypes.CDLL(None, use_errno=True)
if libc.mlockall(1) != 0:  # MCL_CURRENT
    sys.exit(f"mlockall: {ctypes.get_errno()}")
open(path + ".locked", "w").close()
time.sleep(600)
"""


def test_mlocked_page_cache_is_page_cache_that_could_not_be_reclaimed(
    agent: AgentProcess, kmsg: KmsgReader, tmp_path: Path
) -> None:
    with scratch_cgroup(64 * MIB) as cg:
        locker = cg.spawn(LOCK_FILE, str(tmp_path / "locked"))
        # Usage reaches 40 MiB as the file is written, before the pages are
        # locked; only the marker says mlockall has faulted them all in.
        wait_until(
            lambda: (tmp_path / "locked.locked").exists() or locker.poll() is not None,
            60,
            "the file locked",
        )
        assert locker.poll() is None, "the locking task died before the kill"
        p = kill_with_allocator(cg, adj=1000)
        (rec,) = agent.take(1, where=by_pid(p.pid))
    b = check_breakdown(rec, kmsg, "mlocked")
    assert int(b["page_cache_bytes"]) >= 38 * MIB
    assert int(b["unevictable_bytes"]) >= 38 * MIB
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True)
    if fs.stdout.strip() == "tmpfs":
        # A guest's /tmp is a tmpfs: the locked file is shmem there.
        assert "TMPFS_MEMORY" in [v["code"] for v in rec["verdicts"]]
        return
    (v,) = [v for v in rec["verdicts"] if v["code"] == "PAGE_CACHE_UNRECLAIMABLE"]
    assert "unevictable (mlocked)" in v["explanation"]


def test_a_plain_heap_leak_is_the_victims_own_growth(agent: AgentProcess, kmsg: KmsgReader) -> None:
    leak = "import time\na = []\nwhile True:\n    a.append(bytearray(1 << 20)); time.sleep(0.02)"
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(leak)
        assert p.wait(60) == -9
        (rec,) = agent.take(1, where=by_pid(p.pid))
    b = check_breakdown(rec, kmsg, "leak")
    assert int(b["victim_anon_bytes"]) >= 0.85 * int(b["usage_bytes"])
    v = first_verdict(rec)
    assert v["code"] == "ANON_GROWTH"
    assert rec["allocation"]["kind"] == "ANON_FAULT", rec["allocation"]
    assert rec["allocation"]["pid"] == p.pid


def test_a_parents_limit_is_broken_down_for_the_parent(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    """A kill in a child cgroup whose parent's limit was hit: the breakdown
    is the parent's (the memcg the kernel printed stats for)."""
    with scratch_cgroup(64 * MIB) as parent:
        child = parent.child("workload")
        p = child.spawn(ALLOCATE_FOREVER)
        assert p.wait(60) == -9
        (rec,) = agent.take(1, where=by_pid(p.pid))
        parent_rel = parent.rel
    b = check_breakdown(rec, kmsg, "parent")
    assert b["cgroup"] == parent_rel
    assert rec["verdicts"]


SOCKETS = """
import socket, sys, time
pairs = []
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(64)
for _ in range(int(sys.argv[1])):
    c = socket.create_connection(server.getsockname())
    s, _ = server.accept()
    c.setblocking(False)
    try:
        while True:
            c.send(b"x" * 65536)
    except BlockingIOError:
        pass
    pairs.append((c, s))
print(flush=True)
time.sleep(600)
"""


def test_socket_buffers_nobody_reads_are_kernel_memory(
    agent: AgentProcess, kmsg: KmsgReader, tmp_path: Path
) -> None:
    """A sender to TCP sockets nobody reads (both ends in the cgroup): the
    queued buffers are charged to it (v2's "sock")."""
    with scratch_cgroup(96 * MIB) as cg:
        if cg.version == 1:
            pytest.skip(
                "cgroup v1 charges socket buffers to memory.kmem.tcp, not to the memory "
                "usage a limit counts: no kill to provoke (the v2 guests run this)"
            )
        holder = cg.spawn(SOCKETS, "12")
        wait_until(lambda: cg.usage_and_limit()[0] >= 40 * MIB or holder.poll() is not None, 60)
        assert holder.poll() is None
        p = kill_with_allocator(cg)
        (rec,) = agent.take(1, where=by_pid(p.pid))
    b = check_breakdown(rec, kmsg, "sockets")
    assert int(b["sock_bytes"]) >= 30 * MIB
    v = first_verdict(rec)
    assert v["code"] == "KERNEL_MEMORY"
    assert "socket buffers" in v["explanation"], v


@pytest.mark.skipif(
    os.environ.get("OOMTRACE_GUEST") != "1",
    reason="runs the machine's own memory out: only in a guest kernel (make test-kernels)",
)
def test_a_cgroup_without_a_limit_that_takes_the_node_is_named(
    agent: AgentProcess, kmsg: KmsgReader
) -> None:
    with scratch_cgroup(limit=None) as cg:
        p = cg.spawn(ALLOCATE_FOREVER, oom_score_adj=1000)
        assert p.wait(300) == -9
        (rec,) = agent.take(1, where=by_pid(p.pid), timeout=120)
        path = cg.rel
    assert rec["constraint"] == "GLOBAL"
    lines = printed_report(kmsg, p.pid)
    keep_fixture(lines, "global")
    n = rec["node_mem_info"]
    if lines:
        ram = next(int(m.group(1)) for t in lines if (m := re.match(r"(\d+) pages RAM", t)))
        assert int(n["total_ram_bytes"]) == ram * 4096
        assert n["zones"], n
    top = n["top_cgroups"][0]
    assert top["path"] == path
    assert int(top["usage_bytes"]) >= 0.5 * int(n["total_ram_bytes"])
    codes = [v["code"] for v in rec["verdicts"]]
    assert codes[0] == "NODE_OUT_OF_MEMORY"
    assert "NODE_CGROUP_WITHOUT_LIMIT" in codes
    (v,) = [v for v in rec["verdicts"] if v["code"] == "NODE_CGROUP_WITHOUT_LIMIT"]
    assert path in v["explanation"]
