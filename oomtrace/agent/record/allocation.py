"""What was being allocated when the limit was hit, read off the kernel's
report: the invoker's gfp mask and order, and the first frame of its call
trace, outward from the charge, that says what the page was for. Where the
report was ratelimited, what the BPF side saw of the trigger (and
oom_control's gfp mask and order where that hook ran) stands in, and the
kind stays unknown rather than guessed."""

from __future__ import annotations

from oomtrace.v1 import event_pb2

Allocation = event_pb2.Allocation
Kind = Allocation.Kind

# Innermost first the trace runs dump_stack, the OOM killer, the charge, then
# the allocator's caller: the first of these names met decides. Order within
# a kind does not matter; across kinds it does only where one calls another
# (a tmpfs write passes generic_perform_write: shmem is met first).
_BY_PREFIX: tuple[tuple[str, Kind.ValueType], ...] = (
    ("memory_max_write", Allocation.MEMORY_LIMIT_WRITE),
    ("mem_cgroup_resize_max", Allocation.MEMORY_LIMIT_WRITE),
    ("mem_cgroup_resize_limit", Allocation.MEMORY_LIMIT_WRITE),
    ("pipe_write", Allocation.PIPE),
    ("anon_pipe_write", Allocation.PIPE),  # 6.16+
    ("copy_page_to_iter_pipe", Allocation.PIPE),
    ("splice_", Allocation.PIPE),
    ("shmem_", Allocation.SHMEM),
    ("__shmem_", Allocation.SHMEM),
    ("alloc_skb", Allocation.SOCKET),
    ("__alloc_skb", Allocation.SOCKET),
    ("sock_alloc_send", Allocation.SOCKET),
    ("skb_page_frag_refill", Allocation.SOCKET),
    ("__sk_mem_raise_allocated", Allocation.SOCKET),
    ("tcp_sendmsg", Allocation.SOCKET),
    ("unix_stream_sendmsg", Allocation.SOCKET),
    ("do_huge_pmd_anonymous_page", Allocation.HUGE_PAGE),
    ("__do_huge_pmd_anonymous_page", Allocation.HUGE_PAGE),
    ("vma_alloc_anon_folio_pmd", Allocation.HUGE_PAGE),
    ("do_huge_pmd_wp_page", Allocation.HUGE_PAGE),
    ("__pte_alloc", Allocation.PAGE_TABLE),
    ("pte_alloc_one", Allocation.PAGE_TABLE),
    ("__pmd_alloc", Allocation.PAGE_TABLE),
    ("__pud_alloc", Allocation.PAGE_TABLE),
    ("alloc_thread_stack_node", Allocation.KERNEL_STACK),
    ("dup_task_struct", Allocation.KERNEL_STACK),
    ("kmem_cache_alloc", Allocation.SLAB),
    ("__kmem_cache_alloc", Allocation.SLAB),
    ("__kmalloc", Allocation.SLAB),
    ("kmalloc_", Allocation.SLAB),
    ("allocate_slab", Allocation.SLAB),
    ("__memcg_slab_post_alloc_hook", Allocation.SLAB),
    ("memcg_slab_post_alloc_hook", Allocation.SLAB),
    ("do_anonymous_page", Allocation.ANON_FAULT),
    ("alloc_anon_folio", Allocation.ANON_FAULT),
    ("do_cow_fault", Allocation.ANON_FAULT),
    ("wp_page_copy", Allocation.ANON_FAULT),
    ("do_wp_page", Allocation.ANON_FAULT),
    ("do_swap_page", Allocation.ANON_FAULT),
    ("filemap_add_folio", Allocation.PAGE_CACHE),
    ("__filemap_add_folio", Allocation.PAGE_CACHE),
    ("add_to_page_cache", Allocation.PAGE_CACHE),
    ("__filemap_get_folio", Allocation.PAGE_CACHE),
    ("pagecache_get_page", Allocation.PAGE_CACHE),
    ("grab_cache_page_write_begin", Allocation.PAGE_CACHE),
    ("page_cache_ra", Allocation.PAGE_CACHE),
    ("filemap_fault", Allocation.PAGE_CACHE),
    ("generic_perform_write", Allocation.PAGE_CACHE),
    ("filemap_read", Allocation.PAGE_CACHE),
    ("__memcg_kmem_charge_page", Allocation.KERNEL_OTHER),
    ("__memcg_kmem_charge", Allocation.KERNEL_OTHER),
)
# Frames of the OOM path and the charge itself: they say nothing of the kind.
_PLUMBING = (
    "dump_stack",
    "dump_header",
    "oom_kill_process",
    "out_of_memory",
    "mem_cgroup_out_of_memory",
    "mem_cgroup_oom",
    "try_charge",
    "charge_memcg",
    "__mem_cgroup_charge",
    "mem_cgroup_charge",
    "obj_cgroup_charge",  # slab objects and kernel pages alike
)


# What the page was for, wherever it is met on the trace: a slab object for
# a socket buffer is the socket's, a tmpfs write passes the page-cache write
# path. The other kinds are the allocator itself, the innermost decides.
_CONTEXT = frozenset(
    (
        Allocation.MEMORY_LIMIT_WRITE,
        Allocation.PIPE,
        Allocation.SHMEM,
        Allocation.SOCKET,
        Allocation.HUGE_PAGE,
        Allocation.PAGE_TABLE,
        Allocation.KERNEL_STACK,
    )
)


def classify(frames: list[str] | tuple[str, ...]) -> tuple[Kind.ValueType, str]:
    """The kind of allocation a call trace (innermost first) made, and the
    frame that told it; (KIND_UNSPECIFIED, "") when none does."""
    names = [
        (fn, fn.split(".", 1)[0]) for fn in frames if not fn.split(".", 1)[0].startswith(_PLUMBING)
    ]
    for context in (True, False):
        for fn, name in names:
            for prefix, kind in _BY_PREFIX:
                if (kind in _CONTEXT) == context and name.startswith(prefix):
                    return kind, fn
    return Allocation.KIND_UNSPECIFIED, ""


def allocation(ev: event_pb2.OomEvent) -> Allocation | None:
    """The record's allocation: from its kernel report, else (ratelimited)
    from the trigger the BPF side saw; None when neither knows anything."""
    kr = ev.kernel_report
    a = Allocation()
    if ev.HasField("kernel_report") and not kr.ratelimited and (kr.gfp_mask or kr.call_trace):
        a.source = "kernel report"
        a.gfp_mask, a.order = kr.gfp_mask, kr.order
        a.pid, a.comm = kr.invoker_pid or ev.trigger.tid, kr.invoker_comm
        a.call_trace.extend(kr.call_trace)
        a.kind, a.from_function = classify(list(kr.call_trace))
        return a
    if not (ev.trigger.pid or ev.trigger.comm):
        return None
    a.source = "bpf"
    a.pid, a.comm = ev.trigger.tid or ev.trigger.pid, ev.trigger.comm
    if ev.HasField("oom_control"):
        a.gfp_mask, a.order = hex(ev.oom_control.gfp_mask), ev.oom_control.order
    return a
