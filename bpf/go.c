/* Go programs' GC, seen from inside the runtime.
 *
 * Hooks:
 *   uprobe on runtime.gcMarkTermination of each Go binary (attached by user
 *     space, oomtrace/agent/runtimes/go/probes.py), once per completed GC cycle. Emits
 *     nothing: it keeps each process's state in go_states, which kill.c
 *     copies into the kill event and user space samples each second.
 *   raw_tracepoint/signal_deliver: a Go victim (kill.c marks it due) dequeues
 *     its SIGKILL in its own context, its memory still mapped: the heap
 *     profile's buckets are copied out then (walk below).
 *   The GC probe also takes one profile "before": at the end of a GC, when
 *     the process's memcg (or one of its nearest ancestors) is above
 *     GO_PROFILE_BEFORE_PERCENT of its limit, at most once per
 *     GO_PROFILE_BEFORE_WINDOW_NS per process, so a record can say what grew
 *     between then and the kill.
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
    u64 profile_before_ns;  /* when the last "before" profile was taken */
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
    /* The heap profile, where found (0: not walked): runtime.mbuckets and
     * runtime.MemProfileRate at run time, and the bucket layout of the
     * process's Go version (go/layouts.py HEAP_PROFILE). */
    u64 mbuckets;
    u64 mem_profile_rate;
    s32 bucket_allnext;
    s32 bucket_size;
    s32 bucket_nstk;
    s32 bucket_header;      /* the PCs start here */
    s32 record_allocs;      /* in the memRecord after the PCs: the active cycle */
    s32 record_frees;
    s32 record_alloc_bytes; /* -1: counts only (Go 1.27): bytes = count * size */
    s32 record_free_bytes;
    s32 record_future;      /* the cycles not yet published: allocations since the last */
    s32 record_cycle;       /* GC, frees swept since; each cycle's size (16 or 32) */
};
BPF_HASH(go_procs, u32, struct go_proc, 16384);

/* -- the heap profile at the kill ----------------------------------------- */

/* Go victims whose profile is still to be walked: tgid -> the time the
 * walk goes by (the kill's key). The first of the victim's threads to
 * dequeue SIGKILL takes the entry and walks.
 *
 * The OOM killer sends its SIGKILL before mark_victim runs, and a victim's
 * other threads, awake on other CPUs, can dequeue it at once. So the
 * kernel's SIGKILL (SEND_SIG_PRIV) to a Go process whose profile was found
 * already makes the entry, under the signal's time; mark_victim then gives
 * its kill that key. Should a thread have taken it before mark_victim, the
 * kill makes a new entry under its own time, and the thread that comes back
 * from the OOM killer walks again (the first walk is claimed by no kill,
 * and user space drops it). A kernel SIGKILL that was no OOM kill leaves a
 * walk no kill claims, too. */
BPF_HASH(go_profile_due, u32, u64, 4096);

/* signal_generate's part (kill.c): a kernel SIGKILL to this process. */
static __always_inline void go_note_kernel_sigkill(u32 tgid)
{
    struct go_proc *gp = go_procs.lookup(&tgid);
    if (!gp || !gp->mbuckets)
        return;
    u64 now = bpf_ktime_get_boot_ns();
    go_profile_due.insert(&tgid, &now); /* an entry already there stays */
}

/* mark_victim's part (kill.c): the key this kill's profile goes by. */
static __always_inline u64 go_profile_key(u32 tgid, u64 kill_ns)
{
    u64 *due = go_profile_due.lookup(&tgid);
    if (due)
        return *due;
    if (go_profile_due.insert(&tgid, &kill_ns) != 0) {
        due = go_profile_due.lookup(&tgid); /* made meanwhile: that one */
        if (due)
            return *due;
    }
    return kill_ns;
}

/* A walk in progress, carried across tail calls (same CPU, same run). */
struct go_walk {
    struct go_proc proc;
    struct oomt_go_profile end;
    u64 next;               /* the next bucket's address; 0: done */
    u64 hdr[8];             /* the bucket header being read: next, allnext, typ, hash,
                             * size, nstk (indexed by the layout's offsets: a map
                             * value, as 5.10 refuses variable stack offsets) */
    u64 future[16];         /* the memRecord's future cycles being read (same reason) */
};
BPF_PERCPU_ARRAY(go_walks, struct go_walk, 1);
BPF_PERCPU_ARRAY(go_bucket_scratch, struct oomt_go_bucket, 1);
BPF_PROG_ARRAY(go_walk_next, 1);

/* The counts runtime/pprof does not show yet: allocations since the last
 * completed GC (the runtime publishes a cycle only once the GC after it has
 * swept), less the frees swept since. For a kill these are often the point:
 * with GOGC=100 the allocations that crossed the limit all came after the
 * last GC. Summed over the memRecord's three future cycles. */
static __always_inline void go_walk_pending(struct go_walk *w, struct oomt_go_bucket *b, u64 rec)
{
    struct go_proc *gp = &w->proc;
    u64 *f = w->future;
    int words = gp->record_cycle == 16 ? 2 : 4;
    int bad = 0;
    b->pending_allocs = b->pending_frees = b->pending_alloc_bytes = b->pending_free_bytes = 0;
    if (gp->record_cycle == 16)
        bad = bpf_probe_read_user(f, 3 * 16, (void *)(rec + (gp->record_future & 0xff)));
    else if (gp->record_cycle == 32)
        bad = bpf_probe_read_user(f, 3 * 32, (void *)(rec + (gp->record_future & 0xff)));
    else
        return;
    if (bad < 0)
        return;
    for (int c = 0; c < 3; c++) {
        int i = c * words;
        b->pending_allocs += f[i & 15];
        b->pending_frees += f[(i + 1) & 15];
        if (words == 4) {
            b->pending_alloc_bytes += f[(i + 2) & 15];
            b->pending_free_bytes += f[(i + 3) & 15];
        }
    }
    if (words == 2) {
        b->pending_alloc_bytes = b->pending_allocs * b->size;
        b->pending_free_bytes = b->pending_frees * b->size;
    }
}

/* Copies up to OOMT_GO_WALK_STEP buckets; returns 1 while more are left. */
static __always_inline int go_walk_step(void *ctx, struct go_walk *w)
{
    u32 zero = 0;
    struct oomt_go_bucket *b = go_bucket_scratch.lookup(&zero);
    if (!b)
        return 0;
    struct go_proc *gp = &w->proc;
    for (int i = 0; i < OOMT_GO_WALK_STEP; i++) {
        u64 addr = w->next;
        if (!addr)
            return 0;
        u64 *hdr = w->hdr;
        if (bpf_probe_read_user(hdr, 6 * sizeof(u64), (void *)addr) < 0) {
            w->end.status = OOMT_PROFILE_READ_FAILED;
            w->next = 0;
            return 0;
        }
        u64 nstk = hdr[((u32)gp->bucket_nstk >> 3) & 7];
        if (nstk > OOMT_GO_MAX_NSTK) {
            w->end.status = OOMT_PROFILE_BAD_BUCKET;
            w->next = 0;
            return 0;
        }
        b->kind = OOMT_GO_BUCKET;
        b->tgid = w->end.tgid;
        b->kill_ns = w->end.kill_ns;
        b->size = hdr[((u32)gp->bucket_size >> 3) & 7];
        b->nstk = nstk;
        u32 depth = nstk < OOMT_GO_STACK_DEPTH ? nstk : OOMT_GO_STACK_DEPTH;
        if (nstk > OOMT_GO_STACK_DEPTH)
            w->end.stacks_cut++;
        b->depth = depth;
        u32 bytes = (depth & (OOMT_GO_STACK_DEPTH * 2 - 1)) * 8;
        if (bytes > sizeof(b->pc))
            bytes = sizeof(b->pc);
        u64 pcs = addr + (gp->bucket_header & 0xff);
        u64 rec = pcs + nstk * 8;
        u64 counts[4] = {};
        if ((bytes && bpf_probe_read_user(b->pc, bytes, (void *)pcs) < 0) ||
            bpf_probe_read_user(counts, sizeof(counts), (void *)(rec + (gp->record_allocs & 0xff))) < 0) {
            w->end.status = OOMT_PROFILE_READ_FAILED;
            w->next = 0;
            return 0;
        }
        /* allocs, frees, alloc_bytes, free_bytes follow each other in every
         * layout that has the bytes; Go 1.27 keeps counts only. */
        b->allocs = counts[0];
        b->frees = counts[1];
        if (gp->record_alloc_bytes >= 0) {
            b->alloc_bytes = counts[2];
            b->free_bytes = counts[3];
        } else {
            b->alloc_bytes = counts[0] * b->size;
            b->free_bytes = counts[1] * b->size;
        }
        go_walk_pending(w, b, rec);
        u32 size = sizeof(*b) - sizeof(b->pc) + bytes;
        if (size > sizeof(*b))
            size = sizeof(*b);
        if (emit(ctx, OOMT_BUF_PROFILES, b, size) < 0) {
            w->end.lost++;
            count_lost(OOMT_LOST_PROFILES);
        }
        w->end.buckets++;
        w->next = hdr[((u32)gp->bucket_allnext >> 3) & 7];
    }
    return w->next != 0;
}

static __always_inline void go_walk_finish(void *ctx, struct go_walk *w)
{
    w->end.more = w->next != 0;
    w->end.walk_ns = bpf_ktime_get_boot_ns() - w->end.boot_ns;
    struct oomt_go_bucket *end = (struct oomt_go_bucket *)&w->end;
    if (emit(ctx, OOMT_BUF_PROFILES, end, sizeof(w->end)) < 0)
        count_lost(OOMT_LOST_PROFILES);
}

/* A walk set up in this CPU's go_walks: 0 when the first bucket is known,
 * -1 when it has already ended (its end is emitted), or no scratch. */
static __always_inline int go_walk_begin(void *ctx, struct go_walk *w, struct go_proc *gp, u32 tgid,
                                         u64 kill_ns, u32 why)
{
    bpf_probe_read_kernel(&w->proc, sizeof(w->proc), gp);
    __builtin_memset(&w->end, 0, sizeof(w->end));
    w->end.kind = OOMT_GO_PROFILE;
    w->end.tgid = tgid;
    w->end.kill_ns = kill_ns;
    w->end.why = why;
    w->end.boot_ns = bpf_ktime_get_boot_ns();
    w->end.mbuckets = gp->mbuckets;
    w->next = 0;
    if (bpf_probe_read_user(&w->end.rate, sizeof(w->end.rate), (void *)gp->mem_profile_rate) < 0 ||
        bpf_probe_read_user(&w->next, sizeof(w->next), (void *)gp->mbuckets) < 0) {
        w->end.status = OOMT_PROFILE_READ_FAILED;
        go_walk_finish(ctx, w);
        return -1;
    }
    return 0;
}

/* The walk's continuations, reached only by tail call: one per program type
 * (a tail call stays within its type). */
int go_walk_more(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0;
    struct go_walk *w = go_walks.lookup(&zero);
    if (!w)
        return 0;
    if (go_walk_step(ctx, w))
        go_walk_next.call(ctx, 0); /* returns only when no more tail calls are allowed */
    go_walk_finish(ctx, w);
    return 0;
}

BPF_PROG_ARRAY(go_walk_next_uprobe, 1);

int go_walk_more_uprobe(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct go_walk *w = go_walks.lookup(&zero);
    if (!w)
        return 0;
    if (go_walk_step(ctx, w))
        go_walk_next_uprobe.call(ctx, 0);
    go_walk_finish(ctx, w);
    return 0;
}

/* signal_deliver(int sig, struct kernel_siginfo *info, struct k_sigaction *ka) */
int on_signal_deliver(struct bpf_raw_tracepoint_args *ctx)
{
    /* SIGKILL from the kernel; SIGTERM too from a userspace OOM killer. */
    int sig = (int)ctx->args[0];
    if (sig != 9 && sig != 15)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 *due = go_profile_due.lookup(&tgid);
    if (!due)
        return 0;
    u64 kill_ns = *due;
    if (go_profile_due.delete(&tgid) != 0)
        return 0; /* another of its threads took it */
    struct go_proc *gp = go_procs.lookup(&tgid);
    u32 zero = 0;
    struct go_walk *w = go_walks.lookup(&zero);
    if (!gp || !w || go_walk_begin(ctx, w, gp, tgid, kill_ns, OOMT_PROFILE_AT_KILL) < 0)
        return 0;
    if (go_walk_step(ctx, w))
        go_walk_next.call(ctx, 0);
    go_walk_finish(ctx, w);
    return 0;
}

/* The nearest memcg (of the current task's, and up to 3 ancestors) whose
 * usage is at or above pct % of its limit: its (usage, max) pages, or 0. */
static __always_inline int go_memcg_near_limit(u64 *usage, u64 *max, u32 pct)
{
    void *css = task_memcg((void *)bpf_get_current_task());
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (!css)
            return 0;
        u64 u = 0, m = 0;
        KREAD(u, css, OFF_MEMCG_MEMORY + OFF_PAGE_COUNTER_USAGE);
        KREAD(m, css, OFF_MEMCG_MEMORY + OFF_PAGE_COUNTER_MAX);
        /* PAGE_COUNTER_MAX (no limit) is far above any usage */
        if (m && u * 100 >= m * pct) {
            *usage = u;
            *max = m;
            return 1;
        }
        css = (void *)read_ptr(css, OFF_CSS_PARENT);
    }
    return 0;
}

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

/* Where user space found the runtime's globals: the GC controller. */
static __always_inline void go_read_controller(struct go_state *st, struct go_proc *gp, u64 now)
{
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
}

/* A profile before the kill: the memcg is near its limit, none was taken in
 * the window, and profiling is on here. The world is stopped: this is the
 * process's own context, and no allocation races the walk. */
static __always_inline void go_profile_before(struct pt_regs *ctx, struct go_state *st,
                                              struct go_proc *gp, u32 tgid, u64 now)
{
    u64 usage = 0, max = 0;
    if (!gp->mbuckets ||
        (st->profile_before_ns && now - st->profile_before_ns < GO_PROFILE_BEFORE_WINDOW_NS))
        return;
    if (!go_memcg_near_limit(&usage, &max, GO_PROFILE_BEFORE_PERCENT))
        return;
    st->profile_before_ns = now;
    u32 zero = 0;
    struct go_walk *w = go_walks.lookup(&zero);
    if (!w || go_walk_begin(ctx, w, gp, tgid, 0, OOMT_PROFILE_BEFORE) < 0)
        return;
    w->end.memcg_usage_pages = usage;
    w->end.memcg_max_pages = max;
    if (go_walk_step(ctx, w))
        go_walk_next_uprobe.call(ctx, 0);
    go_walk_finish(ctx, w);
}

/* runtime.gcMarkTermination: once per completed GC cycle, at the end of
 * marking (the world is stopped). The one Go probe: it counts the cycle and,
 * where user space found the runtime's globals, reads the GC controller
 * (heapLive is the heap at the end of marking; heapMarked is the live heap
 * the previous cycle marked; the goal is this cycle's); near the memcg's
 * limit, it takes a heap profile. */
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
    if (!gp)
        return 0;
    if (gp->controller)
        go_read_controller(st, gp, now);
    go_profile_before(ctx, st, gp, tgid, now);
    return 0;
}
