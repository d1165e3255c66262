/* The OOM killer's victims.
 *
 * Hooks:
 *   raw_tracepoint/mark_victim  one OOMT_KILL per victim (base hook, every kernel)
 *   kprobe/mark_oom_victim      kernels whose mark_victim gives only a pid: the task
 *   fentry/oom_kill_process     optional: struct oom_control (constraint,
 *   (or kprobe/oom_kill_process) totalpages, chosen points, the memcg whose
 *                               limit was hit); fentry where the kernel allows
 *                               a trampoline, else a kprobe where kprobes work
 *   raw_tracepoint/signal_generate  a SIGKILL or SIGTERM sent by a userspace
 *                               OOM killer (its comm in user_killers, which
 *                               user space fills): one OOMT_USER_KILL, the
 *                               same record with the killer as trigger; and
 *                               the kernel's SIGKILL to a Go process, noted
 *                               for its heap profile's walk (go.c)
 *   kprobe/ksys_write           optional: a userspace killer's writes to its
 *                               stdout/stderr, the last one kept for its next
 *                               kill (earlyoom prints its reason just before);
 *                               tracepoint/syscalls/sys_enter_write where
 *                               kprobes are not compiled in
 *
 * mark_victim runs in the context of the task that invoked the OOM killer (the
 * trigger), after the kernel printed its OOM report and before "Killed process".
 * The trigger's kernel stack goes with each kill: it names the OOM killer's
 * caller (the memcg charge path or the page allocator).
 * Memory figures are read the way the kernel's own report reads them
 * (get_mm_counter: the counter's central value), so they match it to the kB.
 *
 * Verified on 6.18 (task pointer in mark_victim's raw arguments, percpu_counter
 * rss_stat, cgroup v1 memory) and 6.1 (pid-only mark_victim, atomic rss_stat,
 * cgroup v2): MARK_VICTIM_TASK / RSS_STAT_* select the shapes.
 */
#include "common.h"

/* Victims between mark_victim and their exit, by tgid: value is mark_victim's time. */
BPF_HASH(victims, u32, u64, 4096);

/* Userspace OOM killers, by comm (TASK_COMM_LEN bytes, NUL-padded). */
struct killer_comm {
    char comm[OOMT_COMM_LEN];
};
BPF_HASH(user_killers, struct killer_comm, u8, 64);

/* Whether the current task is a listed userspace killer, by its comm. */
static __always_inline int current_is_killer(void)
{
    struct killer_comm k = {};
    bpf_get_current_comm(k.comm, sizeof(k.comm));
    return user_killers.lookup(&k) != 0;
}

/* The last write each userspace killer made to its stdout or stderr, by its
 * tgid: a kill it makes soon after carries it (its own reason, in its words). */
struct killer_line {
    u64 boot_ns;
    u32 len;
    u32 pad;
    u8 text[OOMT_KILLER_SAID_LEN];
};
BPF_HASH(killer_lines, u32, struct killer_line, 64);
BPF_PERCPU_ARRAY(killer_line_scratch, struct killer_line, 1);

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
 * there is (mark_victim before 5.19 without the kprobe below). kind is
 * OOMT_KILL, or OOMT_USER_KILL with the signal a userspace killer sent. */
static __always_inline int handle_victim(void *ctx, void *victim, u32 raw_pid, u32 kind, u32 sig)
{
    u32 zero = 0;
    struct oomt_kill *ev = scratch.lookup(&zero);
    struct oomt_kill *clean = blank.lookup(&zero);
    if (!ev || !clean) {
        count_lost(OOMT_LOST_SCRATCH);
        return 0;
    }
    bpf_probe_read_kernel(ev, sizeof(*ev), clean);
    ev->kind = kind;
    ev->user_signal = sig;
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
        /* A Go victim whose heap profile was found: walked when it
         * dequeues its SIGKILL (go.c), in its own context. */
        struct go_proc *gp = go_procs.lookup(&ev->victim_tgid);
        if (gp && gp->mbuckets) {
            ev->go_profile_key = go_profile_key(ev->victim_tgid, ev->boot_ns);
            ev->go_flags |= OOMT_GO_PROFILE_DUE;
        }
    } else {
        ev->flags |= OOMT_F_TASK_UNKNOWN;
        ev->victim_tid = raw_pid;
    }

    if (ev->victim_tgid) {
        u64 t = ev->boot_ns;
        victims.update(&ev->victim_tgid, &t);
    }
    if (kind == OOMT_USER_KILL) {
        u32 killer = ev->trigger_tgid;
        struct killer_line *l = killer_lines.lookup(&killer);
        if (l && ev->boot_ns - l->boot_ns < OOMT_KILLER_SAID_NS) {
            ev->killer_said_len = l->len;
            bpf_probe_read_kernel(ev->killer_said, sizeof(ev->killer_said), l->text);
        }
    }
    if (emit(ctx, OOMT_BUF_KILLS, ev, sizeof(*ev)) < 0)
        count_lost(OOMT_LOST_KILLS);
    return 0;
}

int on_mark_victim(struct bpf_raw_tracepoint_args *ctx)
{
#if defined(MARK_VICTIM_TASK)
    /* 5.19+: (struct task_struct *victim, uid_t uid) */
    return handle_victim(ctx, (void *)ctx->args[0], 0, OOMT_KILL, 0);
#elif defined(VICTIM_KPROBE)
    return 0; /* on_mark_oom_victim records this victim, with its task */
#else
    return handle_victim(ctx, 0, (u32)ctx->args[0], OOMT_KILL, 0);
#endif
}

#ifdef VICTIM_KPROBE
/* Kernels whose mark_victim gives only a pid: mark_oom_victim(struct
 * task_struct *tsk) runs right before it, once per victim (each member of a
 * memory.oom.group kill too). */
int on_mark_oom_victim(struct pt_regs *ctx)
{
    return handle_victim(ctx, (void *)PT_REGS_PARM1(ctx), 0, OOMT_KILL, 0);
}
#endif

#ifdef WITH_OOM_KILL_PROCESS
/* Optional: oom_kill_process(struct oom_control *oc, const char *message)
 * hands over what the tracepoint does not. Kept for this thread's
 * mark_victim. */
static __always_inline int stash_oom_control(void *oc)
{
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

#ifdef WITH_OOM_KILL_PROCESS_FENTRY
/* fentry, where the kernel allows a trampoline there (fentry.py asked it):
 * BCC attaches it as it loads. */
KFUNC_PROBE(oom_kill_process, void *oc, const char *message)
{
    return stash_oom_control(oc);
}
#else
int on_oom_kill_process(struct pt_regs *ctx)
{
    return stash_oom_control((void *)PT_REGS_PARM1(ctx));
}
#endif
#endif

/* A write(2) by anyone: only a listed killer's writes to its stdout or
 * stderr are copied, so the comm check comes first and costs one hash
 * lookup. */
static __always_inline int killer_wrote(u64 fd, u64 buf, u64 count)
{
    if ((fd != 1 && fd != 2) || !current_is_killer())
        return 0;
    u32 zero = 0;
    struct killer_line *l = killer_line_scratch.lookup(&zero);
    if (!l)
        return 0;
    u64 n = count < OOMT_KILLER_SAID_LEN ? count : OOMT_KILLER_SAID_LEN;
    if (n == 0 || bpf_probe_read_user(l->text, n & (OOMT_KILLER_SAID_LEN * 2 - 1), (void *)buf) < 0)
        return 0;
    l->len = n;
    l->boot_ns = bpf_ktime_get_boot_ns();
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    killer_lines.update(&tgid, l);
    return 0;
}

/* kprobe on ksys_write(unsigned int fd, const char *buf, size_t count). */
int on_ksys_write(struct pt_regs *ctx)
{
    return killer_wrote((u32)PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}

/* tracepoint syscalls:sys_enter_write, laid out as its format file says (the
 * same on every kernel: the common header, then each argument in 8 bytes). */
struct sys_enter_write_args {
    u64 common;
    s32 nr;
    u32 pad;
    u64 fd;
    u64 buf;
    u64 count;
};

int on_sys_enter_write(struct sys_enter_write_args *args)
{
    return killer_wrote((u32)args->fd, args->buf, args->count);
}

/* signal_generate(int sig, struct kernel_siginfo *info, struct task_struct
 * *task, int group, int result): in the sender's context. Only a signal a
 * listed killer sent, that was delivered (result 0), to a process not
 * already a victim (a SIGTERM then SIGKILL is one kill), is a kill. A
 * `kill -9` from any other process never is. */
int on_signal_generate(struct bpf_raw_tracepoint_args *ctx)
{
    int sig = (int)ctx->args[0];
    if ((sig != 9 && sig != 15) || (int)ctx->args[4] != 0)
        return 0;
    void *task = (void *)ctx->args[2];
    if (sig == 9 && ctx->args[1] == 1 /* SEND_SIG_PRIV: the kernel's own */) {
        u32 target = 0;
        KREAD(target, task, OFF_TASK_TGID);
        go_note_kernel_sigkill(target);
        return 0;
    }
    if (!current_is_killer())
        return 0;
    u32 tgid = 0;
    KREAD(tgid, task, OFF_TASK_TGID);
    if (!tgid || victims.lookup(&tgid))
        return 0;
    return handle_victim(ctx, task, 0, OOMT_USER_KILL, sig);
}
