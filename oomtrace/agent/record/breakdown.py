"""Where the memory was: the cgroup whose limit was hit, split at the kill.

Computed once, here, for every record builder. The kernel's own report comes
first: its memcg counters (`memory:`, v1's `kmem:`), its stats block (v1's
`total_*` lines, v2's memory.stat lines as 5.10, 6.1 and 6.12 print them) and
its task table. Where the report was ratelimited or cut before its stats, the
cgroup's own files, read by the agent at the kill (`MemcgFiles`), stand in.

How the kernel counts, both versions alike: usage = anonymous pages + file
pages (page cache and shmem) + kernel memory. v1 prints kernel memory as one
figure (`kmem: usage`, inside `memory: usage`); v2 names its parts (slab,
stacks, page tables, percpu, vmalloc inside `kernel`, sockets beside it).
What the named parts leave of a total stays a part of its own (kernel_other:
pipe buffers and other pages charged with __GFP_ACCOUNT), and what usage holds
beyond every part is `unexplained_bytes`, never spread over the others."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from oomtrace.v1 import event_pb2

MemoryBreakdown = event_pb2.MemoryBreakdown

# v2 kernel-memory parts, inside "kernel" (6.1+; 5.10 prints no total).
_V2_KMEM_PARTS = {
    "slab_reclaimable": "slab_reclaimable_bytes",
    "slab_unreclaimable": "slab_unreclaimable_bytes",
    "kernel_stack": "kernel_stack_bytes",
    "pagetables": "pagetables_bytes",
    "percpu": "percpu_bytes",
    "vmalloc": "vmalloc_bytes",
}
# Also counted in "kernel" but not its own field here (6.2+ secondary page tables).
_V2_KMEM_UNNAMED = ("sec_pagetables",)


@dataclass(frozen=True, slots=True)
class MemcgFiles:
    """A memory cgroup's own files, read at the kill: memory.stat as it is
    (bytes, v1 or v2 keys), usage and limit, v1's kmem usage, swap."""

    path: str
    stats: Mapping[str, int]
    usage_bytes: int
    limit_bytes: int = 0
    kmem_usage_bytes: int | None = None  # v1 memory.kmem.usage_in_bytes
    swap_bytes: int | None = None  # v1 memsw - memory, v2 memory.swap.current
    after_kill_ns: int = 0  # how long after the kill they were read


@dataclass(frozen=True, slots=True)
class _Stats:
    """memory.stat, the same keys whichever version printed it."""

    anon: int
    file: int
    shmem: int
    dirty: int
    writeback: int
    mapped_file: int
    swap: int | None
    unevictable: int
    kernel: int | None  # all kernel memory charged, when the source gives a total
    parts: dict[str, int] = field(default_factory=dict)  # MemoryBreakdown field -> bytes
    sock: int = 0
    v1: bool = False


def _stats(stats: Mapping[str, int], kmem_v1: int | None) -> _Stats | None:
    """The stats block in one shape; None when it holds no anon/file figure."""
    if "total_rss" in stats or "rss" in stats or "cache" in stats:
        # v1: the oom memcg's own lines first, then its subtree's (total_*).
        p = "total_" if any(k.startswith("total_") for k in stats) else ""

        def g(k: str) -> int:
            return int(stats.get(p + k, 0))

        return _Stats(
            anon=g("rss"),
            file=g("cache"),
            shmem=g("shmem"),
            dirty=g("dirty"),
            writeback=g("writeback"),
            mapped_file=g("mapped_file"),
            swap=g("swap") if (p + "swap") in stats else None,
            unevictable=g("unevictable"),
            kernel=kmem_v1,
            v1=True,
        )
    if "anon" not in stats and "file" not in stats:
        return None
    parts = {f: int(stats[k]) for k, f in _V2_KMEM_PARTS.items() if k in stats}
    sock = int(stats.get("sock", 0))
    # 6.1+ print the total of kernel memory; sockets are charged beside it.
    kernel = int(stats["kernel"]) + sock if "kernel" in stats else None
    return _Stats(
        anon=int(stats.get("anon", 0)),
        file=int(stats.get("file", 0)),
        shmem=int(stats.get("shmem", 0)),
        dirty=int(stats.get("file_dirty", 0)),
        writeback=int(stats.get("file_writeback", 0)),
        mapped_file=int(stats.get("file_mapped", 0)),
        swap=None,
        unevictable=int(stats.get("unevictable", 0)),
        kernel=kernel,
        parts=parts,
        sock=sock,
    )


def compute(
    ev: event_pb2.OomEvent,
    files: MemcgFiles | None = None,
    tmpfs: Sequence[event_pb2.TmpfsMount] = (),
) -> MemoryBreakdown | None:
    """The breakdown of ev's memcg at the kill from its kernel report (ev
    already holds it, parsed), else from files; None when neither has the
    stats (a COUNTER record, a report cut before them and no files)."""
    kr = ev.kernel_report
    notes: list[str] = []
    b = MemoryBreakdown()
    st: _Stats | None = None
    if ev.HasField("kernel_report") and kr.memcg_stats and kr.memcg_usage_bytes:
        kmem = kr.kmem_usage_bytes if kr.kmem_usage_bytes or "total_rss" in kr.memcg_stats else None
        st = _stats(kr.memcg_stats, kmem)
        if st is not None:
            b.source = MemoryBreakdown.KERNEL_REPORT
            b.cgroup = kr.stats_cgroup or kr.oom_memcg
            b.usage_bytes = kr.memcg_usage_bytes
            b.limit_bytes = kr.memcg_limit_bytes
            if st.v1 and kr.memsw_usage_bytes >= kr.memcg_usage_bytes and kr.memsw_limit_bytes:
                b.swap_bytes = kr.memsw_usage_bytes - kr.memcg_usage_bytes
            elif kr.swap_usage_bytes:
                b.swap_bytes = kr.swap_usage_bytes
    if st is None and files is not None:
        st = _stats(files.stats, files.kmem_usage_bytes)
        if st is not None:
            b.source = MemoryBreakdown.CGROUP_FILES
            b.cgroup = files.path
            b.usage_bytes = files.usage_bytes
            b.limit_bytes = files.limit_bytes
            if files.swap_bytes is not None:
                b.swap_bytes = files.swap_bytes
            why = (
                "the kernel ratelimited its report"
                if kr.ratelimited or not ev.HasField("kernel_report")
                else "the kernel's report was cut before its stats"
            )
            notes.append(
                f"from the cgroup's files read {files.after_kill_ns / 1e6:.0f} ms after the "
                f"kill ({why}): the victim's own pages may already be freed"
            )
    if st is None:
        return None
    if st.swap is not None and not b.swap_bytes:
        b.swap_bytes = st.swap

    _split_anon(b, ev, st.anon, notes)
    b.shmem_bytes = st.shmem
    b.page_cache_bytes = max(0, st.file - st.shmem)
    b.dirty_bytes = st.dirty
    b.writeback_bytes = st.writeback
    b.mapped_file_bytes = st.mapped_file
    b.unevictable_bytes = st.unevictable
    mapped_shmem = sum(t.rss_shmem_bytes for t in kr.tasks)
    b.shmem_unmapped_bytes = max(0, st.shmem - mapped_shmem)
    _split_kernel(b, ev, st, notes)
    explained = st.anon + st.file + b.kernel_bytes
    b.unexplained_bytes = b.usage_bytes - explained
    b.tmpfs.extend(tmpfs)
    b.notes.extend(notes)
    return b


def _split_anon(b: MemoryBreakdown, ev: event_pb2.OomEvent, anon: int, notes: list[str]) -> None:
    """The victim's anon (its Killed line, or the BPF snapshot), the other
    tasks' (the report's table), and what no listed task maps."""
    v = ev.victim
    tasks = ev.kernel_report.tasks
    b.victim_anon_bytes = min(v.anon_rss_bytes, anon)
    has_anon_column = any(t.rss_anon_bytes for t in tasks)
    others = [t for t in tasks if t.pid != v.pid]
    b.other_tasks = len(others)
    if others:
        if not has_anon_column:
            b.others_from_rss = True
            notes.append(
                "other tasks' anon is their whole rss: this kernel's task table has no rss_anon"
            )

        def anon_of(t: event_pb2.ReportTask) -> int:
            return t.rss_anon_bytes if has_anon_column else t.rss_bytes

        big = max(others, key=anon_of)
        b.largest_other_name = big.name
        b.largest_other_pid = big.pid
        b.largest_other_anon_bytes = anon_of(big)
        b.others_anon_bytes = min(sum(anon_of(t) for t in others), anon - b.victim_anon_bytes)
        b.largest_other_anon_bytes = min(b.largest_other_anon_bytes, b.others_anon_bytes)
    elif not tasks:
        notes.append("no task table in the report: other tasks' anon is not split out")
    b.unmapped_anon_bytes = anon - b.victim_anon_bytes - b.others_anon_bytes


def _split_kernel(b: MemoryBreakdown, ev: event_pb2.OomEvent, st: _Stats, notes: list[str]) -> None:
    for name, value in st.parts.items():
        setattr(b, name, value)
    b.sock_bytes = st.sock
    named = sum(st.parts.values())
    if st.v1:
        # v1 prints one kmem figure; page tables are in it, and the task
        # table says how much of them the listed tasks hold.
        if st.kernel is None:
            notes.append("kernel memory: this report prints no kmem line")
            return
        b.kernel_bytes = st.kernel
        b.pagetables_bytes = min(st.kernel, sum(t.pgtables_bytes for t in ev.kernel_report.tasks))
        b.kernel_other_bytes = st.kernel - b.pagetables_bytes
        return
    if st.kernel is None:
        # 5.10 prints no total. Usage is anon + file + kernel memory, all
        # charged to one counter: what the named parts leave is kernel memory
        # no counter names (pipe buffers, other __GFP_ACCOUNT pages).
        rest = b.usage_bytes - st.anon - st.file - named - st.sock
        b.kernel_other_bytes = max(0, rest)
        b.kernel_bytes = named + st.sock + b.kernel_other_bytes
        if b.kernel_other_bytes:
            notes.append(
                "kernel memory: this kernel prints no total; pipe buffers and other charged "
                "pages are usage less anon, file and the named kernel parts"
            )
        return
    b.kernel_bytes = st.kernel
    unnamed = sum(int(ev.kernel_report.memcg_stats.get(k, 0)) for k in _V2_KMEM_UNNAMED)
    b.kernel_other_bytes = max(0, st.kernel - st.sock - named - unnamed)
