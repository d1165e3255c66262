"""The one module that imports BCC: compiles the programs in bpf/, attaches
their hooks, polls their buffers and reads their loss counters.

BCC ships no type information, so its untyped surface stays in here; the rest
of the agent sees `BpfSession`, `HookStatus` and raw event objects.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from oomtrace.agent.errors import BpfLoadError
from oomtrace.agent.kernel.fentry import fentry_allowed
from oomtrace.agent.kernel.layout import KernelLayout
from oomtrace.records import USERSPACE_KILLERS

log = structlog.get_logger(__name__)

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

KILLS_RING_PAGES = 64  # 256 KiB: ~120 kill events (2 KiB each) waiting at once
NOTES_RING_PAGES = 16
# 4 MiB: a walk of the most buckets a profile may have (OOMT_GO_MAX_BUCKETS,
# ~300 bytes each with a typical stack) fits three times over.
PROFILES_RING_PAGES = 1024
# A Go process's heap profile is also taken at the end of a GC when its memcg
# (or a near ancestor) is at this share of its limit, once per window.
PROFILE_BEFORE_PERCENT = 80
PROFILE_BEFORE_WINDOW_S = 60

# The programs, in the order they are joined: each may use what an earlier one
# defines (kill.c copies go.c's state; notes.c clears kill.c's victims).
BPF_SOURCES = ("common.h", "go.c", "kill.c", "notes.c", "cgroups.c", "reclaim.c")

# struct go_proc's offset fields in bpf/go.c, by the names go/layouts.py uses.
GO_PROC_FIELDS = ("gc_percent", "memory_limit", "heap_goal", "heap_live", "heap_marked")

# enum oomt_lost in bpf/oomtrace.h, in its order (tests/unit/test_header.py).
LOST_CAUSES = ("kills", "notes", "scratch", "cgroup_notes", "go_states", "profiles")

# struct go_proc's heap-profile layout fields, by go/layouts.py HEAP_PROFILE's names.
GO_PROFILE_FIELDS = {
    "bucket_allnext": "allnext",
    "bucket_size": "size",
    "bucket_nstk": "nstk",
    "bucket_header": "header",
    "record_allocs": "allocs",
    "record_frees": "frees",
    "record_alloc_bytes": "alloc_bytes",
    "record_free_bytes": "free_bytes",
    "record_future": "future",
    "record_cycle": "cycle",
}


# The hooks that read struct oom_control, one or the other.
OOM_CONTROL_HOOKS = ("fentry/oom_kill_process", "kprobe/oom_kill_process")


def bpf_text() -> str:
    """The programs as one text. BCC rewrites map calls only in the text it
    compiles, not in included files, so they are joined here rather than
    #included; each file still includes common.h for its readers' sake."""
    parts = []
    for name in BPF_SOURCES:
        text = (BPF_DIR / name).read_text().replace('#include "common.h"\n', "")
        parts.append(f"/* ---- bpf/{name} ---- */\n{text}")
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class HookStatus:
    name: str  # e.g. "raw_tracepoint/mark_victim"
    attached: bool
    required: bool
    reason: str  # why it was skipped or failed; "" when attached


def import_bcc() -> Any:
    """BCC's Python module, or a BpfLoadError that says how to get it."""
    try:
        import bcc
    except ImportError as exc:
        raise BpfLoadError(
            f"cannot import bcc ({exc}): install Debian's python3-bpfcc and run with a "
            "python that sees it (make setup builds .venv with --system-site-packages)"
        ) from None
    return bcc


def kprobes_available() -> tuple[bool, str]:
    """Kprobes need CONFIG_KPROBES: the kprobe PMU or tracefs' kprobe_events."""
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        return True, ""
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if Path(tracefs, "kprobe_events").exists():
            return True, ""
    return False, "this kernel has no kprobes (CONFIG_KPROBES off)"


def _raw_tracepoint_exists(name: str) -> bool:
    # BTF gives every raw tracepoint a btf_trace_<name> typedef; tracefs may be unmounted.
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        events = Path(tracefs, "events")
        if events.is_dir():
            return any(events.glob(f"*/{name}"))
    return True  # cannot tell without tracefs; the attach itself will say


class BpfSession:
    """The programs of bpf/, compiled and attached."""

    def __init__(
        self,
        layout: KernelLayout,
        *,
        memcg_hierarchy_id: int = -1,
        with_exec: bool = True,
        profile_before_percent: int = PROFILE_BEFORE_PERCENT,
        profile_before_window_s: int = PROFILE_BEFORE_WINDOW_S,
        userspace_killers: tuple[str, ...] = USERSPACE_KILLERS,
        killer_writes: str = "kprobe",
    ) -> None:
        """memcg_hierarchy_id: the memory controller's hierarchy (v1: from
        /proc/cgroups; v2: 0); cgroup notes are sent for that one only."""
        bcc = import_bcc()
        self.layout = layout
        self.hooks: list[HookStatus] = []
        self.user_lost = {"kills": 0, "notes": 0, "cgroup_notes": 0, "profiles": 0}
        oc_hook, oc_reason = self._oom_kill_process_hook(bcc)
        cflags = [
            *layout.cflags(),
            f"-I{BPF_DIR}",
            f"-DKILLS_RING_PAGES={KILLS_RING_PAGES}",
            f"-DNOTES_RING_PAGES={NOTES_RING_PAGES}",
            f"-DPROFILES_RING_PAGES={PROFILES_RING_PAGES}",
            f"-DGO_PROFILE_BEFORE_PERCENT={profile_before_percent}",
            f"-DGO_PROFILE_BEFORE_WINDOW_NS={profile_before_window_s * 1_000_000_000}ULL",
            f"-DMEMCG_HIERARCHY_ID={memcg_hierarchy_id}",
        ]
        if oc_hook:
            cflags.append("-DWITH_OOM_KILL_PROCESS=1")
        if oc_hook == "fentry":
            # BCC attaches it as it loads the object (fentry_allowed asked).
            cflags.append("-DWITH_OOM_KILL_PROCESS_FENTRY=1")
        victim_kprobe = not layout.mark_victim_has_task and self._kprobe_able(
            bcc, "mark_oom_victim"
        )
        if victim_kprobe:
            cflags.append("-DVICTIM_KPROBE=1")
        try:
            self._bpf = bcc.BPF(text=bpf_text(), cflags=cflags)
        except Exception as exc:  # BCC raises bare Exception on compile failure
            raise BpfLoadError(
                f"BCC could not compile the programs in {BPF_DIR}: {exc}. Kernel headers for BCC must be "
                f"at /lib/modules/{os.uname().release}/build (make setup links Debian's), or in "
                f"$BCC_KERNEL_SOURCE (the image sets it when the node has none)"
            ) from exc

        self._attach_raw("mark_victim", "on_mark_victim", required=True)
        if victim_kprobe:
            try:
                self._bpf.attach_kprobe(event=b"mark_oom_victim", fn_name=b"on_mark_oom_victim")
            except Exception as exc:
                raise BpfLoadError(
                    f"kprobe on mark_oom_victim could not be attached: {exc}"
                ) from exc
            self._hook("kprobe/mark_oom_victim", True, True, "")
        elif not layout.mark_victim_has_task:
            self._hook(
                "kprobe/mark_oom_victim",
                False,
                False,
                "not kprobe-able here: victims are known by pid only",
            )
        self._attach_raw("sched_process_exit", "on_process_exit", required=True)
        self._attach_profile_walk(bcc)
        if userspace_killers:
            self.set_userspace_killers(userspace_killers)
        if userspace_killers or self.profiles_hooked:
            # Userspace killers' signals; and the kernel's SIGKILL to a Go
            # victim, which can be dequeued before mark_victim runs (go.c).
            self._attach_raw("signal_generate", "on_signal_generate", required=False)
        if userspace_killers:
            self._attach_killer_writes(killer_writes)
        for tp in ("start_task_reaping", "finish_task_reaping", "skip_task_reaping"):
            self._attach_raw(tp, f"on_{tp}", required=False)
        if with_exec:
            self._attach_raw("sched_process_exec", "on_process_exec", required=False)
            self._attach_raw("cgroup_mkdir", "on_cgroup_mkdir", required=False)
            self._attach_raw("cgroup_rmdir", "on_cgroup_rmdir", required=False)
            self._attach_raw(
                "mm_vmscan_memcg_reclaim_begin", "on_memcg_reclaim_begin", required=False
            )
            self._attach_raw("mm_vmscan_memcg_reclaim_end", "on_memcg_reclaim_end", required=False)
        if oc_hook == "fentry":
            self._hook("fentry/oom_kill_process", True, False, "")
        elif oc_hook == "kprobe":
            self._hook("fentry/oom_kill_process", False, False, oc_reason)
            try:
                self._bpf.attach_kprobe(event=b"oom_kill_process", fn_name=b"on_oom_kill_process")
                self._hook("kprobe/oom_kill_process", True, False, "")
            except Exception as exc:  # noqa: BLE001 - BCC raises bare Exception on attach failure
                self._hook("kprobe/oom_kill_process", False, False, str(exc))
        else:
            self._hook("kprobe/oom_kill_process", False, False, oc_reason)

    def _attach_profile_walk(self, bcc: Any) -> None:
        """Go victims' heap profiles: the walk starts at signal_deliver and
        goes on by tail calls into go_walk_more (the verifier bounds each
        run's loop)."""
        try:
            more = self._bpf.load_func(b"go_walk_more", bcc.BPF.RAW_TRACEPOINT)
            self._bpf["go_walk_next"][ctypes.c_int(0)] = ctypes.c_int(more.fd)
            # The GC probe's "before" profile goes on in a uprobe's type.
            more_u = self._bpf.load_func(b"go_walk_more_uprobe", bcc.BPF.KPROBE)
            self._bpf["go_walk_next_uprobe"][ctypes.c_int(0)] = ctypes.c_int(more_u.fd)
        except Exception as exc:  # noqa: BLE001 - BCC raises bare Exception on load failure
            self._hook("raw_tracepoint/signal_deliver", False, False, f"go_walk_more: {exc}")
            return
        self._attach_raw("signal_deliver", "on_signal_deliver", required=False)

    def set_userspace_killers(self, comms: tuple[str, ...]) -> None:
        """The processes whose SIGKILL or SIGTERM is an OOM kill, by comm
        (what the kernel keeps: the first 15 bytes of the name)."""
        table = self._bpf["user_killers"]
        table.clear()
        for comm in comms:
            key = table.Key()
            raw = comm.encode()[:15]
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            table[key] = table.Leaf(1)

    @property
    def profiles_hooked(self) -> bool:
        return any(h.name == "raw_tracepoint/signal_deliver" and h.attached for h in self.hooks)

    @staticmethod
    def _why_not_kprobe(bcc: Any, function: str) -> str:
        """Why `function` cannot be kprobed here ("" when it can)."""
        ok, reason = kprobes_available()
        if not ok:
            return reason
        try:
            if not bcc.BPF.get_kprobe_functions(f"^{function}$".encode()):
                return f"{function} is not a kprobe-able function here (inlined?)"
        except OSError as exc:  # reading available_filter_functions can fail
            return f"cannot list kprobe-able functions: {exc}"
        return ""

    @classmethod
    def _kprobe_able(cls, bcc: Any, function: str) -> bool:
        return not cls._why_not_kprobe(bcc, function)

    def _oom_kill_process_hook(self, bcc: Any) -> tuple[str, str]:
        """How struct oom_control is read: "fentry" where the kernel allows a
        trampoline on oom_kill_process (typed, cheaper, and the way newer
        kernels prefer), else "kprobe" (with why not fentry), else "" and
        why neither."""
        if not self.layout.oom_control:
            return "", "struct oom_control lacks a field the hook reads"
        fentry, fentry_reason = fentry_allowed(
            "oom_kill_process", self.layout.oom_kill_process_btf_id
        )
        if fentry:
            return "fentry", ""
        reason = self._why_not_kprobe(bcc, "oom_kill_process")
        if reason:
            return "", f"{reason}; {fentry_reason}"
        return "kprobe", fentry_reason

    def _hook(self, name: str, attached: bool, required: bool, reason: str) -> None:
        status = HookStatus(name, attached, required, reason)
        self.hooks.append(status)
        if attached:
            log.info("bpf.hook_attached", hook=name)
        else:
            log.info("bpf.hook_skipped", hook=name, required=required, reason=reason)

    def _attach_raw(self, tp: str, fn: str, *, required: bool) -> None:
        name = f"raw_tracepoint/{tp}"
        if not _raw_tracepoint_exists(tp):
            self._hook(name, False, required, f"tracepoint {tp} does not exist on this kernel")
        else:
            try:
                self._bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                self._hook(name, True, required, "")
            except Exception as exc:  # noqa: BLE001 - BCC raises bare Exception on attach failure
                self._hook(name, False, required, str(exc))
        last = self.hooks[-1]
        if required and not last.attached:
            raise BpfLoadError(f"required hook {name} could not be attached: {last.reason}")

    def _attach_killer_writes(self, how: str) -> None:
        """A userspace killer's log writes (its reason, before its kill): a
        kprobe on ksys_write, which only write(2) pays for; where kprobes are
        not compiled in and `how` is "tracepoint", the sys_enter_write
        tracepoint (enabling a syscall tracepoint sends every syscall on the
        node through the kernel's tracing path: ~30 ns each here)."""
        if how == "off":
            self._hook("kprobe/ksys_write", False, False, "--killer-writes off")
            return
        reason = self._why_not_kprobe(import_bcc(), "ksys_write")
        if not reason:
            try:
                self._bpf.attach_kprobe(event=b"ksys_write", fn_name=b"on_ksys_write")
                self._hook("kprobe/ksys_write", True, False, "")
                return
            except Exception as exc:  # noqa: BLE001 - BCC raises bare Exception on attach failure
                reason = str(exc)
        if how != "tracepoint":
            self._hook(
                "kprobe/ksys_write",
                False,
                False,
                f"{reason}; --killer-writes tracepoint watches through the syscall tracepoint, "
                "which every syscall then pays for",
            )
            return
        try:
            self._bpf.attach_tracepoint(
                tp=b"syscalls:sys_enter_write", fn_name=b"on_sys_enter_write"
            )
            self._hook("tracepoint/syscalls/sys_enter_write", True, False, "")
        except Exception as exc:  # noqa: BLE001 - BCC raises bare Exception on attach failure
            self._hook("tracepoint/syscalls/sys_enter_write", False, False, str(exc))

    # -- events ----------------------------------------------------------

    def open_buffers(
        self,
        on_kill: Callable[[Any], None],
        on_note: Callable[[Any], None],
        on_cgroup: Callable[[Any], None] | None = None,
        on_profile: Callable[[bytes], None] | None = None,
    ) -> None:
        """Calls the callbacks with BCC's decoded struct for each event (the
        raw bytes for profile events, which are as long as their stack)."""
        kills = self._bpf["kills"]
        notes = self._bpf["notes"]
        cgroup_notes = self._bpf["cgroup_notes"]
        profiles = self._bpf["profiles"]

        def profile_cb(_cpu: Any, data: Any, size: Any) -> None:
            if on_profile is not None:
                on_profile(ctypes.string_at(data, size))

        def kill_cb(_cpu: Any, data: Any, _size: Any = None) -> None:
            on_kill(kills.event(data))

        def note_cb(_cpu: Any, data: Any, _size: Any = None) -> None:
            on_note(notes.event(data))

        def cgroup_cb(_cpu: Any, data: Any, _size: Any = None) -> None:
            if on_cgroup is not None:
                on_cgroup(cgroup_notes.event(data))

        if self.layout.has_ringbuf:
            kills.open_ring_buffer(lambda ctx, data, size: kill_cb(None, data, size))
            notes.open_ring_buffer(lambda ctx, data, size: note_cb(None, data, size))
            cgroup_notes.open_ring_buffer(lambda ctx, data, size: cgroup_cb(None, data, size))
            profiles.open_ring_buffer(lambda ctx, data, size: profile_cb(None, data, size))
        else:

            def lost(which: str) -> Callable[[int], None]:
                def cb(count: int) -> None:
                    self.user_lost[which] += count
                    log.warning("bpf.events_lost", buffer=which, count=count)

                return cb

            kills.open_perf_buffer(kill_cb, page_cnt=KILLS_RING_PAGES, lost_cb=lost("kills"))
            notes.open_perf_buffer(note_cb, page_cnt=NOTES_RING_PAGES, lost_cb=lost("notes"))
            cgroup_notes.open_perf_buffer(
                cgroup_cb, page_cnt=NOTES_RING_PAGES, lost_cb=lost("cgroup_notes")
            )
            # Per CPU: a quarter of the ring's size each.
            profiles.open_perf_buffer(
                profile_cb, page_cnt=PROFILES_RING_PAGES // 4, lost_cb=lost("profiles")
            )
        # Keep the callbacks alive as long as the session.
        self._callbacks = (kill_cb, note_cb, cgroup_cb, profile_cb)

    def poll(self, timeout_ms: int) -> None:
        if self.layout.has_ringbuf:
            self._bpf.ring_buffer_poll(timeout_ms)
        else:
            self._bpf.perf_buffer_poll(timeout_ms)

    def kernel_lost(self) -> dict[str, int]:
        """Events the kernel side dropped, by cause (buffer full, no scratch)."""
        table = self._bpf["lost"]
        return {cause: int(table[ctypes.c_int(i)].value) for i, cause in enumerate(LOST_CAUSES)}

    def attach_go(self, path: str, gc_done: int) -> list[str]:
        """The GC probe on one Go binary, at an instruction of
        gcMarkTermination's prologue (gosymbols.probe_address); the names of
        the hooks attached. Never uretprobes: Go moves its stacks."""
        try:
            self._bpf.attach_uprobe(name=path.encode(), addr=gc_done, fn_name=b"on_go_gc_done")
        except Exception as exc:
            raise BpfLoadError(f"uprobe on {path} could not be attached: {exc}") from exc
        return ["uprobe/runtime.gcMarkTermination"]

    def detach_go(self, path: str, gc_done: int) -> None:
        """Takes the GC probe off a binary no process runs any more."""
        try:
            self._bpf.detach_uprobe(name=path.encode(), addr=gc_done)
        except Exception as exc:
            raise BpfLoadError(f"uprobe on {path} could not be detached: {exc}") from exc

    def locate_go(
        self,
        tgid: int,
        controller: int,
        gomaxprocs: int,
        offsets: dict[str, int],
        profile: tuple[int, int] | None = None,
        profile_layout: dict[str, int] | None = None,
    ) -> None:
        """Tells the GC probe where this process's runtime keeps its state
        (run-time addresses); offsets missing from `offsets` are not read.
        profile: run-time (runtime.mbuckets, runtime.MemProfileRate), with
        the bucket layout, when the heap profile is to be walked at a kill."""
        table = self._bpf["go_procs"]
        leaf = table.Leaf()
        leaf.controller = controller
        leaf.gomaxprocs = gomaxprocs
        for name in GO_PROC_FIELDS:
            setattr(leaf, f"off_{name}", offsets.get(name, -1))
        if profile is not None and profile_layout is not None:
            leaf.mbuckets, leaf.mem_profile_rate = profile
            for field, name in GO_PROFILE_FIELDS.items():
                setattr(leaf, field, profile_layout[name])
        try:
            table[table.Key(tgid)] = leaf
        except Exception as exc:  # BCC raises bare Exception when the map is full
            raise BpfLoadError(f"go_procs: {exc}") from exc

    def watch_runtime(self, tgid: int) -> None:
        """Asks for this JVM, Node or Go process's exit status when it fails
        (OOMT_RUNTIME_EXIT): a runtime's own OOM death is told from it."""
        table = self._bpf["runtime_procs"]
        try:
            table[table.Key(tgid)] = table.Leaf(1)
        except Exception as exc:  # BCC raises bare Exception when the map is full
            raise BpfLoadError(f"runtime_procs: {exc}") from exc

    def go_states(self) -> dict[int, tuple[int, int]]:
        """Every Go process's (GC count, live heap) as the uprobes last saw it."""
        return {
            int(k.value): (int(v.gc_count), int(v.heap_live))
            for k, v in self._bpf["go_states"].items()
        }

    def reclaim_stats(self) -> dict[int, tuple[int, int, int]]:
        """Memcg reclaim so far, by memcg id: (count, stall ns, longest stall ns)."""
        return {
            int(k.value): (int(v.count), int(v.stall_ns), int(v.max_stall_ns))
            for k, v in self._bpf["reclaim"].items()
        }

    def close(self) -> None:
        self._bpf.cleanup()
