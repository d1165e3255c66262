/* Memory-cgroup reclaim: how often and how long tasks stalled reclaiming.
 *
 * Hooks: raw_tracepoint/mm_vmscan_memcg_reclaim_{begin,end}: count and stall
 * time per memcg, summed in the kernel (map `reclaim`), read by the pressure
 * sampler each second. Emits nothing.
 * Verified on 6.18 and 6.1.
 */
#include "common.h"

/* Memcg reclaim stalls, by the reclaiming task's memcg: the tracepoints do
 * not name the memcg being reclaimed, but a charge reclaims the charging
 * task's memcg or an ancestor of it. */
struct reclaim_stat {
    u64 count;
    u64 stall_ns;
    u64 max_stall_ns;
};
BPF_HASH(reclaim, u64, struct reclaim_stat, 8192);
BPF_HASH(reclaim_start, u32, u64, 8192);

int on_memcg_reclaim_begin(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    reclaim_start.update(&tid, &now);
    return 0;
}

int on_memcg_reclaim_end(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *start = reclaim_start.lookup(&tid);
    if (!start)
        return 0;
    u64 took = bpf_ktime_get_ns() - *start;
    reclaim_start.delete(&tid);
    void *css = task_memcg((void *)bpf_get_current_task());
    if (!css)
        return 0;
    u64 id = css_cgroup_id(css);
    struct reclaim_stat zero = {};
    struct reclaim_stat *st = reclaim.lookup_or_try_init(&id, &zero);
    if (!st)
        return 0;
    __sync_fetch_and_add(&st->count, 1);
    __sync_fetch_and_add(&st->stall_ns, took);
    if (took > st->max_stall_ns)
        st->max_stall_ns = took;
    return 0;
}
