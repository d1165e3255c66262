/* Go programs' GC, seen from inside the runtime.
 *
 * Hook: uprobe on runtime.gcMarkTermination of each Go binary (attached by
 * user space, oomtrace/agent/go/probes.py), once per completed GC cycle.
 * Emits nothing: it keeps each process's state in go_states, which kill.c
 * copies into the kill event and user space samples each second.
 * Verified on 6.18 and 6.1 with Go 1.21 to 1.27.
 */
#include "common.h"

/* Go runtime state per process (tgid), kept by the uprobes below. */
struct go_state {
    u32 flags;
    u32 pos;
    u64 gc_count;
    u64 last_gc_ns;
    u64 gc_ns[OOMT_GO_RING];
    s64 gc_percent;
    s64 memory_limit;
    u64 heap_live;
    u64 heap_marked;
    u64 heap_goal;
    u64 controller_ns;
    u64 gomaxprocs;
};
BPF_HASH(go_states, u32, struct go_state, 16384);

/* Where a Go process's runtime keeps what the GC probe reads, written by user
 * space when it discovers the process: the run-time addresses of
 * runtime.gcController and runtime.gomaxprocs (load bias applied), and the
 * offsets of gcControllerState's fields for its Go version (-1: unknown). */
struct go_proc {
    u64 controller;
    u64 gomaxprocs;
    s32 off_gc_percent;
    s32 off_memory_limit;
    s32 off_heap_goal;
    s32 off_heap_live;
    s32 off_heap_marked;
    s32 pad;
};
BPF_HASH(go_procs, u32, struct go_proc, 16384);

/* Go: the uprobes run in the Go process itself, so tgid names it. */
static __always_inline struct go_state *go_state_of(u32 tgid)
{
    struct go_state zero = {};
    struct go_state *st = go_states.lookup_or_try_init(&tgid, &zero);
    if (!st)
        count_lost(OOMT_LOST_GO_STATES);
    return st;
}

#define GO_READ(dst, base, off)                                                \
    if ((off) >= 0)                                                            \
        bpf_probe_read_user(&(dst), sizeof(dst), (void *)((base) + (off)))

/* runtime.gcMarkTermination: once per completed GC cycle, at the end of
 * marking (the world is stopped). The one Go probe: it counts the cycle and,
 * where user space found the runtime's globals, reads the GC controller
 * (heapLive is the heap at the end of marking; heapMarked is the live heap
 * the previous cycle marked; the goal is this cycle's). */
int on_go_gc_done(struct pt_regs *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct go_state *st = go_state_of(tgid);
    if (!st)
        return 0;
    u64 now = bpf_ktime_get_boot_ns();
    st->flags |= OOMT_GO_GC;
    st->gc_count++;
    st->last_gc_ns = now;
    u32 i = st->pos & (OOMT_GO_RING - 1);
    st->gc_ns[i] = now;
    st->pos++;

    struct go_proc *gp = go_procs.lookup(&tgid);
    if (!gp || !gp->controller)
        return 0;
    u64 c = gp->controller;
    s32 pct = 0;
    GO_READ(pct, c, gp->off_gc_percent);
    st->gc_percent = pct;
    GO_READ(st->memory_limit, c, gp->off_memory_limit);
    GO_READ(st->heap_goal, c, gp->off_heap_goal);
    GO_READ(st->heap_live, c, gp->off_heap_live);
    GO_READ(st->heap_marked, c, gp->off_heap_marked);
    s32 procs = 0;
    if (gp->gomaxprocs)
        bpf_probe_read_user(&procs, sizeof(procs), (void *)gp->gomaxprocs);
    st->gomaxprocs = procs;
    st->controller_ns = now;
    st->flags |= OOMT_GO_CONTROLLER;
    return 0;
}
