"""Synthetic kernel BTF in the shapes of two kernel generations, with every
struct kernel_layout.resolve() reads. Offsets are made up but distinct, so a
test can tell which field an offset came from."""

from __future__ import annotations

from tests.unit.btf_builder import BtfBuilder


def kernel_btf(*, new: bool) -> bytes:
    """new: 6.18 shapes (task pointer in mark_victim, percpu_counter rss_stat,
    kernfs_node.__parent, ring buffer). Otherwise 5.15-like shapes."""
    b = BtfBuilder()
    int_ = b.int_("int", 4)
    long_ = b.int_("long", 8)
    ulong = b.int_("unsigned long", 8)
    short = b.int_("short", 2)
    char = b.int_("char", 1)
    u64 = b.typedef("u64", ulong)
    void_ptr = b.ptr(0)
    char_ptr = b.ptr(char)
    comm = b.array(char, 16, int_)
    atomic_long = b.struct("", 8, [("counter", long_, 0)])
    atomic_long_t = b.typedef("atomic_long_t", atomic_long)
    atomic = b.struct("", 4, [("counter", int_, 0)])
    atomic_t = b.typedef("atomic_t", atomic)

    kuid = b.struct("", 4, [("val", int_, 0)])
    cred = b.struct("cred", 64, [("uid", kuid, 8)])
    signal = b.struct(
        "signal_struct",
        1100,
        [("live", atomic_t, 4), ("nr_threads", int_, 20), ("oom_score_adj", short, 1058)],
    )
    qstr_anon = b.struct("", 8, [("hash", int_, 0), ("len", int_, 4)])
    qstr = b.struct("qstr", 16, [("", qstr_anon, 0), ("name", char_ptr, 8)])
    dentry = b.struct("dentry", 200, [("d_name", qstr, 32)])
    dentry_ptr = b.ptr(dentry)
    path = b.struct("path", 16, [("mnt", void_ptr, 0), ("dentry", dentry_ptr, 8)])
    file = b.struct("file", 200, [("f_path", path, 64)])
    file_ptr = b.ptr(file)
    if new:
        pcc = b.struct(
            "percpu_counter",
            40,
            [("lock", int_, 0), ("count", long_, 8), ("counters", void_ptr, 32)],
        )
        rss = b.array(pcc, 4, int_)
        rss_off = 960
    else:
        counts = b.array(atomic_long_t, 4, int_)
        rss = b.struct("mm_rss_stat", 32, [("count", counts, 0)])
        rss_off = 700
    mm_inner = b.struct(
        "",
        1200,
        [
            ("pgtables_bytes", atomic_long_t, 168),
            ("total_vm", ulong, 360),
            ("arg_start", ulong, 480),
            ("arg_end", ulong, 488),
            ("rss_stat", rss, rss_off),
            ("exe_file", file_ptr, 1312),
        ],
    )
    mm = b.struct("mm_struct", 1400, [("", mm_inner, 0)])
    kn = b.fwd_struct("kernfs_node")
    kn_ptr = b.ptr(kn)
    parent_name = "__parent" if new else "parent"
    b.struct(
        "kernfs_node", 136, [(parent_name, kn_ptr, 8), ("name", char_ptr, 16), ("id", u64, 96)]
    )
    croot = b.struct("cgroup_root", 4096, [("hierarchy_id", int_, 12)])
    cgroup = b.struct(
        "cgroup", 900, [("level", int_, 100), ("kn", kn_ptr, 280), ("root", b.ptr(croot), 600)]
    )
    cgroup_ptr = b.ptr(cgroup)
    css = b.fwd_struct("cgroup_subsys_state")
    css_ptr = b.ptr(css)
    b.struct("cgroup_subsys_state", 208, [("cgroup", cgroup_ptr, 0), ("parent", css_ptr, 136)])
    subsys = b.array(css_ptr, 14, int_)
    css_set = b.struct("css_set", 544, [("subsys", subsys, 8)])
    css_set_ptr = b.ptr(css_set)
    b.enum("cgroup_subsys_id", [("cpuset_cgrp_id", 0), ("cpu_cgrp_id", 1), ("memory_cgrp_id", 4)])
    b.enum("", [("MM_FILEPAGES", 0), ("MM_ANONPAGES", 1), ("MM_SWAPENTS", 2), ("MM_SHMEMPAGES", 3)])
    pc = b.struct(
        "page_counter",
        192,
        [("usage", atomic_long_t, 0), ("failcnt", ulong, 8), ("max", ulong, 160)],
    )
    memcg_css = b.struct("", 208, [("x", int_, 0)])
    swap_union = b.struct("", 192, [("swap", pc, 0), ("memsw", pc, 0)], union=True)
    # The resolver only checks that css sits at offset 0; any struct stands in.
    b.struct(
        "mem_cgroup", 2176, [("css", memcg_css, 0), ("memory", pc, 256), ("", swap_union, 448)]
    )
    task = b.struct(
        "task_struct",
        4000,
        [
            ("pid", int_, 1264 if new else 1400),
            ("tgid", int_, 1268 if new else 1404),
            ("real_cred", b.ptr(cred), 1728),
            ("comm", comm, 1752),
            ("mm", b.ptr(mm), 1200),
            ("signal", b.ptr(signal), 1800),
            ("exit_code", int_, 1340),
            ("cgroups", css_set_ptr, 2400),
        ],
    )
    task_ptr = b.ptr(task)
    if new:
        uid_t = b.typedef("uid_t", int_)
        proto = b.func_proto([void_ptr, task_ptr, uid_t])
        b.struct("bpf_ringbuf", 64, [("x", int_, 0)])
    else:
        proto = b.func_proto([void_ptr, int_])
    b.typedef("btf_trace_mark_victim", b.ptr(proto))
    b.enum("oom_constraint", [("CONSTRAINT_NONE", 0), ("CONSTRAINT_MEMCG", 3)])
    b.struct(
        "oom_control",
        64,
        [
            ("memcg", void_ptr, 16),
            ("gfp_mask", int_, 24),
            ("order", int_, 28),
            ("totalpages", ulong, 32),
            ("chosen", task_ptr, 40),
            ("chosen_points", long_, 48),
            ("constraint", int_, 56),
        ],
    )
    return b.build()
