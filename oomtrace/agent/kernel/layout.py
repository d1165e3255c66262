"""Kernel struct layouts and hook shapes, resolved from the running kernel's BTF.

The result is a set of `-D` constants for the programs in bpf/, plus the facts `doctor`
reports (which mark_victim shape, which rss_stat shape, ring buffer or not).
Features are probed in BTF, never inferred from a version number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oomtrace.agent.errors import BtfError
from oomtrace.agent.kernel.btf import KIND_ARRAY, KIND_FUNC, KIND_STRUCT, Btf

# (macro, struct, field path). `a|b` tries a, then b (renamed fields).
_FIELDS: list[tuple[str, str, str]] = [
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_COMM", "task_struct", "comm"),
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_TASK_SIGNAL", "task_struct", "signal"),
    ("OFF_TASK_EXIT_CODE", "task_struct", "exit_code"),
    ("OFF_TASK_REAL_CRED", "task_struct", "real_cred"),
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("OFF_CRED_UID", "cred", "uid"),
    ("OFF_SIGNAL_OOM_SCORE_ADJ", "signal_struct", "oom_score_adj"),
    ("OFF_SIGNAL_NR_THREADS", "signal_struct", "nr_threads"),
    ("OFF_SIGNAL_LIVE", "signal_struct", "live"),
    ("OFF_MM_TOTAL_VM", "mm_struct", "total_vm"),
    ("OFF_MM_RSS_STAT", "mm_struct", "rss_stat"),
    ("OFF_MM_PGTABLES_BYTES", "mm_struct", "pgtables_bytes"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    ("OFF_MM_EXE_FILE", "mm_struct", "exe_file"),
    ("OFF_FILE_DENTRY", "file", "f_path.dentry"),
    ("OFF_DENTRY_NAME", "dentry", "d_name.name"),
    ("OFF_CSS_SET_SUBSYS", "css_set", "subsys"),
    ("OFF_CSS_CGROUP", "cgroup_subsys_state", "cgroup"),
    ("OFF_CSS_PARENT", "cgroup_subsys_state", "parent"),
    ("OFF_CGROUP_KN", "cgroup", "kn"),
    ("OFF_CGROUP_ROOT", "cgroup", "root"),
    ("OFF_CGROUP_LEVEL", "cgroup", "level"),
    ("OFF_CGROUP_ROOT_HIERARCHY_ID", "cgroup_root", "hierarchy_id"),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
    ("OFF_KERNFS_NODE_NAME", "kernfs_node", "name"),
    ("OFF_MEMCG_MEMORY", "mem_cgroup", "memory"),
    ("OFF_PAGE_COUNTER_USAGE", "page_counter", "usage"),
    ("OFF_PAGE_COUNTER_MAX", "page_counter", "max"),
    ("OFF_PAGE_COUNTER_FAILCNT", "page_counter", "failcnt"),
]

_OOM_CONTROL_FIELDS: list[tuple[str, str]] = [
    ("OFF_OC_CHOSEN", "chosen"),
    ("OFF_OC_TOTALPAGES", "totalpages"),
    ("OFF_OC_CHOSEN_POINTS", "chosen_points"),
    ("OFF_OC_CONSTRAINT", "constraint"),
    ("OFF_OC_ORDER", "order"),
    ("OFF_OC_GFP_MASK", "gfp_mask"),
    ("OFF_OC_MEMCG", "memcg"),
]


@dataclass(frozen=True, slots=True)
class KernelLayout:
    defines: dict[str, int]
    mark_victim_has_task: bool
    rss_stat_shape: str  # "percpu_counter" (6.2+) or "atomic_long" (older)
    has_memsw: bool
    has_ringbuf: bool
    oom_control: bool  # struct oom_control has what the kprobe extra reads
    oom_kill_process_btf_id: int = 0  # its FUNC in the BTF (fentry's target); 0: none
    notes: list[str] = field(default_factory=list)

    def cflags(self) -> list[str]:
        flags = [f"-D{k}={v}" for k, v in sorted(self.defines.items())]
        if self.mark_victim_has_task:
            flags.append("-DMARK_VICTIM_TASK=1")
        if self.has_ringbuf:
            flags.append("-DUSE_RINGBUF=1")
        return flags


def resolve(btf: Btf) -> KernelLayout:
    """Every offset the programs in bpf/ read; raises BtfError naming the first field
    this kernel lacks."""
    defines: dict[str, int] = {}
    notes: list[str] = []
    for macro, struct_name, path in _FIELDS:
        defines[macro] = btf.field(struct_name, path).offset

    # mem_cgroup must begin with its css: the programs use one pointer for both.
    if btf.field("mem_cgroup", "css").offset != 0:
        raise BtfError(
            "struct mem_cgroup does not start with its css; this kernel is not supported"
        )

    defines["MEMORY_CGRP_ID"] = btf.enum_value("memory_cgrp_id", "cgroup_subsys_id")
    for macro, name in (
        ("MM_FILEPAGES_IDX", "MM_FILEPAGES"),
        ("MM_ANONPAGES_IDX", "MM_ANONPAGES"),
        ("MM_SWAPENTS_IDX", "MM_SWAPENTS"),
        ("MM_SHMEMPAGES_IDX", "MM_SHMEMPAGES"),
    ):
        defines[macro] = btf.enum_value(name)

    rss = btf.field("mm_struct", "rss_stat")
    rss_type = btf.strip(rss.type_id)
    if btf.kind(rss_type) == KIND_ARRAY:
        # 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS]; get_mm_counter()
        # reads only the central count, as the kernel's OOM report does.
        elem, _index, _n = btf.array_info(rss_type)
        defines["RSS_STAT_STRIDE"] = btf.size_of(elem)
        defines["RSS_STAT_COUNT_OFF"] = btf.field("percpu_counter", "count").offset
        shape = "percpu_counter"
    elif btf.kind(rss_type) == KIND_STRUCT:
        # Older: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
        count = btf.field("mm_rss_stat", "count")
        defines["RSS_STAT_STRIDE"] = 8
        defines["RSS_STAT_COUNT_OFF"] = count.offset
        shape = "atomic_long"
    else:
        raise BtfError("mm_struct.rss_stat has a shape oomtrace does not know")

    # v1's memory+swap counter shares a union with v2's swap counter.
    has_memsw = btf.has_field("mem_cgroup", "memsw")
    if has_memsw:
        defines["OFF_MEMCG_MEMSW"] = btf.field("mem_cgroup", "memsw").offset
    else:
        notes.append("mem_cgroup has no memsw counter: memory+swap usage is not recorded")

    params = btf.func_proto_params("btf_trace_mark_victim")
    # (void *ctx, struct task_struct *task, uid_t uid) since 5.19; (void *, int pid) before.
    mark_victim_has_task = len(params) >= 2 and btf.type_name(params[1]) == "struct task_struct *"
    if not mark_victim_has_task:
        notes.append(
            "oom:mark_victim carries only the victim's pid on this kernel: the victim's "
            "details need the oom_kill_process kprobe"
        )

    oom_control = btf.has_struct("oom_control") and all(
        btf.has_field("oom_control", path) for _m, path in _OOM_CONTROL_FIELDS
    )
    if oom_control:
        for macro, path in _OOM_CONTROL_FIELDS:
            defines[macro] = btf.field("oom_control", path).offset

    return KernelLayout(
        defines=defines,
        mark_victim_has_task=mark_victim_has_task,
        rss_stat_shape=shape,
        has_memsw=has_memsw,
        # BPF_MAP_TYPE_RINGBUF (5.8+) brings struct bpf_ringbuf with it.
        has_ringbuf=btf.has_struct("bpf_ringbuf"),
        oom_control=oom_control,
        oom_kill_process_btf_id=next(
            (i for i in btf.ids_named("oom_kill_process") if btf.kind(i) == KIND_FUNC), 0
        ),
        notes=notes,
    )
