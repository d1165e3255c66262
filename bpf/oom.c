/* The OOM killer, seen from its tracepoints.
 *
 * Hooks:
 *   raw_tracepoint/mark_victim         one OOMT_KILL per victim (base hook, every kernel)
 *   raw_tracepoint/sched_process_exit  OOMT_EXIT when a victim's last thread is gone
 *   raw_tracepoint/{start,finish,skip}_task_reaping  OOMT_REAP from the oom reaper
 *   raw_tracepoint/sched_process_exec  OOMT_EXEC so user space can cache cmdlines
 *   raw_tracepoint/cgroup_{mkdir,rmdir} OOMT_CGROUP_* for memory-hierarchy cgroups, so
 *                                      containers are known before they die
 *   uprobe runtime.gcMarkTermination   per Go process: GC count and times, and where
 *                                      user space located the runtime (map go_procs),
 *                                      GOGC, memory limit, heap figures, GOMAXPROCS
 *   raw_tracepoint/mm_vmscan_memcg_reclaim_{begin,end}  reclaim count and stall
 *                                      time per memcg, summed in the kernel (map
 *                                      `reclaim`), read by user space each second
 *   kprobe/oom_kill_process            optional: struct oom_control (constraint,
 *                                      totalpages, chosen points, the memcg whose
 *                                      limit was hit); loaded only where kprobes work
 *
 * mark_victim runs in the context of the task that invoked the OOM killer (the
 * trigger), after the kernel printed its OOM report and before "Killed process".
 * The trigger's kernel stack goes with each kill: it names the OOM killer's
 * caller (the memcg charge path or the page allocator).
 * Memory figures are read the way the kernel's own report reads them
 * (get_mm_counter: the counter's central value), so they match it to the kB.
 *
 * Verified on 6.18 (task pointer in mark_victim's raw arguments, percpu_counter
 * rss_stat, cgroup v1 memory). MARK_VICTIM_TASK / RSS_STAT_* select the 6.1
 * shapes (pid-only mark_victim, atomic rss_stat).
 */
#include <linux/sched.h>
#include "oomtrace.h"

#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(kills, KILLS_RING_PAGES);
BPF_RINGBUF_OUTPUT(notes, NOTES_RING_PAGES);
BPF_RINGBUF_OUTPUT(cgroup_notes, NOTES_RING_PAGES);
#else
BPF_PERF_OUTPUT(kills);
BPF_PERF_OUTPUT(notes);
BPF_PERF_OUTPUT(cgroup_notes);
#endif

/* Events the kernel side could not hand over, by cause; user space reads them. */
#define LOST_KILLS 0
#define LOST_NOTES 1
#define LOST_SCRATCH 2
#define LOST_CGROUP_NOTES 3
#define LOST_GO_STATES 4
BPF_ARRAY(lost, u64, 8);

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

/* Victims between mark_victim and their exit, by tgid: value is mark_victim's time. */
BPF_HASH(victims, u32, u64, 4096);

/* The oom_control of the oom_kill_process call this thread is inside, if hooked. */
struct oc_stash {
    u64 boot_ns;
    u64 chosen;
    u64 memcg_id;
    u64 totalpages;
    s64 chosen_points;
    u32 constraint;
    s32 order;
    u32 gfp_mask;
};
BPF_HASH(oc_by_tid, u32, struct oc_stash, 1024);

BPF_PERCPU_ARRAY(scratch, struct oomt_kill, 1);
/* Never written: copied over the scratch event to clear it (memset of a
 * ~2 KiB struct is not something BPF can do). */
BPF_ARRAY(blank, struct oomt_kill, 1);

/* BCC rewrites map calls only outside macros, hence a function per buffer. */
static __always_inline int emit_kill(void *ctx, struct oomt_kill *ev)
{
#ifdef USE_RINGBUF
    return kills.ringbuf_output(ev, sizeof(*ev), 0);
#else
    return kills.perf_submit(ctx, ev, sizeof(*ev));
#endif
}

static __always_inline int emit_note_buf(void *ctx, struct oomt_note *n)
{
#ifdef USE_RINGBUF
    return notes.ringbuf_output(n, sizeof(*n), 0);
#else
    return notes.perf_submit(ctx, n, sizeof(*n));
#endif
}

#define ctx_arg(ctx, i) (((struct bpf_raw_tracepoint_args *)(ctx))->args[i])
#define KREAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

static __always_inline void count_lost(int why)
{
    u32 key = why;
    u64 *n = lost.lookup(&key);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline u64 read_ptr(void *base, u32 off)
{
    u64 p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), base + off);
    return p;
}

/* task -> memory css (which is the start of struct mem_cgroup). */
static __always_inline void *task_memcg(void *task)
{
    void *cset = (void *)read_ptr(task, OFF_TASK_CGROUPS);
    if (!cset)
        return 0;
    return (void *)read_ptr(cset, OFF_CSS_SET_SUBSYS + 8 * MEMORY_CGRP_ID);
}

static __always_inline u64 css_cgroup_id(void *css)
{
    void *cgrp = (void *)read_ptr(css, OFF_CSS_CGROUP);
    if (!cgrp)
        return 0;
    void *kn = (void *)read_ptr(cgrp, OFF_CGROUP_KN);
    if (!kn)
        return 0;
    u64 id = 0;
    KREAD(id, kn, OFF_KERNFS_NODE_ID);
    return id;
}

static __always_inline u64 mm_counter(void *mm, int member)
{
    /* get_mm_counter(): 6.2+ reads percpu_counter.count, older atomic_long_t. */
    s64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), mm + OFF_MM_RSS_STAT + member * RSS_STAT_STRIDE + RSS_STAT_COUNT_OFF);
    return v < 0 ? 0 : v;
}

static __always_inline void fill_memcgs(struct oomt_kill *ev, void *css)
{
#pragma unroll
    for (int i = 0; i < OOMT_MEMCG_DEPTH; i++) {
        if (!css)
            return;
        ev->memcg_id[i] = css_cgroup_id(css);
        /* struct mem_cgroup starts with its css (checked in kernel_layout.py). */
        KREAD(ev->memcg_usage_pages[i], css, OFF_MEMCG_MEMORY + OFF_PAGE_COUNTER_USAGE);
        KREAD(ev->memcg_max_pages[i], css, OFF_MEMCG_MEMORY + OFF_PAGE_COUNTER_MAX);
        KREAD(ev->memcg_failcnt[i], css, OFF_MEMCG_MEMORY + OFF_PAGE_COUNTER_FAILCNT);
#ifdef OFF_MEMCG_MEMSW
        KREAD(ev->memcg_memsw_usage_pages[i], css, OFF_MEMCG_MEMSW + OFF_PAGE_COUNTER_USAGE);
        KREAD(ev->memcg_memsw_max_pages[i], css, OFF_MEMCG_MEMSW + OFF_PAGE_COUNTER_MAX);
#endif
        void *cgrp = (void *)read_ptr(css, OFF_CSS_CGROUP);
        void *kn = cgrp ? (void *)read_ptr(cgrp, OFF_CGROUP_KN) : 0;
        void *name = kn ? (void *)read_ptr(kn, OFF_KERNFS_NODE_NAME) : 0;
        if (name)
            bpf_probe_read_kernel_str(&ev->memcg_names[i * OOMT_CGROUP_NAME_LEN], OOMT_CGROUP_NAME_LEN, name);
        ev->memcg_depth = i + 1;
        css = (void *)read_ptr(css, OFF_CSS_PARENT);
    }
    if (css)
        ev->flags |= OOMT_F_DEPTH_CUT;
}

static __always_inline void fill_victim(struct oomt_kill *ev, void *task)
{
    KREAD(ev->victim_tgid, task, OFF_TASK_TGID);
    KREAD(ev->victim_tid, task, OFF_TASK_PID);
    bpf_probe_read_kernel_str(ev->victim_comm, sizeof(ev->victim_comm), task + OFF_TASK_COMM);

    void *cred = (void *)read_ptr(task, OFF_TASK_REAL_CRED);
    if (cred)
        KREAD(ev->victim_uid, cred, OFF_CRED_UID);

    void *sig = (void *)read_ptr(task, OFF_TASK_SIGNAL);
    if (sig) {
        short adj = 0;
        KREAD(adj, sig, OFF_SIGNAL_OOM_SCORE_ADJ);
        ev->oom_score_adj = adj;
        KREAD(ev->nr_threads, sig, OFF_SIGNAL_NR_THREADS);
    }

    void *mm = (void *)read_ptr(task, OFF_TASK_MM);
    if (!mm) {
        ev->flags |= OOMT_F_NO_MM;
    } else {
        KREAD(ev->total_vm_pages, mm, OFF_MM_TOTAL_VM);
        ev->file_pages = mm_counter(mm, MM_FILEPAGES_IDX);
        ev->anon_pages = mm_counter(mm, MM_ANONPAGES_IDX);
        ev->swap_entries = mm_counter(mm, MM_SWAPENTS_IDX);
        ev->shmem_pages = mm_counter(mm, MM_SHMEMPAGES_IDX);
        KREAD(ev->pgtables_bytes, mm, OFF_MM_PGTABLES_BYTES);

        void *exe = (void *)read_ptr(mm, OFF_MM_EXE_FILE);
        void *dentry = exe ? (void *)read_ptr(exe, OFF_FILE_DENTRY) : 0;
        void *dname = dentry ? (void *)read_ptr(dentry, OFF_DENTRY_NAME) : 0;
        if (dname)
            bpf_probe_read_kernel_str(ev->exe_name, sizeof(ev->exe_name), dname);

        /* A task's argv lives in its own address space: readable here only
         * when the victim is the task running this program. */
        if (ev->victim_tgid == (u32)(bpf_get_current_pid_tgid() >> 32)) {
            u64 start = 0, end = 0;
            KREAD(start, mm, OFF_MM_ARG_START);
            KREAD(end, mm, OFF_MM_ARG_END);
            u64 len = end > start ? end - start : 0;
            if (len > OOMT_CMDLINE_LEN)
                len = OOMT_CMDLINE_LEN;
            len &= (OOMT_CMDLINE_LEN - 1) | OOMT_CMDLINE_LEN;
            if (len > 0 && bpf_probe_read_user(ev->cmdline, len, (void *)start) == 0) {
                ev->cmdline_len = len;
                ev->flags |= OOMT_F_CMDLINE;
            }
        }
    }
    fill_memcgs(ev, task_memcg(task));
}

/* One victim: `victim` is its task when the hook has it; else raw_pid is all
 * there is (mark_victim before 5.19 without the kprobe below). */
static __always_inline int handle_victim(void *ctx, void *victim, u32 raw_pid)
{
    u32 zero = 0;
    struct oomt_kill *ev = scratch.lookup(&zero);
    struct oomt_kill *clean = blank.lookup(&zero);
    if (!ev || !clean) {
        count_lost(LOST_SCRATCH);
        return 0;
    }
    bpf_probe_read_kernel(ev, sizeof(*ev), clean);
    ev->kind = OOMT_KILL;
    ev->boot_ns = bpf_ktime_get_boot_ns();

    u64 id = bpf_get_current_pid_tgid();
    ev->trigger_tgid = id >> 32;
    ev->trigger_tid = (u32)id;
    bpf_get_current_comm(ev->trigger_comm, sizeof(ev->trigger_comm));
    void *cur = (void *)bpf_get_current_task();
    void *trigger_css = task_memcg(cur);
    if (trigger_css)
        ev->trigger_memcg_id = css_cgroup_id(trigger_css);
    long stack_bytes = bpf_get_stack(ctx, ev->kstack, sizeof(ev->kstack), 0);
    if (stack_bytes > 0)
        ev->kstack_len = stack_bytes / sizeof(ev->kstack[0]);

    struct oc_stash *oc = oc_by_tid.lookup(&ev->trigger_tid);
    if (oc && ev->boot_ns - oc->boot_ns < 5000000000ULL) {
        ev->flags |= OOMT_F_OOM_CONTROL;
        ev->oc_constraint = oc->constraint;
        ev->oc_order = oc->order;
        ev->oc_totalpages = oc->totalpages;
        ev->oc_chosen_points = oc->chosen_points;
        ev->oc_memcg_id = oc->memcg_id;
        ev->oc_gfp_mask = oc->gfp_mask;
        if (!victim && oc->chosen) {
            /* Only the chosen task is known; a group kill's other members
             * carry other pids. */
            u32 chosen_pid = 0;
            KREAD(chosen_pid, (void *)oc->chosen, OFF_TASK_PID);
            if (chosen_pid == raw_pid)
                victim = (void *)oc->chosen;
        }
    }
    if (victim) {
        fill_victim(ev, victim);
        struct go_state *gs = go_states.lookup(&ev->victim_tgid);
        if (gs) {
            ev->go_flags = gs->flags;
            ev->go_ring_pos = gs->pos;
            ev->go_gc_count = gs->gc_count;
            ev->go_last_gc_ns = gs->last_gc_ns;
            bpf_probe_read_kernel(ev->go_gc_ns, sizeof(ev->go_gc_ns), gs->gc_ns);
            ev->go_gc_percent = gs->gc_percent;
            ev->go_memory_limit = gs->memory_limit;
            ev->go_heap_live = gs->heap_live;
            ev->go_heap_marked = gs->heap_marked;
            ev->go_heap_goal = gs->heap_goal;
            ev->go_controller_ns = gs->controller_ns;
            ev->go_gomaxprocs = gs->gomaxprocs;
        }
    } else {
        ev->flags |= OOMT_F_TASK_UNKNOWN;
        ev->victim_tid = raw_pid;
    }

    if (ev->victim_tgid) {
        u64 t = ev->boot_ns;
        victims.update(&ev->victim_tgid, &t);
    }
    if (emit_kill(ctx, ev) < 0)
        count_lost(LOST_KILLS);
    return 0;
}

int on_mark_victim(struct bpf_raw_tracepoint_args *ctx)
{
#if defined(MARK_VICTIM_TASK)
    /* 5.19+: (struct task_struct *victim, uid_t uid) */
    return handle_victim(ctx, (void *)ctx->args[0], 0);
#elif defined(VICTIM_KPROBE)
    return 0; /* on_mark_oom_victim records this victim, with its task */
#else
    return handle_victim(ctx, 0, (u32)ctx->args[0]);
#endif
}

#ifdef VICTIM_KPROBE
/* Kernels whose mark_victim gives only a pid: mark_oom_victim(struct
 * task_struct *tsk) runs right before it, once per victim (each member of a
 * memory.oom.group kill too). */
int on_mark_oom_victim(struct pt_regs *ctx)
{
    return handle_victim(ctx, (void *)PT_REGS_PARM1(ctx), 0);
}
#endif

static __always_inline int emit_note(void *ctx, u32 kind, u32 what, u32 tgid, u32 tid)
{
    struct oomt_note n = {};
    n.kind = kind;
    n.what = what;
    n.boot_ns = bpf_ktime_get_boot_ns();
    n.tgid = tgid;
    n.tid = tid;
    if (emit_note_buf(ctx, &n) < 0)
        count_lost(LOST_NOTES);
    return 0;
}

int on_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
    void *task = (void *)ctx->args[0];
    u32 tgid = 0;
    KREAD(tgid, task, OFF_TASK_TGID);
    int is_victim = victims.lookup(&tgid) != 0;
    if (!is_victim && !go_states.lookup(&tgid) && !go_procs.lookup(&tgid))
        return 0;
    /* do_exit() has already dropped signal->live for this thread: zero means
     * this is the last one (the group_dead argument that 6.16+ passes). */
    void *sig = (void *)read_ptr(task, OFF_TASK_SIGNAL);
    int live = 1;
    if (sig)
        KREAD(live, sig, OFF_SIGNAL_LIVE);
    if (live != 0)
        return 0;
    go_states.delete(&tgid);
    go_procs.delete(&tgid);
    if (!is_victim)
        return 0;
    victims.delete(&tgid);
    u32 tid = 0;
    KREAD(tid, task, OFF_TASK_PID);
    return emit_note(ctx, OOMT_EXIT, 0, tgid, tid);
}

/* The reaping tracepoints carry the victim task's pid (a thread id). */
int on_start_task_reaping(struct bpf_raw_tracepoint_args *ctx)
{
    return emit_note(ctx, OOMT_REAP, OOMT_REAP_START, 0, (u32)ctx->args[0]);
}

int on_finish_task_reaping(struct bpf_raw_tracepoint_args *ctx)
{
    return emit_note(ctx, OOMT_REAP, OOMT_REAP_FINISH, 0, (u32)ctx->args[0]);
}

int on_skip_task_reaping(struct bpf_raw_tracepoint_args *ctx)
{
    return emit_note(ctx, OOMT_REAP, OOMT_REAP_SKIP, 0, (u32)ctx->args[0]);
}

int on_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    return emit_note(ctx, OOMT_EXEC, 0, id >> 32, (u32)id);
}

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
        count_lost(LOST_SCRATCH);
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
#ifdef USE_RINGBUF
    if (cgroup_notes.ringbuf_output(n, sizeof(*n), 0) < 0)
#else
    if (cgroup_notes.perf_submit(ctx, n, sizeof(*n)) < 0)
#endif
        count_lost(LOST_CGROUP_NOTES);
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

/* Go: the uprobes run in the Go process itself, so tgid names it. */
static __always_inline struct go_state *go_state_of(u32 tgid)
{
    struct go_state zero = {};
    struct go_state *st = go_states.lookup_or_try_init(&tgid, &zero);
    if (!st)
        count_lost(LOST_GO_STATES);
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

#ifdef WITH_OOM_KILL_PROCESS
/* Optional: where kprobes exist, oom_kill_process(struct oom_control *oc,
 * const char *message) hands over what the tracepoint does not. */
int on_oom_kill_process(struct pt_regs *ctx)
{
    void *oc = (void *)PT_REGS_PARM1(ctx);
    struct oc_stash s = {};
    s.boot_ns = bpf_ktime_get_boot_ns();
    s.chosen = read_ptr(oc, OFF_OC_CHOSEN);
    KREAD(s.totalpages, oc, OFF_OC_TOTALPAGES);
    KREAD(s.chosen_points, oc, OFF_OC_CHOSEN_POINTS);
    KREAD(s.constraint, oc, OFF_OC_CONSTRAINT);
    KREAD(s.order, oc, OFF_OC_ORDER);
    KREAD(s.gfp_mask, oc, OFF_OC_GFP_MASK);
    void *memcg = (void *)read_ptr(oc, OFF_OC_MEMCG);
    if (memcg)
        s.memcg_id = css_cgroup_id(memcg);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    oc_by_tid.update(&tid, &s);
    return 0;
}
#endif
