/* Event layouts and constants shared by the BPF programs and the agent.
 * Python reads the events through BCC's table event() decoding of these very
 * structs; the constants it needs by name (array lengths, kinds, flags, loss
 * causes) are checked against this file by tests/unit/test_header.py.
 *
 * Every kernel struct field is read at an OFF_* offset that the agent resolves
 * from the running kernel's BTF and passes in with -D, so the kernel headers
 * BCC compiles against only have to supply helpers, never layouts.
 */
#ifndef OOMTRACE_H
#define OOMTRACE_H

#define OOMT_MEMCG_DEPTH 8      /* victim's memcg and up to 7 ancestors */
#define OOMT_CGROUP_NAME_LEN 128 /* a systemd scope name with a 64-hex id fits */
#define OOMT_CMDLINE_LEN 256
#define OOMT_COMM_LEN 16
#define OOMT_EXE_NAME_LEN 64
#define OOMT_KILLER_SAID_LEN 256 /* a userspace killer's last log write, kept */
#define OOMT_KILLER_SAID_NS 10000000000ULL /* written this long before its signal at most */

enum oomt_kind {
    OOMT_KILL = 1, /* oom:mark_victim */
    OOMT_EXIT = 2, /* the victim's last thread exited */
    OOMT_REAP = 3, /* oom reaper: start, finish or skip */
    OOMT_EXEC = 4, /* a process called exec: user space caches its cmdline */
    OOMT_CGROUP_MKDIR = 5, /* a memory cgroup appeared: user space learns its container */
    OOMT_CGROUP_RMDIR = 6, /* ...and went: its entry is kept for a grace period */
    OOMT_GO_BUCKET = 7,    /* one bucket of a Go victim's heap profile */
    OOMT_GO_PROFILE = 8,   /* ...and the end of that profile's walk */
    OOMT_USER_KILL = 9,    /* a userspace OOM killer's signal: an oomt_kill, the killer as trigger */
    OOMT_RUNTIME_EXIT = 10, /* a JVM, Node or Go process ended with a failure: what = exit_code */
};

#define OOMT_CGROUP_PATH_LEN 256
#define OOMT_GO_RING 32 /* the last GC end times of a Go process */
#define OOMT_KSTACK_DEPTH 24 /* mark_victim sits ~8 frames below out_of_memory's caller */

/* oomt_kill.flags */
#define OOMT_F_OOM_CONTROL 0x1  /* oc_* fields came from oom_kill_process */
#define OOMT_F_CMDLINE 0x2      /* cmdline read from the victim itself */
#define OOMT_F_NO_MM 0x4        /* victim had no mm left: memory figures are 0 */
#define OOMT_F_DEPTH_CUT 0x8    /* memcg ancestry deeper than OOMT_MEMCG_DEPTH */
#define OOMT_F_TASK_UNKNOWN 0x10 /* old kernel, no kprobe: only the pid is known */

/* Why an event did not reach user space, counted in the `lost` map. */
enum oomt_lost {
    OOMT_LOST_KILLS = 0,         /* the kills buffer was full */
    OOMT_LOST_NOTES = 1,         /* the notes buffer was full */
    OOMT_LOST_SCRATCH = 2,       /* no per-CPU scratch space */
    OOMT_LOST_CGROUP_NOTES = 3,  /* the cgroup notes buffer was full */
    OOMT_LOST_GO_STATES = 4,     /* go_states was full: a Go process goes unprobed */
    OOMT_LOST_PROFILES = 5,      /* the profiles buffer was full: a bucket or a walk's end */
    OOMT_LOST_CAUSES = 6,
};

/* oomt_reap.what */
#define OOMT_REAP_START 1
#define OOMT_REAP_FINISH 2
#define OOMT_REAP_SKIP 3

struct oomt_kill {
    u32 kind;
    u32 flags;
    u64 boot_ns;             /* bpf_ktime_get_boot_ns() at mark_victim */
    u32 victim_tgid;
    u32 victim_tid;
    u32 trigger_tgid;
    u32 trigger_tid;
    u32 victim_uid;
    s32 oom_score_adj;
    u32 nr_threads;
    u32 memcg_depth;         /* filled entries of memcg[] */
    char victim_comm[OOMT_COMM_LEN];
    char trigger_comm[OOMT_COMM_LEN];
    u64 total_vm_pages;
    u64 anon_pages;
    u64 file_pages;
    u64 shmem_pages;
    u64 swap_entries;
    u64 pgtables_bytes;
    u64 trigger_memcg_id;
    /* From oom_kill_process's struct oom_control, when that hook runs. */
    u32 oc_constraint;
    s32 oc_order;
    u64 oc_totalpages;
    s64 oc_chosen_points;
    u64 oc_memcg_id;
    u32 oc_gfp_mask;
    u32 cmdline_len;
    char exe_name[OOMT_EXE_NAME_LEN];
    u8 cmdline[OOMT_CMDLINE_LEN];  /* NUL-separated argv, cmdline_len bytes */
    /* The victim's memory cgroup ([0]) and its ancestors, nearest first. Kept
     * as parallel flat arrays because BCC's event() decodes only flat structs. */
    u64 memcg_id[OOMT_MEMCG_DEPTH];         /* kernfs id = the cgroup dir's inode */
    u64 memcg_usage_pages[OOMT_MEMCG_DEPTH];
    u64 memcg_max_pages[OOMT_MEMCG_DEPTH];
    u64 memcg_memsw_usage_pages[OOMT_MEMCG_DEPTH]; /* v1 memory+swap, v2 swap */
    u64 memcg_memsw_max_pages[OOMT_MEMCG_DEPTH];
    u64 memcg_failcnt[OOMT_MEMCG_DEPTH];
    u8 memcg_names[OOMT_MEMCG_DEPTH * OOMT_CGROUP_NAME_LEN]; /* name i at i*LEN */
    /* The victim's Go runtime state, copied from go_states at the kill:
     * the process's memory may be unreadable once it dies. */
    u32 go_flags;             /* OOMT_GO_* */
    u32 go_ring_pos;          /* GCs ever recorded; go_gc_ns[pos % RING] is next */
    u64 go_gc_count;
    u64 go_last_gc_ns;        /* boot clock */
    u64 go_gc_ns[OOMT_GO_RING];
    s64 go_gc_percent;        /* -1: GOGC=off */
    s64 go_memory_limit;
    u64 go_heap_live;
    u64 go_heap_marked;
    u64 go_heap_goal;
    u64 go_controller_ns;     /* when the controller fields were read */
    u64 go_gomaxprocs;        /* runtime.gomaxprocs, the value in effect */
    u64 go_profile_key;       /* OOMT_GO_PROFILE_DUE: the kill_ns its heap profile's walk carries */
    /* The trigger's kernel stack at the kill, innermost return address first.
     * out_of_memory's caller in it tells a memcg OOM from a global one where
     * oom_kill_process cannot be hooked: by the time mark_victim runs, the
     * page counters may no longer show the limit that was hit. */
    u32 kstack_len;           /* filled entries of kstack */
    u32 user_signal;          /* OOMT_USER_KILL: the signal the killer sent (9 or 15) */
    u64 kstack[OOMT_KSTACK_DEPTH];
    /* OOMT_USER_KILL: the last thing the killer wrote to its stdout or
     * stderr before the signal (earlyoom says why there), when recent. */
    u32 killer_said_len;
    u32 pad_said;
    u8 killer_said[OOMT_KILLER_SAID_LEN];
};

#define OOMT_GO_GC 0x1         /* gc_count, ring: from runtime.gcMarkTermination */
#define OOMT_GO_CONTROLLER 0x2 /* gcController fields and gomaxprocs were read */
#define OOMT_GO_PROFILE_DUE 0x4 /* the victim's heap profile will be walked at its SIGKILL */

/* A Go victim's heap profile, walked in its own context when it dequeues
 * its SIGKILL (bpf/go.c): one OOMT_GO_BUCKET per runtime bucket, at most
 * OOMT_GO_MAX_BUCKETS of them and OOMT_GO_STACK_DEPTH PCs each, then one
 * OOMT_GO_PROFILE. Bucket events are sent only as long as their depth. */
#define OOMT_GO_STACK_DEPTH 64
#define OOMT_GO_WALK_STEP 128    /* buckets per program run; tail calls continue */
#define OOMT_GO_WALK_CALLS 32    /* runs after the first (the kernel allows 33 in all) */
#define OOMT_GO_MAX_BUCKETS (OOMT_GO_WALK_STEP * (OOMT_GO_WALK_CALLS + 1))
#define OOMT_GO_MAX_NSTK 1024    /* a bucket claiming more is not a bucket */

struct oomt_go_bucket {
    u32 kind;
    u32 tgid;
    u64 kill_ns;             /* the kill's boot_ns: which kill this profile is of */
    u64 size;                /* bytes per allocation */
    u64 allocs;              /* the active cycle: as of the last completed GC */
    u64 frees;
    u64 alloc_bytes;
    u64 free_bytes;
    u64 pending_allocs;      /* the cycles not yet published: allocations since the */
    u64 pending_frees;       /* last completed GC, frees swept since */
    u64 pending_alloc_bytes;
    u64 pending_free_bytes;
    u32 nstk;                /* the bucket's own stack depth */
    u32 depth;               /* PCs copied below */
    u64 pc[OOMT_GO_STACK_DEPTH]; /* return addresses, innermost first, run-time */
};

/* oomt_go_profile.why */
#define OOMT_PROFILE_AT_KILL 0     /* the victim dequeued its SIGKILL */
#define OOMT_PROFILE_BEFORE 1      /* a GC ended with its memcg near its limit */

/* oomt_go_profile.status */
#define OOMT_PROFILE_OK 0
#define OOMT_PROFILE_READ_FAILED 1 /* the victim's memory could not be read (reaped?) */
#define OOMT_PROFILE_BAD_BUCKET 2  /* a bucket did not look like one: the walk stopped */

struct oomt_go_profile {
    u32 kind;
    u32 tgid;
    u64 kill_ns;
    u64 boot_ns;             /* when the walk started */
    u64 walk_ns;             /* how long it took, in the victim's context */
    s64 rate;                /* runtime.MemProfileRate at the kill */
    u64 mbuckets;            /* run-time address of runtime.mbuckets: gives the load bias */
    u32 status;              /* OOMT_PROFILE_* */
    u32 buckets;             /* buckets walked */
    u32 more;                /* 1: buckets were left: OOMT_GO_MAX_BUCKETS reached */
    u32 stacks_cut;          /* buckets deeper than OOMT_GO_STACK_DEPTH */
    u32 lost;                /* buckets the buffer had no room for */
    u32 why;                 /* OOMT_PROFILE_AT_KILL or _BEFORE (then kill_ns is 0) */
    u64 memcg_usage_pages;   /* _BEFORE: the memcg that passed the threshold */
    u64 memcg_max_pages;
};

/* The short events share a header with the kill event: kind, then flags. */
struct oomt_note {
    u32 kind;
    u32 what;                /* OOMT_REAP_* for OOMT_REAP; task exit_code for OOMT_RUNTIME_EXIT */
    u64 boot_ns;
    u32 tgid;
    u32 tid;
};

/* Memory-hierarchy cgroups coming and going. */
struct oomt_cgroup_note {
    u32 kind;
    u32 level;
    u64 cgroup_id;
    u64 boot_ns;
    char path[OOMT_CGROUP_PATH_LEN]; /* relative to the hierarchy root */
};

#endif
