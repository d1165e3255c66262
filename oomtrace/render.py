"""Records for people: sizes in MiB, times relative and absolute (with their
zone), tables. Every string that came from a node (a command line, a comm,
a path, a label) goes through clean() first: a record is data from another
machine, and its control characters must not reach an operator's terminal or
break a table's layout."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, tzinfo

from oomtrace import records
from oomtrace.render_runtimes import runtime_lines
from oomtrace.v1 import collector_pb2, event_pb2

MIB = 1024 * 1024

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean(text: str) -> str:
    """Control and format characters (C0, DEL, C1, bidi overrides...)
    escaped, everything printable kept."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def size(n: int) -> str:
    if n == 0:
        return "-"
    if n >= 10 * 1024 * MIB:
        return f"{n / 1024 / MIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= span:
            return f"{s // span}{unit} ago"
    return f"{s}s ago"


def at(ts_seconds: float, tz: tzinfo | None = None) -> str:
    """An absolute time with its zone named: the local zone (TZ) unless one
    is given."""
    t = datetime.fromtimestamp(ts_seconds, tz=tz) if tz else datetime.fromtimestamp(ts_seconds)
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def when(ts_seconds: float, now: float, tz: tzinfo | None = None) -> str:
    return f"{at(ts_seconds, tz)} ({ago(now - ts_seconds)})"


rss = records.rss_bytes


def where(ev: event_pb2.OomEvent) -> str:
    if ev.pod.name:
        return clean(f"{ev.pod.namespace}/{ev.pod.name}/{ev.container.name or '?'}")
    if ev.container.name or ev.container.id:
        return clean(f"{ev.container.runtime}:{ev.container.name or ev.container.id[:12]}")
    return clean(ev.cgroup.path) or "-"


def victim(ev: event_pb2.OomEvent) -> str:
    return f"{clean(ev.victim.comm)}[{ev.victim.pid}]"


def trigger(ev: event_pb2.OomEvent) -> str:
    """The task whose allocation ran the OOM killer (comm[pid]), as
    Inspektor Gadget's trace_oomkill shows it beside the victim."""
    t = ev.trigger
    return f"{clean(t.comm)}[{t.pid}]" if t.pid or t.comm else "-"


_CONSTRAINT_FROM = {
    event_pb2.OomEvent.KERNEL: "from the kernel's oom_control",
    event_pb2.OomEvent.KERNEL_STACK: "from the kernel stack",
    event_pb2.OomEvent.DERIVED: "derived from the page counters",
    event_pb2.OomEvent.KERNEL_REPORT: "from the kernel's report",
}


def constraint(ev: event_pb2.OomEvent) -> str:
    if ev.source == event_pb2.OomEvent.USERSPACE:
        return "USERSPACE"  # no limit of the kernel's: a userspace killer's rule
    return event_pb2.OomEvent.Constraint.Name(ev.constraint)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def history_table(
    events: list[event_pb2.OomEvent], now: float, *, wide: bool = False, tz: tzinfo | None = None
) -> str:
    """wide: the whole id, and the workload, image, cgroup and first verdict."""
    if not events:
        return "no OOM kills match"
    rows = []
    for ev in events:
        row = [
            when(ev.killed_at.ToNanoseconds() / 1e9, now, tz),
            clean(ev.node),
            where(ev),
            victim(ev),
            f"{size(rss(ev))} / {size(records.limit_hit_bytes(ev))}",
            constraint(ev),
            ev.id if wide else ev.id[:12],
        ]
        if wide:
            row += [
                clean(records.pod_workload(ev)) or "-",
                clean(ev.container.image) or "-",
                clean(ev.cgroup.path) or "-",
                trigger(ev),
                ev.verdicts[0].code if ev.verdicts else "-",
            ]
        rows.append(row)
    head = ["WHEN", "NODE", "WHERE", "VICTIM", "RSS / LIMIT", "KIND", "ID"]
    if wide:
        head += ["WORKLOAD", "IMAGE", "CGROUP", "TRIGGER", "VERDICT"]
    return _table(head, rows)


def fold_incidents(events: list[event_pb2.OomEvent]) -> list[tuple[event_pb2.OomEvent, int]]:
    """One row per incident (a memory.oom.group kill takes several victims):
    its first record, and how many victims it had."""
    order: list[str] = []
    rows: dict[str, tuple[event_pb2.OomEvent, int]] = {}
    for ev in events:
        key = ev.incident_id or ev.id
        if key in rows:
            first, n = rows[key]
            rows[key] = (first, n + 1)
        else:
            order.append(key)
            rows[key] = (ev, 1)
    return [rows[k] for k in order]


def incidents_table(events: list[event_pb2.OomEvent], now: float, tz: tzinfo | None = None) -> str:
    if not events:
        return "no OOM kills match"
    rows = []
    for ev, n in fold_incidents(events):
        rows.append(
            [
                when(ev.killed_at.ToNanoseconds() / 1e9, now, tz),
                clean(ev.node),
                where(ev),
                victim(ev) + (f" +{n - 1} more" if n > 1 else ""),
                constraint(ev),
                (ev.incident_id or ev.id)[:12],
            ]
        )
    return _table(["WHEN", "NODE", "WHERE", "VICTIMS", "KIND", "INCIDENT"], rows)


def one_line(ev: event_pb2.OomEvent, tz: tzinfo | None = None, *, wide: bool = False) -> str:
    """wide: the trigger, workload and first verdict too, before the id."""
    more = ""
    if wide:
        more = (
            f" trigger={trigger(ev)} workload={clean(records.pod_workload(ev)) or '-'} "
            f"verdict={clean(ev.verdicts[0].code) if ev.verdicts else '-'}"
        )
    return (
        f"{at(ev.killed_at.ToNanoseconds() / 1e9, tz)} OOM kill on {clean(ev.node)}: "
        f"{victim(ev)} in {where(ev)}, {usage_line(ev)} ({constraint(ev)}){more} id={ev.id}"
    )


def usage_line(ev: event_pb2.OomEvent) -> str:
    """The cgroup's usage against the limit it hit, and the victim's share of
    it: its anonymous memory (its rss adds file pages other tasks share, and
    can exceed the limit)."""
    b, c = ev.breakdown, ev.cgroup
    usage = b.usage_bytes or c.oom_memcg_usage_bytes or c.memory_usage_bytes
    limit = b.limit_bytes or records.limit_hit_bytes(ev)
    anon = b.victim_anon_bytes if ev.HasField("breakdown") else ev.victim.anon_rss_bytes
    share = f" ({100 * anon / usage:.0f} %)" if usage else ""
    head = f"usage {size(usage)} of limit {size(limit)}" if limit else f"usage {size(usage)}"
    return f"{head}, victim's anon {size(anon)}{share}"


def breakdown_block(ev: event_pb2.OomEvent) -> list[str]:
    """Where the memory of the cgroup whose limit was hit was at the kill:
    a short table, each part with its share of the usage."""
    b = ev.breakdown
    usage = b.usage_bytes
    src = "the kernel's report" if b.source == b.KERNEL_REPORT else "the cgroup's files"

    def pct(n: int) -> str:
        return f"{100 * n / usage:5.1f} %" if usage else ""

    others = "other tasks' anon"
    if b.other_tasks:
        others += f" ({b.other_tasks}; largest {clean(b.largest_other_name)}[{b.largest_other_pid}] {size(b.largest_other_anon_bytes)})"
    kernel_parts = [
        (name, n)
        for name, n in (
            ("slab reclaimable", b.slab_reclaimable_bytes),
            ("slab unreclaimable", b.slab_unreclaimable_bytes),
            ("sockets", b.sock_bytes),
            ("kernel stacks", b.kernel_stack_bytes),
            ("page tables", b.pagetables_bytes),
            ("percpu", b.percpu_bytes),
            ("vmalloc", b.vmalloc_bytes),
            ("pipes and other", b.kernel_other_bytes),
        )
        if n
    ]
    rows = [
        ["victim's anon", size(b.victim_anon_bytes), pct(b.victim_anon_bytes)],
        [others, size(b.others_anon_bytes), pct(b.others_anon_bytes)],
        ["anon no task maps", size(b.unmapped_anon_bytes), pct(b.unmapped_anon_bytes)],
        [
            f"page cache (dirty {size(b.dirty_bytes)}, writeback {size(b.writeback_bytes)})",
            size(b.page_cache_bytes),
            pct(b.page_cache_bytes),
        ],
        [
            f"shmem/tmpfs (not mapped {size(b.shmem_unmapped_bytes)})",
            size(b.shmem_bytes),
            pct(b.shmem_bytes),
        ],
        [
            "kernel"
            + (
                f" ({', '.join(f'{k} {size(n)}' for k, n in kernel_parts)})" if kernel_parts else ""
            ),
            size(b.kernel_bytes),
            pct(b.kernel_bytes),
        ],
        [
            "unexplained",
            ("-" if b.unexplained_bytes < 0 else "") + size(abs(b.unexplained_bytes)),
            pct(b.unexplained_bytes),
        ],
    ]
    out = [
        f"where the memory was (from {src}: {clean(b.cgroup) or '?'}, usage {size(usage)}"
        + (f" of limit {size(b.limit_bytes)}" if b.limit_bytes else "")
        + (f", swap {size(b.swap_bytes)}" if b.swap_bytes else "")
        + ")",
        *("  " + line for line in _table(["PART", "BYTES", "SHARE"], rows).splitlines()),
    ]
    for m in b.tmpfs[:4]:
        name = f"emptyDir {clean(m.volume)} at " if m.kind == "emptyDir" else ""
        out.append(
            f"  tmpfs       {name}{clean(m.mount_point)} ({clean(m.kind)}): {size(m.used_bytes)} used"
            + (f" of {size(m.size_limit_bytes)}" if m.size_limit_bytes else "")
        )
    out += [f"  note        {clean(n)}" for n in b.notes]
    return out


def node_block(ev: event_pb2.OomEvent) -> list[str]:
    """A node-wide OOM: the kernel's Mem-Info, and who held most."""
    n = ev.node_mem_info
    out = ["the node at the kill (the kernel's Mem-Info)"]
    if n.total_ram_bytes:
        out += [
            f"  memory      {size(n.total_ram_bytes)} RAM, {size(n.free_bytes)} free "
            f"(min watermarks {size(n.min_watermark_bytes)}), swap {size(n.swap_free_bytes)} "
            f"free of {size(n.swap_total_bytes)}",
            f"  anon        {size(n.active_anon_bytes + n.inactive_anon_bytes)}; page cache "
            f"{size(n.active_file_bytes + n.inactive_file_bytes)}; shmem {size(n.shmem_bytes)}",
            f"  kernel      slab {size(n.slab_reclaimable_bytes)} reclaimable, "
            f"{size(n.slab_unreclaimable_bytes)} not; page tables {size(n.pagetables_bytes)}; "
            f"stacks {size(n.kernel_stack_bytes)}",
            f"  hugepages   {size(n.hugepages_total_bytes)} reserved, {size(n.hugepages_free_bytes)} free",
        ]
    for c in n.top_cgroups:
        limit = f"limit {size(c.limit_bytes)}" if c.limit_bytes else "no limit"
        out.append(f"  cgroup      {clean(c.path)}: {size(c.usage_bytes)} ({limit})")
    return out


def allocation_lines(ev: event_pb2.OomEvent) -> list[str]:
    a = ev.allocation
    line = f"  allocating  {clean(records.allocation_text(a))}"
    if a.gfp_mask:
        line += f"; gfp_mask {clean(a.gfp_mask)}"
    line += f" (from {clean(a.source)}" + (
        f", {clean(a.from_function)})" if a.from_function else ")"
    )
    return [line]


def report(ev: event_pb2.OomEvent, now: float, tz: tzinfo | None = None) -> str:
    """The full forensic report of one kill."""
    v, c, t = ev.victim, ev.cgroup, ev.trigger
    out = [f"OOM kill {ev.id}"]
    if ev.verdicts:
        out += ["", "verdict"]
        for vd in ev.verdicts:
            out += [
                f"  [{event_pb2.Verdict.Severity.Name(vd.severity).lower()}] {clean(vd.code)}: "
                f"{clean(vd.explanation)}",
                f"      → {clean(vd.suggestion)}",
            ]
        out.append("")
    out += [
        f"  when        {when(ev.killed_at.ToNanoseconds() / 1e9, now, tz)} on {clean(ev.node)} "
        f"(boot {clean(ev.boot_id[:8])})",
        f"  kind        {constraint(ev)} ({_CONSTRAINT_FROM.get(ev.constraint_source, 'unknown')})",
        "",
        "victim",
        f"  process     {victim(ev)} uid {v.uid}, {v.threads} thread(s), oom_score_adj {v.oom_score_adj}",
        *(go_lines(ev.go, ev.id) if ev.HasField("go") else []),
        *runtime_lines(ev),
        f"  command     {clean(v.cmdline) or '-'}",
        f"  executable  {clean(v.exe) or '-'}",
        f"  memory      rss {size(rss(ev))} = anon {size(v.anon_rss_bytes)} + file {size(v.file_rss_bytes)} "
        f"+ shmem {size(v.shmem_rss_bytes)}; virtual {size(v.total_vm_bytes)}, "
        f"page tables {size(v.pgtables_bytes)}, swap {size(v.swap_bytes)}"
        + (" (as the kernel printed them)" if v.figures_from == v.KERNEL_LINE else ""),
        "",
        "cgroup",
        f"  path        {clean(c.path) or '-'} (v{c.version}, id {c.id})",
        f"  memory      usage {size(c.memory_usage_bytes)} of limit {size(c.memory_limit_bytes)}",
    ]
    if ev.HasField("breakdown"):
        at = next(i for i, line in enumerate(out) if line.startswith("  memory      rss"))
        out.insert(at + 1, f"  share       {usage_line(ev)}")
    if c.oom_memcg_path:
        out.append(
            f"  limit hit   {clean(c.oom_memcg_path)}: usage {size(c.oom_memcg_usage_bytes)} of "
            f"{size(c.oom_memcg_limit_bytes)}, failcnt {c.oom_memcg_failcnt}"
        )
    if ev.HasField("breakdown"):
        out += ["", *breakdown_block(ev)]
    if ev.HasField("node_mem_info"):
        out += ["", *node_block(ev)]
    if ev.pod.name or ev.container.id:
        out += [
            "",
            "workload",
            f"  pod         {clean(ev.pod.namespace)}/{clean(ev.pod.name)} "
            f"({clean(ev.pod.qos_class) or '?'})",
            f"  workload    {clean(records.pod_workload(ev)) or '-'}",
            f"  container   {clean(ev.container.name)} {clean(ev.container.id[:12])} "
            f"({clean(ev.container.runtime)})",
            f"  image       {clean(ev.container.image)}",
        ]
    out += ["", "trigger"]
    if ev.source == ev.USERSPACE:
        k = ev.killer
        out.append(
            f"  killer      {clean(k.comm)}[{k.pid}], a userspace OOM killer, sent {clean(k.signal)}"
        )
    same = t.pid == v.pid
    out.append(
        f"  task        {clean(t.comm)}[{t.pid}] thread {t.tid}"
        + (" (the victim itself)" if same else f" in {clean(t.cgroup_path) or '?'}")
    )
    if ev.HasField("allocation"):
        out += allocation_lines(ev)
    timing = []
    if ev.HasField("exit_ns"):
        timing.append(f"victim exited {ev.exit_ns / 1e6:.1f} ms after the kill")
    if ev.HasField("reap_ns"):
        timing.append(f"oom reaper finished {ev.reap_ns / 1e6:.1f} ms after the kill")
    if timing:
        out += ["", "after the kill", *(f"  {x}" for x in timing)]
    if ev.timeline:
        out += ["", *timeline_block(ev)]
    if ev.choice.candidates:
        out += ["", *choice_table(ev.choice)]
    if ev.HasField("kernel_report") and ev.kernel_report.tasks:
        out += ["", *task_table(ev.kernel_report)]
    if ev.missing:
        out += ["", "not known", *(f"  {clean(m)}" for m in ev.missing)]
    return "\n".join(out)


_BARS = "▁▂▃▄▅▆▇█"


def go_lines(go: event_pb2.GoRuntime, ident: str = "ID") -> list[str]:
    """The Go build and its configuration, then the runtime as the GC probe
    last saw it (what was in effect, whatever the environment said)."""
    out = [
        f"  go          {clean(go.version)} {clean(go.module)}; environment: "
        f"GOMEMLIMIT={clean(go.gomemlimit) or 'unset'} GOGC={clean(go.gogc) or 'unset'} "
        f"GOMAXPROCS={clean(go.gomaxprocs) or 'unset'}"
    ]
    if not go.state:
        return out + heap_profile_lines(go, ident)
    last = (
        f", the last {records.seconds_text(go.since_last_gc_ns)} before the kill"
        if go.HasField("since_last_gc_ns")
        else ""
    )
    recent, span = records.recent_gcs(go)
    out.append(f"  gc          {go.gc_count} cycles; {recent} of them {span}{last}")
    if go.state == event_pb2.GoRuntime.CONTROLLER:
        gogc = "off" if go.effective_gogc < 0 else str(go.effective_gogc)
        limit = (
            size(go.effective_memory_limit_bytes)
            if go.HasField("effective_memory_limit_bytes")
            else "none"
        )
        out.append(
            f"  in effect   GOGC {gogc}{_source(go.gogc_source)}, memory limit {limit}"
            f"{_source(go.memory_limit_source)}, GOMAXPROCS {go.effective_gomaxprocs or '?'}"
            f"{_source(go.gomaxprocs_source)}"
        )
        out.append(
            f"  heap        {size(go.heap_live_bytes)} (goal {size(go.heap_goal_bytes)}, "
            f"marked live {size(go.heap_marked_bytes)}) at the last GC"
        )
    return out + heap_profile_lines(go, ident)


def heap_profile_lines(go: event_pb2.GoRuntime, ident: str = "ID") -> list[str]:
    """The heap profile's top allocation sites by in-use bytes, or why there
    is no profile. Each site's first figure is what the pprof file holds
    (runtime/pprof's: as of the last completed GC), so `go tool pprof -top`
    of `oomtrace pprof` shows the same; what was allocated since that GC is
    not in the file, and is shown apart, marked so."""
    if go.heap_profile_missing:
        return [f"  heap profile none: {clean(go.heap_profile_missing)}"]
    hp = go.heap_profile
    if not hp.buckets:
        return []
    cut = []
    if hp.buckets_cut:
        cut.append("more stacks than were read")
    if hp.stacks_cut:
        cut.append(f"{hp.stacks_cut} stacks cut to their first frames")
    if hp.buckets_lost:
        cut.append(f"{hp.buckets_lost} stacks lost")
    out = [
        f"  heap profile {size(hp.inuse_bytes)} in use at the last GC, {hp.buckets} stacks, "
        f"one sample per {size(hp.sample_rate)}"
        + (f" ({'; '.join(cut)})" if cut else "")
        + (f"; `oomtrace pprof {ident} > heap.pb.gz` writes these figures" if hp.pprof else "")
    ]
    if hp.since_gc_bytes > 0:
        out.append(
            f"              {size(hp.since_gc_bytes)} more allocated since that GC: shown as "
            "'+... since GC' after a site; not in the pprof file (the runtime publishes a "
            "cycle's figures only at the next GC)"
        )
    out += _sites(hp.top, hp.inuse_bytes)
    before = go.heap_profile_before
    if before.buckets and hp.growth:
        out.append(
            f"  grew since  the profile {records.seconds_text(before.taken_ns_before_kill)} "
            f"before the kill ({size(before.inuse_bytes)} in use, memory cgroup at "
            f"{before.memcg_percent} % of its limit; `oomtrace pprof --before {ident}`)"
        )
        out.append(
            "              counting what both walks had not yet published, so these are not "
            "go tool pprof -diff_base's figures (published cycles only)"
        )
        out += _sites(
            hp.growth,
            hp.inuse_bytes + hp.since_gc_bytes - before.inuse_bytes - before.since_gc_bytes,
            sign="+",
        )
    return out


def _sites(sites: Iterable[event_pb2.HeapSite], total: int, sign: str = "") -> list[str]:
    """inuse_bytes first (the file's figure; a growth site's growth), then
    since_gc_bytes apart (never set on growth sites)."""
    out = []
    for site in sites:
        held = site.inuse_bytes
        if held <= 0 and site.since_gc_bytes <= 0:
            continue
        share = held / total if total > 0 else 0
        where = f"{clean(site.file).rsplit('/', 1)[-1]}:{site.line}"
        since = f"  +{size(site.since_gc_bytes)} since GC" if site.since_gc_bytes > 0 else ""
        out.append(
            f"    {sign + size(held):>9} {share:4.0%}  {clean(site.function)} ({where}){since}"
        )
    return out


_SOURCES: dict[int, str] = {
    event_pb2.GoRuntime.ENV: " (environment)",
    event_pb2.GoRuntime.PROGRAM: " (set by the program)",
    event_pb2.GoRuntime.DEFAULT: " (default)",
}


def _source(source: int) -> str:
    return _SOURCES.get(source, "")


_GAP = " "  # a second the agent missed: shown as a gap, not as zero


def sparkline(values: list[float | None], top: float | None = None) -> str:
    """One character a value, scaled to top (default: the largest); None is
    a second with no sample, left blank."""
    seen = [v for v in values if v is not None]
    top = top if top else max(seen, default=0)
    out = []
    for v in values:
        if v is None:
            out.append(_GAP)
        elif top <= 0:
            out.append(_BARS[0])
        else:
            out.append(_BARS[min(len(_BARS) - 1, int(v / top * (len(_BARS) - 1) + 0.5))])
    return "".join(out)


def timeline_block(ev: event_pb2.OomEvent) -> list[str]:
    pts = list(ev.timeline)
    span = -pts[0].offset_ms / 1000 if pts[0].offset_ms < 0 else 0
    limit = max((p.limit_bytes for p in pts), default=0)
    sampled = [p for p in pts if not p.missed]

    def series(value: Callable[[event_pb2.TimelinePoint], float]) -> list[float | None]:
        return [None if p.missed else value(p) for p in pts]

    usage = series(lambda p: float(p.usage_bytes))
    first, last = (sampled[0].usage_bytes, sampled[-1].usage_bytes) if sampled else (0, 0)
    missed = len(pts) - len(sampled)
    lines = [
        f"the last {span:.0f} s of {clean(ev.timeline_cgroup)} (one mark a second, the kill at "
        "the right" + (f"; {missed} second(s) not sampled, left blank" if missed else "") + ")",
        f"  usage      {sparkline(usage, float(limit) or None)}  {size(first)} → {size(last)} "
        f"of {size(limit)}",
    ]
    if any(p.reclaims for p in sampled):
        stall_ms = sum(p.reclaim_stall_ns for p in sampled) / 1e6
        total = sum(p.reclaims for p in sampled)
        lines.append(
            f"  reclaims   {sparkline(series(lambda p: float(p.reclaims)))}  {total} reclaims, "
            f"{stall_ms:.1f} ms stalled"
        )
    if any(p.go_heap_live_bytes for p in sampled):
        heap = series(lambda p: float(p.go_heap_live_bytes))
        top_heap = max(p.go_heap_live_bytes for p in sampled)
        lines.append(
            f"  go heap    {sparkline(heap, float(limit) or None)}  live heap up to {size(top_heap)}"
        )
        gcs = series(lambda p: p.go_gc_per_second)
        top_gcs = max(p.go_gc_per_second for p in sampled)
        lines.append(f"  go GC/s    {sparkline(gcs)}  up to {top_gcs:.0f} a second")
    if any(p.psi_some_avg10 for p in sampled):
        psi = series(lambda p: p.psi_some_avg10)
        top_psi = max(p.psi_some_avg10 for p in sampled)
        lines.append(f"  psi some   {sparkline(psi, 100.0)}  avg10 up to {top_psi:.1f} %")
    return lines


def choice_table(ch: event_pb2.OomChoice) -> list[str]:
    """The candidates as the kernel scored them: highest first."""
    head = (
        f"why this victim (the kernel's badness: rss + swap + page tables, plus oom_score_adj "
        f"in thousandths of {ch.total_pages} pages, {clean(ch.total_pages_from)})"
    )
    if ch.HasField("kernel_chosen_points"):
        head += f"; the kernel's own points for its choice: {ch.kernel_chosen_points}"
    rows = [
        [
            "→" if c.victim else "",
            str(c.pid),
            clean(c.name),
            size(c.memory_bytes),
            str(c.oom_score_adj),
            clean(c.qos_class) or "-",
            str(c.points),
        ]
        for c in ch.candidates
    ]
    table = _table(["", "PID", "NAME", "MEMORY", "ADJ", "QOS", "POINTS"], rows)
    out = [head, *("  " + line for line in table.splitlines())]
    if ch.victim_rank != 1:
        out.append(
            f"  the victim ranks {ch.victim_rank} here: the table was printed after the choice "
            "and the figures moved, or a task was not eligible (oom_score_adj, vfork)"
        )
    elif ch.adj_decided:
        out.append(
            "  the victim held less memory than another candidate: its oom_score_adj decided"
        )
    return out


def task_table(kr: event_pb2.KernelReport) -> list[str]:
    """In bytes, as the record holds them (at the node's own page size)."""
    tasks = sorted(kr.tasks, key=lambda t: t.rss_bytes, reverse=True)
    rows = [
        [
            str(t.pid),
            str(t.uid),
            size(t.rss_bytes),
            size(t.rss_anon_bytes),
            size(t.total_vm_bytes),
            size(t.pgtables_bytes),
            size(t.swap_bytes),
            str(t.oom_score_adj),
            clean(t.name),
        ]
        for t in tasks
    ]
    head = ["PID", "UID", "RSS", "ANON", "VIRT", "PGTABLES", "SWAP", "ADJ", "NAME"]
    title = "the kernel's task table at the kill, by RSS" + (
        f" (memcg {size(kr.memcg_usage_bytes)} of {size(kr.memcg_limit_bytes)})"
        if kr.memcg_limit_bytes
        else ""
    )
    return [title, *("  " + line for line in _table(head, rows).splitlines())]


def pressure_table(
    pressure: list[event_pb2.PressureRecord],
    now: float,
    *,
    wide: bool = False,
    tz: tzinfo | None = None,
) -> str:
    """wide: the window's start, the cgroup and the PSI source too. Verdicts
    (a memory.high stall's) follow the table."""
    if not pressure:
        return "no pressure records match"
    rows = []
    for r in pressure:
        where_ = f"{r.pod.namespace}/{r.pod.name}/{r.container.name}" if r.pod.name else r.cgroup
        row = [
            when(r.end.ToNanoseconds() / 1e9, now, tz),
            clean(r.node),
            clean(where_),
            f"{size(r.usage_max_bytes)} / {size(r.limit_bytes)}",
            str(r.reclaims),
            f"{r.reclaim_stall_ns / 1e6:.1f} ms",
            f"{r.psi_some_avg10_max:.1f}",
            clean(",".join(r.reasons)),
        ]
        if wide:
            row += [at(r.start.ToNanoseconds() / 1e9, tz), clean(r.cgroup), clean(r.psi_source)]
        rows.append(row)
    head = ["WINDOW END", "NODE", "WHERE", "PEAK / LIMIT", "RECLAIMS", "STALLED", "PSI10", "WHY"]
    if wide:
        head += ["WINDOW START", "CGROUP", "PSI FROM"]
    out = _table(head, rows)
    # A memory.high stall's verdict once per cgroup (its latest window): the
    # table above shows every window of it.
    latest: dict[str, event_pb2.PressureRecord] = {}
    for r in pressure:
        if r.verdicts and (
            r.cgroup not in latest or r.end.ToNanoseconds() > latest[r.cgroup].end.ToNanoseconds()
        ):
            latest[r.cgroup] = r
    for r in latest.values():
        for v in r.verdicts:
            out += f"\n\n{clean(v.code)}: {clean(v.explanation)}\n  {clean(v.suggestion)}"
    return out


TOP_HEADINGS = {"pod": "NAMESPACE/POD", "workload": "NAMESPACE/WORKLOAD"}


def top_table(
    resp: collector_pb2.TopResponse,
    by: str,
    now: float,
    *,
    wide: bool = False,
    tz: tzinfo | None = None,
) -> str:
    """wide: the last kill's absolute time, not only how long ago."""
    if not resp.rows:
        return "no OOM kills match"
    rows = []
    for r in resp.rows:
        last = r.last_killed_at.ToNanoseconds() / 1e9
        rows.append(
            [
                clean(r.key) or "-",
                str(r.kills),
                when(last, now, tz) if wide else ago(now - last),
                size(r.max_rss_bytes),
            ]
        )
    return _table([TOP_HEADINGS.get(by, by.upper()), "KILLS", "LAST", "MAX RSS"], rows)
