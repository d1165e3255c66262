/* Memory cgroups coming and going, so containers are known before they die.
 *
 * Hooks: raw_tracepoint/cgroup_{mkdir,rmdir}: OOMT_CGROUP_* for cgroups of
 * the memory controller's hierarchy (MEMCG_HIERARCHY_ID) only.
 * Verified on 6.18 (cgroup v1) and 6.1 (v2).
 */
#include "common.h"

BPF_PERCPU_ARRAY(cgroup_scratch, struct oomt_cgroup_note, 1);

static __always_inline int emit_cgroup_note(void *ctx, u32 kind)
{
    void *cgrp = (void *)ctx_arg(ctx, 0);
    void *root = (void *)read_ptr(cgrp, OFF_CGROUP_ROOT);
    int hierarchy = -1;
    if (root)
        KREAD(hierarchy, root, OFF_CGROUP_ROOT_HIERARCHY_ID);
    if (hierarchy != MEMCG_HIERARCHY_ID)
        return 0;
    u32 zero = 0;
    struct oomt_cgroup_note *n = cgroup_scratch.lookup(&zero);
    if (!n) {
        count_lost(OOMT_LOST_SCRATCH);
        return 0;
    }
    n->kind = kind;
    n->boot_ns = bpf_ktime_get_boot_ns();
    n->cgroup_id = 0;
    n->level = 0;
    void *kn = (void *)read_ptr(cgrp, OFF_CGROUP_KN);
    if (kn)
        KREAD(n->cgroup_id, kn, OFF_KERNFS_NODE_ID);
    KREAD(n->level, cgrp, OFF_CGROUP_LEVEL);
    n->path[0] = 0;
    bpf_probe_read_kernel_str(n->path, sizeof(n->path), (void *)ctx_arg(ctx, 1));
    if (emit(ctx, OOMT_BUF_CGROUP_NOTES, n, sizeof(*n)) < 0)
        count_lost(OOMT_LOST_CGROUP_NOTES);
    return 0;
}

/* cgroup_mkdir / cgroup_rmdir (struct cgroup *cgrp, const char *path) */
int on_cgroup_mkdir(struct bpf_raw_tracepoint_args *ctx)
{
    return emit_cgroup_note(ctx, OOMT_CGROUP_MKDIR);
}

int on_cgroup_rmdir(struct bpf_raw_tracepoint_args *ctx)
{
    return emit_cgroup_note(ctx, OOMT_CGROUP_RMDIR);
}
