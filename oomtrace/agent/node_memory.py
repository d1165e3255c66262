"""A node-wide OOM: the kernel's Mem-Info block (kmsg.MemInfo) as the record
holds it, and the memory cgroups that held most when it happened, read from
the cgroup tree at the kill (bounded: depth and directories)."""

from __future__ import annotations

import os
from pathlib import Path

from oomtrace.agent.kmsg import MemInfo
from oomtrace.v1 import event_pb2

KIB = 1024
MAX_DIRS = 5000
MAX_DEPTH = 6
TOP = 5


def node_mem_info(mi: MemInfo, page_size: int) -> event_pb2.NodeMemInfo:
    pages = mi.pages
    n = event_pb2.NodeMemInfo(
        free_bytes=pages.get("free", 0) * page_size,
        min_watermark_bytes=sum(z.min_kb for z in mi.zones) * KIB,
        slab_reclaimable_bytes=pages.get("slab_reclaimable", 0) * page_size,
        slab_unreclaimable_bytes=pages.get("slab_unreclaimable", 0) * page_size,
        shmem_bytes=pages.get("shmem", 0) * page_size,
        pagetables_bytes=pages.get("pagetables", 0) * page_size,
        active_anon_bytes=pages.get("active_anon", 0) * page_size,
        inactive_anon_bytes=pages.get("inactive_anon", 0) * page_size,
        active_file_bytes=pages.get("active_file", 0) * page_size,
        inactive_file_bytes=pages.get("inactive_file", 0) * page_size,
        unevictable_bytes=pages.get("unevictable", 0) * page_size,
        hugepages_total_bytes=sum(t * size for t, _f, size in mi.hugepages) * KIB,
        hugepages_free_bytes=sum(f * size for _t, f, size in mi.hugepages) * KIB,
        swap_free_bytes=(mi.swap_free_kb or 0) * KIB,
        swap_total_bytes=(mi.swap_total_kb or 0) * KIB,
        total_ram_bytes=mi.totals.get("pages RAM", 0) * page_size,
        kernel_stack_bytes=mi.node_kb.get("kernel_stack", 0) * KIB,
    )
    for z in mi.zones:
        n.zones.add(
            name=z.name,
            free_bytes=z.free_kb * KIB,
            min_bytes=z.min_kb * KIB,
            managed_bytes=z.managed_kb * KIB,
        )
    fullest = max(mi.zones, key=lambda z: z.free_kb, default=None)
    n.largest_free_order = fullest.largest_free_order if fullest is not None else -1
    return n


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        return None


def top_cgroups(
    mount: Path, version: int, limit: int = TOP
) -> list[event_pb2.NodeMemInfo.CgroupUsage]:
    """The memory cgroups holding most by their own usage (less their
    children's: a parent's usage counts its children's too), largest first,
    each with its limit (0: none, or one its ancestors set)."""
    usage_file = "memory.current" if version == 2 else "memory.usage_in_bytes"
    limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
    usage: dict[Path, int] = {}
    seen = 0
    for dirpath, dirs, _files in os.walk(mount):
        d = Path(dirpath)
        depth = len(d.relative_to(mount).parts)
        if depth >= MAX_DEPTH:
            dirs[:] = []
        seen += 1
        if seen > MAX_DIRS:
            break
        if d == mount:
            continue  # the root has no usage file of its own on v2
        u = _read_int(d / usage_file)
        if u is not None:
            usage[d] = u
    own = dict(usage)
    for d, u in usage.items():
        if d.parent in own:
            own[d.parent] -= u
    out = []
    for d, u in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lim = _read_int(d / limit_file) or 0
        out.append(
            event_pb2.NodeMemInfo.CgroupUsage(
                path="/" + str(d.relative_to(mount)),
                usage_bytes=max(u, 0),
                limit_bytes=lim if lim < (1 << 60) else 0,
            )
        )
    return out
