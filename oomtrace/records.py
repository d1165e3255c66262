"""What the agent, the collector and the CLI share: what a record's fields
mean (the agent's verdicts, the collector's index columns and the CLI's
tables all read RSS, the limit hit, GC counts and the owning workload from
here, one formula each), how records are written as JSON, durations, and the
defaults every side agrees on. Knows the wire types and nothing else (no
agent, no collector, no gRPC), so a query loads none of the agent."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from oomtrace.v1 import event_pb2

# Userspace OOM killers, by comm (the kernel's 15 bytes): their SIGKILL or
# SIGTERM is an OOM kill (the agent's --userspace-killers).
USERSPACE_KILLERS = ("systemd-oomd", "oomd", "earlyoom", "nohang", "lmkd")
# How a userspace killer's log writes are watched (the agent's
# --killer-writes): "kprobe" (kprobe/ksys_write where kprobes exist: only
# write(2) pays), "tracepoint" (that, or the sys_enter_write tracepoint where
# kprobes are not compiled in: every syscall on the node pays, ~30 ns each as
# measured by tests/bench/bench_killer_writes.py), or "off".
KILLER_WRITES = ("kprobe", "tracepoint", "off")
# Held throttled above memory.high this long (seconds) with no OOM kill is a
# stall: a pressure record says so (the agent's --high-stall-seconds).
HIGH_STALL_S = 30
DEFAULT_COLLECTOR = "127.0.0.1:50051"
# The largest message the collector takes; a record is sent inside an
# IngestRequest, so the agent keeps each record a little under it.
MAX_MESSAGE_BYTES = 1 << 20
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES - 4096
# Where the agent writes its counters, and `oomtrace doctor` reads them.
DEFAULT_STATUS_FILE = Path("/run/oomtrace/agent-status.json")

# The MemoryBreakdown fields that add up, with unexplained_bytes, to its
# usage_bytes (the agent's breakdown.py makes them so; show prints them).
USAGE_PARTS = (
    "victim_anon_bytes",
    "others_anon_bytes",
    "unmapped_anon_bytes",
    "page_cache_bytes",
    "shmem_bytes",
    "kernel_bytes",
)

_Alloc = event_pb2.Allocation
# What each kind of allocation (_Alloc.Kind) is, in words for `show`
# and the verdicts.
ALLOCATION_WORDS = {
    _Alloc.ANON_FAULT: "an anonymous page fault",
    _Alloc.SHMEM: "a tmpfs/shared-memory page",
    _Alloc.PAGE_CACHE: "a page-cache page for a file read or write",
    _Alloc.PIPE: "a pipe buffer",
    _Alloc.SOCKET: "a socket buffer",
    _Alloc.SLAB: "a slab object",
    _Alloc.HUGE_PAGE: "a transparent huge page",
    _Alloc.PAGE_TABLE: "a page table",
    _Alloc.KERNEL_OTHER: "a kernel page charged to the cgroup",
    _Alloc.MEMORY_LIMIT_WRITE: "nothing: the limit was lowered below the usage",
    _Alloc.KERNEL_STACK: "a new task's kernel stack",
}


def allocation_text(a: event_pb2.Allocation) -> str:
    """ "a tmpfs/shared-memory page by dd[42], order 0": the allocation in words."""
    kind = ALLOCATION_WORDS.get(a.kind, "an allocation of a kind the trace does not tell")
    who = f" by {a.comm}[{a.pid}]" if a.comm else ""
    return f"{kind}{who}" + (f", order {a.order}" if a.order else "")


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration_s(text: str) -> int:
    """Seconds in `30d`, `12h`, `90m`, `45s`, `2w`; raises ValueError."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 90m")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def to_json(msg: Message) -> str:
    """One line of protobuf JSON (a record, a pressure record) with the proto
    field names, every field shown."""
    return json_format.MessageToJson(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=None,
        sort_keys=False,
    )


def rss_bytes(ev: event_pb2.OomEvent) -> int:
    """The victim's resident memory as the kernel's report sums it."""
    v = ev.victim
    return v.anon_rss_bytes + v.file_rss_bytes + v.shmem_rss_bytes


def limit_hit_bytes(ev: event_pb2.OomEvent) -> int:
    """The limit the kill was about: the memcg whose limit was hit, else the
    victim cgroup's effective limit (0: none known)."""
    c = ev.cgroup
    return c.oom_memcg_limit_bytes or c.memory_limit_bytes


def seconds_text(ns: int) -> str:
    s = ns / 1e9
    if s >= 10:
        return f"{s:.0f} s"
    return f"{s:.1f} s" if s >= 0.1 else f"{ns / 1e6:.0f} ms"


def recent_gcs(go: event_pb2.GoRuntime) -> tuple[int, str]:
    """(GCs counted just before the kill, "in the last 1.3 s before the kill",
    "in its 1.3 s of life", or, when no GC ran in its last second, "in the
    10 s up to its last GC, 8.0 s before the kill"): what the agent saw, as
    it counted it."""
    if go.recent_gc_span_ns:
        span = seconds_text(go.recent_gc_span_ns)
        stalled = go.recent_gc_end_ns_before_kill
        if stalled:
            # No GC in its last second or more: the span ends at its last GC.
            first = (
                f"in its first {span} of life"
                if go.HasField("lifetime_ns") and go.recent_gc_span_ns + stalled == go.lifetime_ns
                else f"in the {span} up to its last GC"
            )
            return go.recent_gc_count, f"{first}, {seconds_text(stalled)} before the kill"
        if go.HasField("lifetime_ns") and go.recent_gc_span_ns == go.lifetime_ns:
            return go.recent_gc_count, f"in its {span} of life"
        return go.recent_gc_count, f"in the last {span} before the kill"
    # Records from agents before recent_gc_count: a rate over 10 s.
    return round(go.gc_per_second_10s * 10), "in the last 10 s before the kill"


# -- the workload that owns a pod -----------------------------------------------------

# The alphabet Kubernetes draws generated name suffixes from (no vowels, no
# digits that look like letters): ReplicaSets' pod-template-hash, and the five
# random characters of a pod made by a controller.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_DEPLOYMENT = re.compile(rf"^(?P<name>.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$")
_CRONJOB = re.compile(rf"^(?P<name>.+)-\d{{8,}}-{_SAFE}{{5}}$")
_STATEFULSET = re.compile(r"^(?P<name>.+)-\d+$")
_CONTROLLED = re.compile(rf"^(?P<name>.+)-{_SAFE}{{5}}$")


def pod_workload(ev: event_pb2.OomEvent) -> str:
    """The record's workload; records from agents that did not fill
    pod.workload get it from the pod's name."""
    return ev.pod.workload or workload_of(ev.pod.name)


def workload_of(pod_name: str, labels: Mapping[str, str] | None = None) -> str:
    """ "Kind/name" of what owns a pod, from its name and whatever of its
    labels the runtime state gives: Deployment/shop for shop-7d9f8b6c5-x2x4q,
    StatefulSet/db for db-0, CronJob/report for report-29012345-abcde, and
    Controller/agent for agent-x2x4q (a DaemonSet, a Job or a bare
    ReplicaSet: the name alone cannot tell them apart). A pod no controller
    owns is its own workload (Pod/name). Pod names change with every rollout;
    this does not."""
    labels = labels or {}
    if not pod_name:
        return ""
    job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if job:
        m = re.fullmatch(r"(?P<name>.+)-\d{8,}", job)
        return f"CronJob/{m.group('name')}" if m else f"Job/{job}"
    if "pod-template-hash" in labels:
        suffix = f"-{labels['pod-template-hash']}"
        rs = pod_name.rsplit("-", 1)[0]
        if rs.endswith(suffix):
            return f"Deployment/{rs[: -len(suffix)]}"
    if "statefulset.kubernetes.io/pod-name" in labels and (m := _STATEFULSET.match(pod_name)):
        return f"StatefulSet/{m.group('name')}"
    if "controller-revision-hash" in labels and (m := _CONTROLLED.match(pod_name)):
        return f"DaemonSet/{m.group('name')}"
    for kind, pattern in (
        ("CronJob", _CRONJOB),
        ("Deployment", _DEPLOYMENT),
        ("StatefulSet", _STATEFULSET),
        ("Controller", _CONTROLLED),
    ):
        if m := pattern.match(pod_name):
            return f"{kind}/{m.group('name')}"
    return f"Pod/{pod_name}"


def without_profile_files(ev: event_pb2.OomEvent) -> event_pb2.OomEvent:
    """The record without its Go heap profiles' pprof files (up to 384 KiB
    each): what lists and watches send; GetEvent (`oomtrace show`, `oomtrace
    pprof`) sends them whole. The record itself is left as it is: it may be
    shared (the watchers' broadcast)."""
    if not ev.HasField("go") or not (ev.go.heap_profile.pprof or ev.go.heap_profile_before.pprof):
        return ev
    out = event_pb2.OomEvent()
    out.CopyFrom(ev)
    out.go.heap_profile.ClearField("pprof")
    if out.go.HasField("heap_profile_before"):
        out.go.heap_profile_before.ClearField("pprof")
    return out


_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def verdict_label(ev: event_pb2.OomEvent) -> str:
    """The first verdict's code, as a metric label (the agent's Prometheus
    counter, the collector's OTLP sum); the agent writes the codes, but a
    label stays bounded whatever a record holds: anything not a code is OTHER."""
    if not ev.verdicts:
        return ""
    code = ev.verdicts[0].code
    return code if len(code) <= 64 and set(code) <= _CODE_CHARS else "OTHER"


def mib_text(n: int) -> str:
    """A size as a person reads it in one line of text (an Event's note, an
    OTLP log's body): MiB with one decimal."""
    return f"{n / (1 << 20):.1f} MiB"
