"""A node-wide OOM: the kernel's Mem-Info block (kmsg.MemInfo) as the record
holds it (the cgroups that held most are read by memcg_files.top_cgroups)."""

from __future__ import annotations

from oomtrace.agent.kernel_log.reports import MemInfo
from oomtrace.v1 import event_pb2

KIB = 1024


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
