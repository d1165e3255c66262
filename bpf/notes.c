/* What happens to a victim after the kill, and the processes user space
 * should know before they die.
 *
 * Hooks:
 *   raw_tracepoint/sched_process_exit  OOMT_EXIT when a victim's last thread is gone;
 *                                      OOMT_RUNTIME_EXIT when a process user space named
 *                                      a runtime (JVM, Node, Go) ends with a failure
 *   raw_tracepoint/{start,finish,skip}_task_reaping  OOMT_REAP from the oom reaper
 *   raw_tracepoint/sched_process_exec  OOMT_EXEC so user space can cache cmdlines
 *                                      and find Go binaries
 * Verified on 6.18 and 6.1.
 */
#include "common.h"

static __always_inline int emit_note(void *ctx, u32 kind, u32 what, u32 tgid, u32 tid)
{
    struct oomt_note n = {};
    n.kind = kind;
    n.what = what;
    n.boot_ns = bpf_ktime_get_boot_ns();
    n.tgid = tgid;
    n.tid = tid;
    if (emit(ctx, OOMT_BUF_NOTES, &n, sizeof(n)) < 0)
        count_lost(OOMT_LOST_NOTES);
    return 0;
}

/* Processes user space found to be a JVM, Node or Go: their exit status is
 * sent when it says failure, so a runtime's own OOM death can be told from
 * its words. One lookup per exit, nothing per syscall. */
BPF_HASH(runtime_procs, u32, u8, 16384);

int on_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
    void *task = (void *)ctx->args[0];
    u32 tgid = 0;
    KREAD(tgid, task, OFF_TASK_TGID);
    int is_victim = victims.lookup(&tgid) != 0;
    /* The value, not the pointer: two lookups' pointers must not meet in an
     * `|` the verifier refuses. */
    u8 is_runtime = 0;
    u8 *rt = runtime_procs.lookup(&tgid);
    if (rt)
        is_runtime = *rt;
    if (!is_victim && !is_runtime && !go_states.lookup(&tgid) && !go_procs.lookup(&tgid))
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
    go_profile_due.delete(&tgid);
    if (is_runtime) {
        runtime_procs.delete(&tgid);
        /* do_exit() has set it: exit status << 8, or the fatal signal (| 0x80
         * with a core). The kernel's own kill (SIGKILL) is a victim's. */
        u32 code = 0;
        KREAD(code, task, OFF_TASK_EXIT_CODE);
        if (!is_victim && code != 0 && (code & 0x7f) != 9) {
            u32 rtid = 0;
            KREAD(rtid, task, OFF_TASK_PID);
            emit_note(ctx, OOMT_RUNTIME_EXIT, code, tgid, rtid);
        }
    }
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
