/* What every program of oomtrace's shares: the buffers events leave by, the
 * loss counters, one helper to emit into either kind of buffer, and the
 * readers of kernel structs at offsets resolved from BTF.
 *
 * The loader (oomtrace/agent/kernel/bcc_loader.py) compiles the programs as one
 * text, this header first: go.c, kill.c, notes.c, cgroups.c, reclaim.c.
 */
#ifndef OOMTRACE_COMMON_H
#define OOMTRACE_COMMON_H

#include <linux/sched.h>
#include "oomtrace.h"

#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(kills, KILLS_RING_PAGES);
BPF_RINGBUF_OUTPUT(notes, NOTES_RING_PAGES);
BPF_RINGBUF_OUTPUT(cgroup_notes, NOTES_RING_PAGES);
/* Heap profiles have their own: a big one never crowds out a kill. */
BPF_RINGBUF_OUTPUT(profiles, PROFILES_RING_PAGES);
#else
BPF_PERF_OUTPUT(kills);
BPF_PERF_OUTPUT(notes);
BPF_PERF_OUTPUT(cgroup_notes);
BPF_PERF_OUTPUT(profiles);
#endif

/* Events the kernel side could not hand over, by cause (enum oomt_lost);
 * user space reads them. */
BPF_ARRAY(lost, u64, OOMT_LOST_CAUSES);

enum oomt_buffer {
    OOMT_BUF_KILLS,
    OOMT_BUF_NOTES,
    OOMT_BUF_CGROUP_NOTES,
    OOMT_BUF_PROFILES,
};

/* The one place that knows ring buffers from perf buffers. BCC rewrites map
 * calls only outside macros, hence a function; called with constants, it
 * folds to the one call. The typed locals matter: BCC takes each buffer's
 * event type (what table.event() decodes in user space) from the declared
 * type of the variable handed to its output call (a cast is not enough). */
static __always_inline int emit(void *ctx, enum oomt_buffer buf, void *data, u32 size)
{
    struct oomt_kill *kill = data;
    struct oomt_note *note = data;
    struct oomt_cgroup_note *cgroup_note = data;
    struct oomt_go_bucket *bucket = data; /* or an oomt_go_profile: user space reads the kind */
#ifdef USE_RINGBUF
    switch (buf) {
    case OOMT_BUF_KILLS:
        return kills.ringbuf_output(kill, size, 0);
    case OOMT_BUF_NOTES:
        return notes.ringbuf_output(note, size, 0);
    case OOMT_BUF_PROFILES:
        return profiles.ringbuf_output(bucket, size, 0);
    default:
        return cgroup_notes.ringbuf_output(cgroup_note, size, 0);
    }
#else
    switch (buf) {
    case OOMT_BUF_KILLS:
        return kills.perf_submit(ctx, kill, size);
    case OOMT_BUF_NOTES:
        return notes.perf_submit(ctx, note, size);
    case OOMT_BUF_PROFILES:
        return profiles.perf_submit(ctx, bucket, size);
    default:
        return cgroup_notes.perf_submit(ctx, cgroup_note, size);
    }
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

#endif
