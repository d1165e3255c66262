"""Verdicts on where the memory was, from the record's breakdown (what the
kernel's report, or the cgroup's files, said at the kill) and what was being
allocated. Each part of the usage that held a good share of it gets the
verdict of its kind; a record whose breakdown could not be made gets one
saying what is known. Numbers are the record's own, never estimated."""

from __future__ import annotations

from oomtrace.agent.explain.wording import CRITICAL, INFO, WARNING, mib, verdict
from oomtrace.records import allocation_text, limit_hit_bytes, rss_bytes
from oomtrace.v1 import event_pb2

# A part holding this share of the usage is where the memory was.
MAJOR_SHARE = 0.25
# Siblings "held most": more than this share, and more than the victim.
SIBLINGS_SHARE = 0.4
KUBERNETES_TMPFS_ISSUE = "kubernetes#128339"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "?"


def memory_verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    """The breakdown's verdicts, largest part first (none without one)."""
    b = ev.breakdown
    usage = b.usage_bytes
    if not ev.HasField("breakdown") or not usage:
        return []
    found: list[tuple[int, event_pb2.Verdict]] = []
    where = b.cgroup or ev.cgroup.oom_memcg_path or ev.cgroup.path
    head = f"At the kill {where} used {mib(usage)}" + (
        f" of its {mib(b.limit_bytes)} limit" if b.limit_bytes else ""
    )

    if b.shmem_bytes >= MAJOR_SHARE * usage:
        found.append((b.shmem_bytes, _tmpfs(ev, b, head)))
    kernel = b.kernel_bytes
    if kernel >= MAJOR_SHARE * usage:
        found.append((kernel, _kernel(b, head)))
    if b.page_cache_bytes >= MAJOR_SHARE * usage:
        found.append((b.page_cache_bytes, _page_cache(b, head)))
    if b.others_anon_bytes >= SIBLINGS_SHARE * usage and b.others_anon_bytes > b.victim_anon_bytes:
        found.append((b.others_anon_bytes, _siblings(ev, b, head)))
    if b.unmapped_anon_bytes >= MAJOR_SHARE * usage:
        found.append(
            (
                b.unmapped_anon_bytes,
                verdict(
                    "ANON_NOT_MAPPED",
                    WARNING,
                    f"{head}; {mib(b.unmapped_anon_bytes)} ({_pct(b.unmapped_anon_bytes, usage)}) "
                    "was anonymous memory no listed task mapped: tasks that had just exited or "
                    "been killed were still being freed, or the report's task table was cut.",
                    "Look at the kills just before this one in the same cgroup (oomtrace "
                    "history --incidents): a previous victim's memory was not yet released.",
                ),
            )
        )
    if b.victim_anon_bytes >= MAJOR_SHARE * usage or not found:
        found.append((b.victim_anon_bytes, _anon_growth(ev, b, head)))
    found.sort(key=lambda f: -f[0])
    out = [vd for _, vd in found]
    a = ev.allocation
    if ev.HasField("allocation") and a.kind != a.KIND_UNSPECIFIED:
        out[0].explanation += f" The limit was hit on {allocation_text(a)}."
    elif ev.HasField("allocation") and a.source == "bpf":
        out[0].explanation += (
            f" The kernel ratelimited its report: the allocation that hit the limit was "
            f"{a.comm}[{a.pid}]'s, of a kind not known."
        )
    frag = _fragmentation(ev)
    if frag is not None:
        out.append(frag)
    if b.unexplained_bytes > 0.05 * usage:
        out.append(
            verdict(
                "USAGE_UNEXPLAINED",
                INFO,
                f"{mib(b.unexplained_bytes)} of the {mib(usage)} usage is in no part the "
                f"{'kernel printed' if b.source == b.KERNEL_REPORT else 'cgroup files hold'}.",
                "See the breakdown's notes for what this kernel does not split out.",
            )
        )
    return out


def _tmpfs(ev: event_pb2.OomEvent, b: event_pb2.MemoryBreakdown, head: str) -> event_pb2.Verdict:
    usage = b.usage_bytes
    # The mount whose contents account for the shmem: the largest that holds
    # no more than the cgroup's shmem (a mount the cgroup did not fill, the
    # host's /run seen through a shared namespace, is not it).
    mount = next(
        (m for m in b.tmpfs if b.shmem_bytes * 0.5 <= m.used_bytes <= b.shmem_bytes * 1.2), None
    )
    unmapped = (
        f", {mib(b.shmem_unmapped_bytes)} of it mapped by no task" if b.shmem_unmapped_bytes else ""
    )
    if mount is not None:
        if mount.kind == "emptyDir":
            name = f"the emptyDir volume {mount.volume} (medium Memory) at {mount.mount_point}"
        else:
            name = f"{mount.mount_point} ({mount.kind})"
        size = (
            f", size limit {mib(mount.size_limit_bytes)}"
            if mount.size_limit_bytes and mount.size_limit_bytes < (1 << 50)
            else ""
        )
        place = f"; {name} holds {mib(mount.used_bytes)}{size}"
    else:
        place = (
            "; no tmpfs mount of its tasks was found holding it (a file on a tmpfs its tasks "
            "no longer see, or System V / memfd shared memory)"
        )
    restart = ""
    if ev.pod.name or ev.pod.uid or (mount is not None and mount.kind in ("emptyDir", "/dev/shm")):
        restart = (
            " Files in a memory-backed emptyDir or /dev/shm outlive the container: it is "
            f"restarted into the same full tmpfs and killed again ({KUBERNETES_TMPFS_ISSUE})."
        )
    return verdict(
        "TMPFS_MEMORY",
        CRITICAL,
        f"{head}; {mib(b.shmem_bytes)} ({_pct(b.shmem_bytes, usage)}) was tmpfs/shared memory"
        f"{unmapped}{place}, against {mib(b.victim_anon_bytes)} anonymous memory of the victim "
        f"{ev.victim.comm}[{ev.victim.pid}].{restart}",
        "Give the emptyDir a sizeLimit below the container's limit, put the files on disk "
        "(an emptyDir without medium: Memory), delete them when done, or raise the limit to "
        "count them: tmpfs pages are charged to the cgroup and cannot be reclaimed without swap.",
    )


def _kernel(b: event_pb2.MemoryBreakdown, head: str) -> event_pb2.Verdict:
    usage = b.usage_bytes
    kinds = [
        ("socket buffers", b.sock_bytes),
        ("unreclaimable slab", b.slab_unreclaimable_bytes),
        ("reclaimable slab", b.slab_reclaimable_bytes),
        ("kernel stacks", b.kernel_stack_bytes),
        ("page tables", b.pagetables_bytes),
        ("percpu", b.percpu_bytes),
        ("vmalloc", b.vmalloc_bytes),
        ("pipe buffers and other directly charged kernel pages", b.kernel_other_bytes),
    ]
    kinds.sort(key=lambda k: -k[1])
    top, top_bytes = kinds[0]
    rest = ", ".join(f"{name} {mib(n)}" for name, n in kinds[1:4] if n)
    fixes = {
        "socket buffers": "a reader that keeps up with its sockets, or smaller socket buffers "
        "(net.ipv4.tcp_rmem/wmem)",
        "unreclaimable slab": "find the kernel objects (slabtop, /proc/slabinfo; many open "
        "files, inotify watches, sockets or namespaces)",
        "pipe buffers and other directly charged kernel pages": "a reader that drains its "
        "pipes (or fewer or smaller pipes: F_SETPIPE_SZ), and fewer kernel objects",
        "page tables": "fewer, smaller address spaces (huge pages, fewer processes)",
        "kernel stacks": "fewer threads",
    }
    return verdict(
        "KERNEL_MEMORY",
        WARNING,
        f"{head}; {mib(b.kernel_bytes)} ({_pct(b.kernel_bytes, usage)}) was kernel memory "
        f"charged to it, most of it {top} ({mib(top_bytes)})"
        + (f"; then {rest}" if rest else "")
        + ".",
        f"Kernel memory counts against the limit like any other: {fixes.get(top, 'fewer kernel objects')}; "
        "or raise the limit to hold it.",
    )


def _page_cache(b: event_pb2.MemoryBreakdown, head: str) -> event_pb2.Verdict:
    usage = b.usage_bytes
    stuck = b.dirty_bytes + b.writeback_bytes
    why = []
    if stuck:
        why.append(f"{mib(b.dirty_bytes)} dirty and {mib(b.writeback_bytes)} under writeback")
    if b.unevictable_bytes:
        why.append(f"{mib(b.unevictable_bytes)} unevictable (mlocked)")
    if b.mapped_file_bytes:
        why.append(f"{mib(b.mapped_file_bytes)} mapped by tasks")
    return verdict(
        "PAGE_CACHE_UNRECLAIMABLE",
        WARNING,
        f"{head}; {mib(b.page_cache_bytes)} ({_pct(b.page_cache_bytes, usage)}) was page cache "
        "the kernel could not reclaim in time" + (f": {', '.join(why)}" if why else "") + ".",
        "Write less faster than the disk takes it (fsync or O_DIRECT for bulk writes, lower "
        "vm.dirty_ratio / dirty_bytes), unlock what is mlocked, or raise the limit.",
    )


def _siblings(ev: event_pb2.OomEvent, b: event_pb2.MemoryBreakdown, head: str) -> event_pb2.Verdict:
    usage = b.usage_bytes
    v = ev.victim
    how = " (their whole rss: this kernel prints no rss_anon)" if b.others_from_rss else ""
    return verdict(
        "SIBLINGS_HELD_MOST",
        WARNING,
        f"{head}; the {b.other_tasks} other task(s) in it held {mib(b.others_anon_bytes)} "
        f"({_pct(b.others_anon_bytes, usage)}) of anonymous memory{how}, the largest "
        f"{b.largest_other_name}[{b.largest_other_pid}] with {mib(b.largest_other_anon_bytes)}, "
        f"against the victim {v.comm}[{v.pid}]'s {mib(b.victim_anon_bytes)}.",
        f"Look at {b.largest_other_name}'s memory, not only the victim's; give the processes "
        "limits of their own (separate containers), or raise the shared limit.",
    )


def _anon_growth(
    ev: event_pb2.OomEvent, b: event_pb2.MemoryBreakdown, head: str
) -> event_pb2.Verdict:
    usage = b.usage_bytes
    v = ev.victim
    text = (
        f"{head}; the victim {v.comm}[{v.pid}]'s own anonymous memory was "
        f"{mib(b.victim_anon_bytes)} ({_pct(b.victim_anon_bytes, usage)})"
    )
    # Growth: the timeline's first point to the kill's own usage (the
    # kernel's figure), not the last sample a second before.
    points = [p for p in ev.timeline if not p.missed and p.offset_ms < 0]
    if points and points[0].offset_ms <= -2000 and usage > points[0].usage_bytes:
        span_s = -points[0].offset_ms / 1000
        grew = usage - points[0].usage_bytes
        text += (
            f"; the cgroup grew {mib(grew)} in the {span_s:.0f} s before the kill "
            f"({grew / span_s / (1 << 20):.1f} MiB/s), from {mib(points[0].usage_bytes)}"
        )
    return verdict(
        "ANON_GROWTH",
        WARNING,
        text + ".",
        f"{v.comm}'s heap outgrew the limit: find what it keeps (a heap profile, a leak), bound "
        "its caches, or raise the limit above its working set.",
    )


def _fragmentation(ev: event_pb2.OomEvent) -> event_pb2.Verdict | None:
    """An order > 0 allocation failed on a node that had free memory above
    its watermarks, but no free block that large."""
    if not ev.HasField("node_mem_info") or not ev.HasField("allocation"):
        return None
    order, mi = ev.allocation.order, ev.node_mem_info
    if order <= 0 or mi.free_bytes <= mi.min_watermark_bytes or mi.largest_free_order >= order:
        return None
    return verdict(
        "FRAGMENTATION",
        WARNING,
        f"An order-{order} allocation ({4 << order} KiB contiguous) failed with "
        f"{mib(mi.free_bytes)} free on the node (min watermarks {mib(mi.min_watermark_bytes)}), "
        f"but no free block above order {mi.largest_free_order}: memory was fragmented.",
        "Avoid high-order allocations (smaller socket/jumbo buffers), enable compaction "
        "(vm.compaction_proactiveness), or keep more free memory (vm.min_free_kbytes).",
    )


def fallback_verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    """For a kill no other verdict explains: what is known of it, its victim
    against the limit hit, and why no more is."""
    if ev.source == ev.COUNTER:
        return [
            verdict(
                "DETAILS_LOST",
                INFO,
                f"{ev.kills} kill(s) counted in {ev.cgroup.path or 'the node'} whose kernel log "
                "lines were gone before an agent read them: where the memory was is not known.",
                "Run the agent continuously (a DaemonSet) so each kill is seen live.",
            )
        ]
    if ev.source == ev.USERSPACE:
        return []  # it has its own verdict
    limit = limit_hit_bytes(ev)
    v = ev.victim
    if ev.HasField("breakdown"):
        why = "no part of the usage stands out"
    elif ev.kernel_report.ratelimited or not ev.HasField("kernel_report"):
        why = "the kernel ratelimited its report and the cgroup's files could not be read"
    else:
        why = "the kernel's report held no memory statistics"
    return [
        verdict(
            "LIMIT_REACHED",
            WARNING,
            f"{ev.cgroup.oom_memcg_path or ev.cgroup.path or 'The cgroup'} reached its "
            + (f"{mib(limit)} " if limit else "")
            + f"limit and {v.comm}[{v.pid}] ({mib(rss_bytes(ev))} resident, "
            f"{mib(v.anon_rss_bytes)} anonymous) was killed; where the rest was is not known: "
            f"{why}.",
            "Compare the victim's size with the limit: raise the limit, or reduce what it keeps.",
        )
    ]


def node_verdicts(ev: event_pb2.OomEvent) -> list[event_pb2.Verdict]:
    """A node-wide OOM with the kernel's Mem-Info: what took the node, each
    with its numbers; the cgroup that held most named, and said when it had
    no limit of its own."""
    n, v = ev.node_mem_info, ev.victim
    ram = n.total_ram_bytes
    anon = n.active_anon_bytes + n.inactive_anon_bytes
    cache = n.active_file_bytes + n.inactive_file_bytes
    slab = n.slab_unreclaimable_bytes
    huge = n.hugepages_total_bytes
    parts = [
        ("anonymous memory", anon),
        ("page cache", cache),
        ("shmem/tmpfs", n.shmem_bytes),
        ("unreclaimable slab", slab),
        ("page tables", n.pagetables_bytes),
        ("hugepages reserved", huge),
    ]
    said = ", ".join(f"{name} {mib(b)}" for name, b in sorted(parts, key=lambda p: -p[1]) if b)
    top = n.top_cgroups[0] if n.top_cgroups else None
    held = ""
    if top is not None:
        held = f"; the memory cgroup holding most was {top.path} with {mib(top.usage_bytes)}" + (
            f" (limit {mib(top.limit_bytes)})" if top.limit_bytes else " and no limit of its own"
        )
    out = [
        verdict(
            "NODE_OUT_OF_MEMORY",
            CRITICAL,
            f"The whole node ran out of memory ({mib(ram)} RAM, {mib(n.free_bytes)} free against "
            f"min watermarks of {mib(n.min_watermark_bytes)}, swap {mib(n.swap_free_bytes)} free "
            f"of {mib(n.swap_total_bytes)}): {said}{held}; the kernel killed "
            f"{v.comm}[{v.pid}] ({mib(rss_bytes(ev))} resident) as the largest eligible task.",
            "Set memory limits on workloads (requests = limits for critical ones) so one "
            "cannot take the node; reserve memory for the system (kubelet --system-reserved).",
        )
    ]
    if top is not None and not top.limit_bytes and ram and top.usage_bytes >= 0.5 * ram:
        out.append(
            verdict(
                "NODE_CGROUP_WITHOUT_LIMIT",
                CRITICAL,
                f"{top.path} held {mib(top.usage_bytes)} ({_pct(top.usage_bytes, ram)} of the "
                "node's RAM) with no memory limit: it took the node.",
                f"Give {top.path} a memory limit (a pod: resources.limits.memory).",
            )
        )
    if ram and huge >= 0.25 * ram:
        out.append(
            verdict(
                "NODE_HUGEPAGES_RESERVED",
                WARNING,
                f"{mib(huge)} ({_pct(huge, ram)} of RAM) is reserved as hugetlb pages "
                f"({mib(n.hugepages_free_bytes)} of them free), out of reach of every other use.",
                "Reserve fewer hugepages (vm.nr_hugepages, hugepagesz= on the kernel command line).",
            )
        )
    if ram and slab + n.pagetables_bytes >= 0.25 * ram:
        out.append(
            verdict(
                "NODE_KERNEL_MEMORY",
                WARNING,
                f"The kernel held {mib(slab)} of unreclaimable slab and {mib(n.pagetables_bytes)} "
                f"of page tables ({_pct(slab + n.pagetables_bytes, ram)} of RAM).",
                "Find the kernel objects (slabtop, /proc/slabinfo) and what creates them.",
            )
        )
    frag = _fragmentation(ev)
    if frag is not None:
        out.append(frag)
    return out
