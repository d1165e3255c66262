"""Records for people: sizes in MiB, times relative and absolute, tables."""

from __future__ import annotations

from datetime import UTC, datetime

from oomtrace.v1 import collector_pb2, event_pb2

MIB = 1024 * 1024


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


def when(ts_seconds: float, now: float) -> str:
    absolute = datetime.fromtimestamp(ts_seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{absolute} ({ago(now - ts_seconds)})"


def rss(ev: event_pb2.OomEvent) -> int:
    v = ev.victim
    return v.anon_rss_bytes + v.file_rss_bytes + v.shmem_rss_bytes


def where(ev: event_pb2.OomEvent) -> str:
    if ev.pod.name:
        return f"{ev.pod.namespace}/{ev.pod.name}/{ev.container.name or '?'}"
    if ev.container.name or ev.container.id:
        return f"{ev.container.runtime}:{ev.container.name or ev.container.id[:12]}"
    return ev.cgroup.path or "-"


def constraint(ev: event_pb2.OomEvent) -> str:
    return event_pb2.OomEvent.Constraint.Name(ev.constraint)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def history_table(events: list[event_pb2.OomEvent], now: float) -> str:
    if not events:
        return "no OOM kills match"
    rows = []
    for ev in events:
        limit = ev.cgroup.oom_memcg_limit_bytes or ev.cgroup.memory_limit_bytes
        rows.append(
            [
                when(ev.killed_at.ToNanoseconds() / 1e9, now),
                ev.node,
                where(ev),
                f"{ev.victim.comm}[{ev.victim.pid}]",
                f"{size(rss(ev))} / {size(limit)}",
                constraint(ev),
                ev.id[:12],
            ]
        )
    return _table(["WHEN", "NODE", "WHERE", "VICTIM", "RSS / LIMIT", "KIND", "ID"], rows)


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


def incidents_table(events: list[event_pb2.OomEvent], now: float) -> str:
    if not events:
        return "no OOM kills match"
    rows = []
    for ev, n in fold_incidents(events):
        rows.append(
            [
                when(ev.killed_at.ToNanoseconds() / 1e9, now),
                ev.node,
                where(ev),
                f"{ev.victim.comm}[{ev.victim.pid}]" + (f" +{n - 1} more" if n > 1 else ""),
                constraint(ev),
                (ev.incident_id or ev.id)[:12],
            ]
        )
    return _table(["WHEN", "NODE", "WHERE", "VICTIMS", "KIND", "INCIDENT"], rows)


def one_line(ev: event_pb2.OomEvent) -> str:
    limit = ev.cgroup.oom_memcg_limit_bytes or ev.cgroup.memory_limit_bytes
    t = datetime.fromtimestamp(ev.killed_at.ToNanoseconds() / 1e9, tz=UTC).strftime("%H:%M:%S")
    return (
        f"{t} OOM kill on {ev.node}: {ev.victim.comm}[{ev.victim.pid}] in {where(ev)}, "
        f"rss {size(rss(ev))} of limit {size(limit)} ({constraint(ev)}) id={ev.id}"
    )


def report(ev: event_pb2.OomEvent, now: float) -> str:
    """The full forensic report of one kill."""
    v, c, t = ev.victim, ev.cgroup, ev.trigger
    out = [f"OOM kill {ev.id}"]
    if ev.verdicts:
        out += ["", "verdict"]
        for vd in ev.verdicts:
            out += [f"  [{vd.severity}] {vd.code}: {vd.explanation}", f"      → {vd.suggestion}"]
        out.append("")
    out += [
        f"  when        {when(ev.killed_at.ToNanoseconds() / 1e9, now)} on {ev.node} (boot {ev.boot_id[:8]})",
        f"  kind        {constraint(ev)} ({ev.constraint_source or 'unknown'})",
        "",
        "victim",
        f"  process     {v.comm}[{v.pid}] uid {v.uid}, {v.threads} thread(s), oom_score_adj {v.oom_score_adj}",
        *(go_lines(ev.go) if ev.HasField("go") else []),
        f"  command     {v.cmdline or '-'}",
        f"  executable  {v.exe or '-'}",
        f"  memory      rss {size(rss(ev))} = anon {size(v.anon_rss_bytes)} + file {size(v.file_rss_bytes)} "
        f"+ shmem {size(v.shmem_rss_bytes)}; virtual {size(v.total_vm_bytes)}, "
        f"page tables {size(v.pgtables_bytes)}, swap {size(v.swap_bytes)}",
        "",
        "cgroup",
        f"  path        {c.path or '-'} (v{c.version}, id {c.id})",
        f"  memory      usage {size(c.memory_usage_bytes)} of limit {size(c.memory_limit_bytes)}",
    ]
    if c.oom_memcg_path:
        out.append(
            f"  limit hit   {c.oom_memcg_path}: usage {size(c.oom_memcg_usage_bytes)} of "
            f"{size(c.oom_memcg_limit_bytes)}, failcnt {c.oom_memcg_failcnt}"
        )
    if ev.pod.name or ev.container.id:
        out += [
            "",
            "workload",
            f"  pod         {ev.pod.namespace}/{ev.pod.name} ({ev.pod.qos_class or '?'})",
            f"  container   {ev.container.name} {ev.container.id[:12]} ({ev.container.runtime})",
            f"  image       {ev.container.image}",
        ]
    out += ["", "trigger"]
    same = t.pid == v.pid
    out.append(
        f"  task        {t.comm}[{t.pid}] thread {t.tid}"
        + (" (the victim itself)" if same else f" in {t.cgroup_path or '?'}")
    )
    timing = []
    if ev.HasField("exit_ns"):
        timing.append(f"victim exited {ev.exit_ns / 1e6:.1f} ms after the kill")
    if ev.HasField("reap_ns"):
        timing.append(f"oom reaper finished {ev.reap_ns / 1e6:.1f} ms after the kill")
    if timing:
        out += ["", "after the kill", *(f"  {x}" for x in timing)]
    if ev.timeline:
        out += ["", *timeline_block(ev)]
    if ev.HasField("kernel_report") and ev.kernel_report.tasks:
        out += ["", *task_table(ev.kernel_report)]
    if ev.missing:
        out += ["", "not known", *(f"  {m}" for m in ev.missing)]
    return "\n".join(out)


_BARS = "▁▂▃▄▅▆▇█"


def go_lines(go: event_pb2.GoRuntime) -> list[str]:
    """The Go build and its configuration, then the runtime as the GC probe
    last saw it (what was in effect, whatever the environment said)."""
    out = [
        f"  go          {go.version} {go.module}; GOMEMLIMIT={go.gomemlimit or 'unset'} "
        f"GOGC={go.gogc or 'unset'} GOMAXPROCS={go.gomaxprocs or 'unset'}"
    ]
    if not go.state:
        return out
    last = (
        f", the last {go.since_last_gc_ns / 1e6:.0f} ms before the kill"
        if go.HasField("since_last_gc_ns")
        else ""
    )
    out.append(f"  gc          {go.gc_count} cycles, {go.gc_per_second_10s:.1f}/s over 10 s{last}")
    if go.state == "controller":
        gogc = "off" if go.effective_gogc < 0 else str(go.effective_gogc)
        limit = (
            size(go.effective_memory_limit_bytes)
            if go.HasField("effective_memory_limit_bytes")
            else "none"
        )
        out.append(
            f"  in effect   GOGC {gogc}, memory limit {limit}, GOMAXPROCS "
            f"{go.effective_gomaxprocs or '?'}; heap {size(go.heap_live_bytes)} "
            f"(goal {size(go.heap_goal_bytes)}, marked live {size(go.heap_marked_bytes)})"
        )
    return out


def sparkline(values: list[float], top: float | None = None) -> str:
    """One character a value, scaled to top (default: the largest)."""
    top = top if top else max(values, default=0)
    if not values or top <= 0:
        return "".join(_BARS[0] for _ in values)
    return "".join(
        _BARS[min(len(_BARS) - 1, int(v / top * (len(_BARS) - 1) + 0.5))] for v in values
    )


def timeline_block(ev: event_pb2.OomEvent) -> list[str]:
    pts = list(ev.timeline)
    span = -pts[0].offset_ms / 1000 if pts[0].offset_ms < 0 else 0
    limit = max((p.limit_bytes for p in pts), default=0)
    usage = [float(p.usage_bytes) for p in pts]
    lines = [
        f"the last {span:.0f} s of {ev.timeline_cgroup} (one mark a second, the kill at the right)",
        f"  usage      {sparkline(usage, float(limit) or None)}  {size(int(usage[0]))} → {size(int(usage[-1]))} of {size(limit)}",
    ]
    reclaims = [float(p.reclaims) for p in pts]
    if any(reclaims):
        stall_ms = sum(p.reclaim_stall_ns for p in pts) / 1e6
        lines.append(
            f"  reclaims   {sparkline(reclaims)}  {int(sum(reclaims))} reclaims, {stall_ms:.1f} ms stalled"
        )
    heap = [float(p.go_heap_live_bytes) for p in pts]
    if any(heap):
        lines.append(
            f"  go heap    {sparkline(heap, float(limit) or None)}  live heap up to {size(int(max(heap)))}"
        )
        gcs = [p.go_gc_per_second for p in pts]
        lines.append(f"  go GC/s    {sparkline(gcs)}  up to {max(gcs):.0f} a second")
    psi = [p.psi_some_avg10 for p in pts]
    if any(psi):
        lines.append(f"  psi some   {sparkline(psi, 100.0)}  avg10 up to {max(psi):.1f} %")
    return lines


def task_table(kr: event_pb2.KernelReport) -> list[str]:
    tasks = sorted(kr.tasks, key=lambda t: t.rss_pages, reverse=True)
    rows = [
        [
            str(t.pid),
            str(t.uid),
            size(t.rss_pages * 4096),
            size(t.rss_anon_pages * 4096) if t.rss_anon_pages else "-",
            size(t.total_vm_pages * 4096),
            size(t.pgtables_bytes),
            str(t.swapents),
            str(t.oom_score_adj),
            t.name,
        ]
        for t in tasks
    ]
    head = ["PID", "UID", "RSS", "ANON", "VIRT", "PGTABLES", "SWAPENTS", "ADJ", "NAME"]
    title = "the kernel's task table at the kill, by RSS" + (
        f" (memcg {size(kr.memcg_usage_bytes)} of {size(kr.memcg_limit_bytes)})"
        if kr.memcg_limit_bytes
        else ""
    )
    return [title, *("  " + line for line in _table(head, rows).splitlines())]


def pressure_table(records: list[event_pb2.PressureRecord], now: float) -> str:
    if not records:
        return "no pressure records match"
    rows = []
    for r in records:
        where_ = f"{r.pod.namespace}/{r.pod.name}/{r.container.name}" if r.pod.name else r.cgroup
        rows.append(
            [
                when(r.end.ToNanoseconds() / 1e9, now),
                r.node,
                where_,
                f"{size(r.usage_max_bytes)} / {size(r.limit_bytes)}",
                str(r.reclaims),
                f"{r.reclaim_stall_ns / 1e6:.1f} ms",
                f"{r.psi_some_avg10_max:.1f}",
                ",".join(r.reasons),
            ]
        )
    return _table(
        ["WINDOW END", "NODE", "WHERE", "PEAK / LIMIT", "RECLAIMS", "STALLED", "PSI10", "WHY"], rows
    )


def top_table(resp: collector_pb2.TopResponse, by: str, now: float) -> str:
    if not resp.rows:
        return "no OOM kills match"
    rows = [
        [
            r.key or "-",
            str(r.kills),
            when(r.last_killed_at.ToNanoseconds() / 1e9, now),
            size(r.max_rss_bytes),
        ]
        for r in resp.rows
    ]
    return _table([by.upper(), "KILLS", "LAST", "MAX RSS"], rows)
