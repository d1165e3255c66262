"""Where the memory was, from kernel reports captured on real kills (this
host's 6.18, v1; the guests' 5.10, 6.1 and 6.12, v2), through the same
record builder the agent uses for a report it recovers from the log; also
reports cut short, interleaved with another subsystem's lines, and
ratelimited, where the cgroup's files stand in."""

from __future__ import annotations

import re

import pytest

from oomtrace.agent.explain.verdicts import verdicts
from oomtrace.agent.kernel_log.reports import KmsgRecord
from oomtrace.agent.record.allocation import classify
from oomtrace.agent.record.breakdown import MemcgFiles, compute
from oomtrace.agent.record.logged import LogContext, event_from_report
from oomtrace.agent.record.parts import fill_where
from oomtrace.records import USAGE_PARTS
from oomtrace.v1 import event_pb2
from tests.unit.events import make_event
from tests.unit.test_kmsg import records
from tests.unit.test_kmsg import reports as parse

MIB = 1 << 20
HOST = "6.18.44-fc-v1272"


def record(name: str) -> event_pb2.OomEvent:
    (r,) = parse(records(name))
    return event_from_report(r, LogContext("node", "boot", 1))


def parts_sum(b: event_pb2.MemoryBreakdown) -> int:
    return sum(getattr(b, p) for p in USAGE_PARTS)


def codes(ev: event_pb2.OomEvent) -> list[str]:
    return [v.code for v in ev.verdicts]


def test_tmpfs_on_v1_is_shmem_no_task_maps() -> None:
    ev = record(f"kmsg-oom-tmpfs-{HOST}.txt")
    b = ev.breakdown
    assert b.source == b.KERNEL_REPORT
    assert b.usage_bytes == 64 * MIB
    # total_shmem as printed, all of it mapped by no task.
    assert b.shmem_bytes == ev.kernel_report.memcg_stats["total_shmem"]
    assert 40 * MIB <= b.shmem_bytes <= 41 * MIB
    assert b.shmem_unmapped_bytes == b.shmem_bytes
    assert parts_sum(b) + b.unexplained_bytes == b.usage_bytes
    assert abs(b.unexplained_bytes) < 0.05 * b.usage_bytes
    assert codes(ev)[0] == "TMPFS_MEMORY"
    assert "40 MiB" in ev.verdicts[0].explanation


def test_pipe_buffers_on_v1_are_kernel_memory_beyond_page_tables() -> None:
    ev = record(f"kmsg-oom-pipes-{HOST}.txt")
    b = ev.breakdown
    assert b.kernel_bytes == 41852 * 1024  # "kmem: usage 41852kB"
    assert b.pagetables_bytes == sum(t.pgtables_bytes for t in ev.kernel_report.tasks)
    assert b.kernel_other_bytes == b.kernel_bytes - b.pagetables_bytes
    assert abs(b.unexplained_bytes) < 0.05 * b.usage_bytes
    (v,) = [v for v in ev.verdicts if v.code == "KERNEL_MEMORY"]
    assert "pipe buffers" in v.explanation
    assert ev.verdicts[0].code == "KERNEL_MEMORY"


def test_siblings_are_summed_and_the_largest_named() -> None:
    ev = record(f"kmsg-oom-siblings-{HOST}.txt")
    b = ev.breakdown
    tasks = [t for t in ev.kernel_report.tasks if t.pid != ev.victim.pid]
    assert b.other_tasks == len(tasks) == 5
    assert b.others_anon_bytes == sum(t.rss_anon_bytes for t in tasks)
    big = max(tasks, key=lambda t: t.rss_anon_bytes)
    assert (b.largest_other_pid, b.largest_other_anon_bytes) == (big.pid, big.rss_anon_bytes)
    assert b.victim_anon_bytes == ev.victim.anon_rss_bytes
    assert "SIBLINGS_HELD_MOST" in codes(ev)


def test_mlocked_page_cache() -> None:
    ev = record(f"kmsg-oom-mlocked-{HOST}.txt")
    b = ev.breakdown
    assert b.page_cache_bytes >= 38 * MIB
    assert b.unevictable_bytes >= 38 * MIB
    assert "PAGE_CACHE_UNRECLAIMABLE" in codes(ev)


def test_a_plain_leak_is_the_victims_anon() -> None:
    ev = record(f"kmsg-oom-leak-{HOST}.txt")
    b = ev.breakdown
    assert b.victim_anon_bytes >= 0.9 * b.usage_bytes
    assert codes(ev)[0] == "ANON_GROWTH"
    assert ev.allocation.kind == ev.allocation.ANON_FAULT
    assert ev.allocation.from_function == "do_anonymous_page"


@pytest.mark.parametrize(
    ("name", "kind", "frame"),
    [
        (
            f"kmsg-oom-tmpfs-write-{HOST}.txt",
            event_pb2.Allocation.SHMEM,
            "shmem_alloc_and_add_folio",
        ),
        (f"kmsg-oom-pipe-write-{HOST}.txt", event_pb2.Allocation.PIPE, "anon_pipe_write"),
        (f"kmsg-oom-leak-{HOST}.txt", event_pb2.Allocation.ANON_FAULT, "do_anonymous_page"),
    ],
)
def test_the_call_trace_says_what_was_being_allocated(
    name: str, kind: event_pb2.Allocation.Kind.ValueType, frame: str
) -> None:
    ev = record(name)
    a = ev.allocation
    assert (a.kind, a.from_function, a.source) == (kind, frame, "kernel report")
    assert a.comm == ev.kernel_report.invoker_comm
    assert a.pid == ev.kernel_report.invoker_pid
    # Frames the kernel marks "?" are not calls.
    assert "srso_alias_return_thunk" not in a.call_trace
    assert a.call_trace[0] == "dump_stack_lvl"


def test_a_tmpfs_write_is_said_in_the_verdict() -> None:
    ev = record(f"kmsg-oom-tmpfs-write-{HOST}.txt")
    assert ev.verdicts[0].code == "TMPFS_MEMORY"
    assert "The limit was hit on a tmpfs/shared-memory page by dd[" in ev.verdicts[0].explanation


def test_classify_prefers_what_the_page_was_for() -> None:
    """A slab object allocated for a socket buffer is the socket's; a kernel
    page outside any named kind is kernel memory."""
    trace = [
        "dump_stack_lvl",
        "out_of_memory",
        "kmem_cache_alloc_node",
        "__alloc_skb",
        "tcp_sendmsg",
    ]
    assert classify(trace) == (event_pb2.Allocation.SOCKET, "__alloc_skb")
    assert (
        classify(["try_charge_memcg", "__kmalloc_node", "seq_read"])[0] == event_pb2.Allocation.SLAB
    )
    assert classify(["__memcg_kmem_charge_page", "foo"])[0] == event_pb2.Allocation.KERNEL_OTHER
    assert classify(["memory_max_write"])[0] == event_pb2.Allocation.MEMORY_LIMIT_WRITE
    assert classify([]) == (event_pb2.Allocation.KIND_UNSPECIFIED, "")


def test_a_report_cut_before_its_stats_falls_back_to_the_cgroups_files() -> None:
    recs = records(f"kmsg-oom-tmpfs-{HOST}.txt")
    # Lost records: everything from the memory counters to the task table.
    first = next(i for i, r in enumerate(recs) if r.text.startswith("memory: usage"))
    tasks = next(i for i, r in enumerate(recs) if r.text.startswith("Tasks state"))
    (r,) = parse(recs[:first] + recs[tasks:])
    ev = event_from_report(r, LogContext("node", "boot", 1))
    assert not ev.HasField("breakdown")
    assert codes(ev) == ["LIMIT_REACHED"]
    files = MemcgFiles(
        "/scratch",
        {"total_rss": 20 * MIB, "total_cache": 41 * MIB, "total_shmem": 40 * MIB},
        64 * MIB,
        64 * MIB,
        kmem_usage_bytes=3 * MIB,
        after_kill_ns=40_000_000,
    )
    b = compute(ev, files)
    assert b is not None
    assert b.source == b.CGROUP_FILES
    assert (b.shmem_bytes, b.page_cache_bytes, b.kernel_bytes) == (40 * MIB, MIB, 3 * MIB)
    assert b.unexplained_bytes == 0
    assert "40 ms after the kill" in b.notes[0]


def test_interleaved_lines_do_not_change_the_breakdown() -> None:
    recs = records(f"kmsg-oom-siblings-{HOST}.txt")
    noise = [
        KmsgRecord(r.seq, r.ts_us, "e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex", 0)
        for r in recs[::7]
    ]
    mixed = [x for pair in zip(recs, noise + [None] * len(recs), strict=False) for x in pair if x]
    (plain,) = parse(recs)
    (noisy,) = parse(mixed)
    ctx = LogContext("node", "boot", 1)
    assert event_from_report(noisy, ctx).breakdown == event_from_report(plain, ctx).breakdown


def test_ratelimited_live_kill_uses_files_and_says_what_bpf_saw() -> None:
    ev = make_event(rss_mib=20)
    ev.trigger.pid, ev.trigger.tid, ev.trigger.comm = 7, 7, "writer"
    ev.kernel_report.ratelimited = True
    files = MemcgFiles(
        "/app",
        {"anon": 21 * MIB, "file": 41 * MIB, "shmem": 40 * MIB, "kernel": 2 * MIB},
        64 * MIB,
        64 * MIB,
    )
    tmp = event_pb2.TmpfsMount(mount_point="/dev/shm", kind="/dev/shm", used_bytes=40 * MIB)
    fill_where(ev, None, files, [tmp])
    assert ev.breakdown.source == ev.breakdown.CGROUP_FILES
    assert ev.allocation.source == "bpf"
    assert ev.allocation.comm == "writer"
    (v, *_) = verdicts(ev)
    assert v.code == "TMPFS_MEMORY"
    assert "/dev/shm (/dev/shm) holds 40 MiB" in v.explanation
    assert "kubernetes#128339" in v.explanation
    assert "ratelimited" in v.explanation


GUEST = "6.1.0-56-amd64"  # cgroup v2; prefixes put back on the text the guest kept


@pytest.mark.parametrize(
    ("shape", "code"),
    [
        ("tmpfs", "TMPFS_MEMORY"),
        ("pipes", "KERNEL_MEMORY"),
        ("siblings", "SIBLINGS_HELD_MOST"),
        # The guest's /tmp is a tmpfs: the mlocked file there is shmem.
        ("mlocked", "TMPFS_MEMORY"),
    ],
)
def test_v2_reports_print_their_stats_in_one_record_and_add_up(shape: str, code: str) -> None:
    ev = record(f"kmsg-oom-{shape}-{GUEST}.txt")
    b = ev.breakdown
    st = ev.kernel_report.memcg_stats
    assert b.source == b.KERNEL_REPORT
    assert "anon" in st
    assert b.kernel_bytes == st["kernel"] + st["sock"]
    assert b.shmem_bytes == st["shmem"]
    assert parts_sum(b) + b.unexplained_bytes == b.usage_bytes
    assert abs(b.unexplained_bytes) <= 0.05 * b.usage_bytes
    assert code in codes(ev)


def test_a_node_wide_report_has_its_mem_info_parsed() -> None:
    ev = record(f"kmsg-oom-global-{GUEST}.txt")
    assert ev.constraint == ev.GLOBAL
    n = ev.node_mem_info
    text = ev.kernel_report.raw
    ram = int(re.search(r"(\d+) pages RAM", text).group(1))  # type: ignore[union-attr]
    assert n.total_ram_bytes == ram * 4096
    assert n.zones
    assert n.free_bytes > 0
    assert n.min_watermark_bytes > 0
    assert codes(ev)[0] == "NODE_OUT_OF_MEMORY"
    assert "RAM" in ev.verdicts[0].explanation
