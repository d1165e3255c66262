"""A kill's post-mortem as HTML: verdicts first, then who died and why, the
memory against the limit, the timeline, the kernel's ranking, the Go
runtime and its heap, the kernel's raw report. Each part of a record is one
function in PARTS, taking the record and a Links and returning a <section>
(or "" when the record lacks that part): a new part is one function and one
line. The same sections make the `oomtrace ui` page and the exported file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from oomtrace import records, render
from oomtrace.ui import charts, flame
from oomtrace.ui.markup import dl, esc, esc_lines, size, table, tag
from oomtrace.v1 import event_pb2

Event = event_pb2.OomEvent


@dataclass(frozen=True, slots=True)
class Links:
    """Where a page's links go: the ui's own routes, or none in an exported
    file (the ids are shown as text)."""

    base: str | None = "/"
    # The incident's other records, found by the page (the API has no
    # incident filter: a query around the kill's time on its node).
    incident: Sequence[Event] = field(default_factory=tuple)

    def kill(self, ev_id: str, text: str) -> str:
        if self.base is None:
            return tag("code", esc(text))
        return tag("a", esc(text), href=f"{self.base}kill/{ev_id}")

    def list_where(self, key: str, value: str) -> str:
        if self.base is None or not value:
            return esc(value) or "-"
        from urllib.parse import urlencode

        return tag("a", esc(value), href=f"{self.base}?{urlencode({key: value})}")


def section(title: str, body: str, id_: str) -> str:
    return tag("section", tag("h2", esc(title)) + body, id=id_, class_="part")


_SEVERITY = {1: "info", 2: "warning", 3: "critical"}


def verdicts(ev: Event, _links: Links) -> str:
    if not ev.verdicts:
        return ""
    items = []
    for v in ev.verdicts:
        sev = _SEVERITY.get(v.severity, "info")
        items.append(
            tag(
                "div",
                tag("span", esc(sev), class_=f"sev {sev}")
                + tag("code", esc(v.code), class_="vcode")
                + tag("p", esc(v.explanation))
                + (tag("p", "→ " + esc(v.suggestion), class_="suggest") if v.suggestion else ""),
                class_=f"verdict {sev}",
                data_code=v.code,
            )
        )
    return section("Verdicts", "".join(items), "verdicts")


def _constraint_from(ev: Event) -> str:
    return render._CONSTRAINT_FROM.get(ev.constraint_source, "unknown")


def summary(ev: Event, links: Links) -> str:
    v, t = ev.victim, ev.trigger
    killed = ev.killed_at.ToNanoseconds() / 1e9
    facts = [
        ("when", esc(render.at(killed)) + tag("span", "", class_="ago", data_ts=f"{killed:.3f}")),
        ("node", links.list_where("node", ev.node)),
        ("kind", esc(f"{render.constraint(ev)} ({_constraint_from(ev)})")),
        ("source", esc(Event.Source.Name(ev.source))),
        (
            "victim",
            tag("b", esc(f"{v.comm}[{v.pid}]"))
            + esc(f" uid {v.uid}, {v.threads} thread(s), oom_score_adj {v.oom_score_adj}"),
        ),
        ("command", tag("code", esc(v.cmdline) or "-", class_="cmd")),
        ("executable", tag("code", esc(v.exe) or "-")),
    ]
    if ev.source == Event.USERSPACE:
        k = ev.killer
        facts.append(
            (
                "killer",
                esc(f"{k.comm}[{k.pid}], a userspace OOM killer, sent {k.signal}")
                + (tag("blockquote", esc(k.said)) if k.said else ""),
            )
        )
    same = t.pid == v.pid
    facts.append(
        (
            "trigger",
            esc(f"{t.comm}[{t.pid}] thread {t.tid}")
            + esc(" (the victim itself)" if same else f" in {t.cgroup_path or '?'}"),
        )
    )
    timing = []
    if ev.HasField("exit_ns"):
        timing.append(f"victim exited {ev.exit_ns / 1e6:.1f} ms after the kill")
    if ev.HasField("reap_ns"):
        timing.append(f"oom reaper finished {ev.reap_ns / 1e6:.1f} ms after")
    if timing:
        facts.append(("after", esc("; ".join(timing))))
    return section("The kill", dl(facts), "kill")


def where(ev: Event, links: Links) -> str:
    c, p, k = ev.cgroup, ev.pod, ev.container
    facts = [
        ("cgroup", tag("code", esc(c.path) or "-") + esc(f" (v{c.version}, id {c.id})")),
        ("its memory", size(c.memory_usage_bytes) + esc(" of limit ") + size(c.memory_limit_bytes)),
    ]
    if c.oom_memcg_path:
        facts.append(
            (
                "limit hit",
                tag("code", esc(c.oom_memcg_path))
                + esc(
                    f": usage {render.size(c.oom_memcg_usage_bytes)} of "
                    f"{render.size(c.oom_memcg_limit_bytes)}, failcnt {c.oom_memcg_failcnt}"
                ),
            )
        )
    if p.name or k.id:
        facts += [
            ("namespace", links.list_where("namespace", p.namespace)),
            ("pod", links.list_where("pod", p.name) + esc(f" ({p.qos_class or '?'})")),
            ("workload", esc(records.pod_workload(ev)) or "-"),
            (
                "container",
                links.list_where("container", k.name) + esc(f" {k.id[:12]} ({k.runtime})"),
            ),
            ("image", links.list_where("image", k.image)),
        ]
    return section("Container and pod", dl(facts), "where")


def memory_segments(ev: Event) -> tuple[list[charts.Segment], int, int, int]:
    """(segments, the usage they add up to, the limit, victim bytes not in
    that usage): the victim's RSS by kind, the rest of the limit-hit
    cgroup's usage, then the headroom. A victim's RSS can count pages its
    cgroup was not charged for (file pages another cgroup brought in):
    those are cut from the bar, and said."""
    v, c = ev.victim, ev.cgroup
    limit = records.limit_hit_bytes(ev)
    usage = c.oom_memcg_usage_bytes or c.memory_usage_bytes or records.rss_bytes(ev)
    segs, left = [], usage
    for cls, label, n in (
        ("anon", "victim anon", v.anon_rss_bytes),
        ("file", "victim file", v.file_rss_bytes),
        ("shmem", "victim shmem", v.shmem_rss_bytes),
    ):
        part = min(n, left)
        left -= part
        segs.append(charts.Segment(cls, label, part))
    if left:
        segs.append(charts.Segment("rest", "rest of the cgroup", left))
    segs.append(charts.Segment("free", "headroom", max(0, limit - usage)))
    return segs, usage, limit, max(0, records.rss_bytes(ev) - usage)


def memory(ev: Event, _links: Links) -> str:
    v = ev.victim
    segs, usage, limit, uncharged = memory_segments(ev)
    caption = (
        f"usage {render.size(usage)} of limit {render.size(limit)}"
        if limit
        else f"usage {render.size(usage)} (no limit: a machine-wide OOM)"
    )
    if uncharged:
        caption += (
            f"; the victim's rss counts {render.size(uncharged)} more than the cgroup was "
            "charged (pages charged elsewhere, or figures read a moment apart): cut from the bar"
        )
    facts = [
        (
            "victim rss",
            size(records.rss_bytes(ev))
            + esc(
                f" = anon {render.size(v.anon_rss_bytes)} + file {render.size(v.file_rss_bytes)} "
                f"+ shmem {render.size(v.shmem_rss_bytes)}"
            )
            + (
                tag("span", " as the kernel printed them", class_="note")
                if v.figures_from == v.KERNEL_LINE
                else ""
            ),
        ),
        (
            "also",
            esc(
                f"virtual {render.size(v.total_vm_bytes)}, page tables "
                f"{render.size(v.pgtables_bytes)}, swap {render.size(v.swap_bytes)}"
            ),
        ),
    ]
    bar = tag(
        "div",
        charts.bar(segs, limit, caption),
        class_="membar-wrap",
        data_usage_bytes=usage,
        data_limit_bytes=limit,
    )
    body = tag("p", esc(caption), class_="caption") + bar + dl(facts)
    return section("Memory against the limit", body, "memory")


def timeline(ev: Event, _links: Links) -> str:
    if not ev.timeline:
        return ""
    missed = sum(1 for p in ev.timeline if p.missed)
    pts = [p for p in ev.timeline if not p.missed]
    present = (
        ("usage", "usage", True),
        ("limit", "limit", any(p.limit_bytes for p in pts)),
        ("goheap", "Go live heap", any(p.go_heap_live_bytes for p in pts)),
        ("reclaim", "reclaims", any(p.reclaims for p in pts)),
        ("psisome", "PSI some", any(p.psi_some_avg10 or p.psi_full_avg10 for p in pts)),
        ("psifull", "PSI full", any(p.psi_some_avg10 or p.psi_full_avg10 for p in pts)),
        ("gcrate", "GC/s", any(p.go_gc_per_second for p in pts)),
    )
    legend = tag(
        "p",
        "".join(
            tag("span", esc(name), class_=f"key {cls}") for cls, name, shown in present if shown
        )
        + (esc(f" · {missed} second(s) not sampled, shown as gaps") if missed else ""),
        class_="legendrow",
    )
    head = tag(
        "p",
        esc(f"{ev.timeline_cgroup}, one point a second, the kill at the right"),
        class_="caption",
    )
    return section("Before the kill", head + charts.timeline(ev) + legend, "timeline")


def choice(ev: Event, _links: Links) -> str:
    ch = ev.choice
    if not ch.candidates:
        return ""
    top = max((c.points for c in ch.candidates), default=1) or 1
    rows = []
    for c in ch.candidates:
        w = max(0.0, 100 * c.points / top)
        rows.append(
            [
                "→" if c.victim else "",
                esc(c.pid),
                esc(c.name),
                size(c.memory_bytes),
                esc(c.oom_score_adj),
                esc(c.qos_class) or "-",
                esc(c.points)
                + f'<svg class="minibar" viewBox="0 0 100 8"><rect x="0" y="0" width="{w:.1f}" height="8"/></svg>',
            ]
        )
    note = (
        f"the kernel's badness: rss + swap + page tables, plus oom_score_adj in thousandths of "
        f"{ch.total_pages} pages ({ch.total_pages_from})"
    )
    if ch.HasField("kernel_chosen_points"):
        note += f"; the kernel's own points for its choice: {ch.kernel_chosen_points}"
    if ch.victim_rank != 1:
        note += f". The victim ranks {ch.victim_rank} here: the figures moved, or a task was not eligible"
    elif ch.adj_decided:
        note += ". The victim held less memory than another candidate: its oom_score_adj decided"
    body = tag("p", esc(note), class_="caption") + table(
        ["", "pid", "name", "memory", "adj", "QoS", "points"], rows, class_="grid choice"
    )
    return section("Why this victim", body, "choice")


def _sites(sites: Sequence[event_pb2.HeapSite], total: int, sign: str = "") -> str:
    rows = []
    for s in sites:
        held = s.inuse_bytes + s.since_gc_bytes
        if held <= 0:
            continue
        rows.append(
            [
                esc(sign + render.size(held)),
                esc(f"{held / total:.0%}" if total > 0 else "-"),
                tag("code", esc(s.function)),
                esc(f"{s.file.rsplit('/', 1)[-1]}:{s.line}"),
            ]
        )
    return table(["bytes", "share", "function", "where"], rows, class_="grid sites") if rows else ""


def go_runtime(ev: Event, _links: Links) -> str:
    if not ev.HasField("go"):
        return ""
    go = ev.go
    facts = [
        ("go", esc(f"{go.version} {go.module}")),
        (
            "environment",
            esc(
                f"GOMEMLIMIT={go.gomemlimit or 'unset'} GOGC={go.gogc or 'unset'} "
                f"GOMAXPROCS={go.gomaxprocs or 'unset'}"
            ),
        ),
    ]
    if go.state:
        recent, span = records.recent_gcs(go)
        facts.append(("GC", esc(f"{go.gc_count} cycles; {recent} of them {span}")))
    if go.state == event_pb2.GoRuntime.CONTROLLER:
        gogc = "off" if go.effective_gogc < 0 else str(go.effective_gogc)
        limit = (
            render.size(go.effective_memory_limit_bytes)
            if go.HasField("effective_memory_limit_bytes")
            else "none"
        )
        facts += [
            (
                "in effect",
                esc(
                    f"GOGC {gogc}{render._source(go.gogc_source)}, memory limit {limit}"
                    f"{render._source(go.memory_limit_source)}, GOMAXPROCS "
                    f"{go.effective_gomaxprocs or '?'}{render._source(go.gomaxprocs_source)}"
                ),
            ),
            (
                "heap",
                esc(
                    f"{render.size(go.heap_live_bytes)} live (goal {render.size(go.heap_goal_bytes)}, "
                    f"marked {render.size(go.heap_marked_bytes)}) at the last GC"
                ),
            ),
        ]
    if go.build_settings:
        facts.append(
            ("build", esc(" ".join(f"{k}={v}" for k, v in sorted(go.build_settings.items()))))
        )
    return section("Go runtime", dl(facts), "go")


def _flame_of(profile: event_pb2.GoHeapProfile) -> dict[tuple[str, ...], int] | None:
    return flame.stacks(profile.pprof) if profile.pprof else None


def heap(ev: Event, _links: Links) -> str:
    if not ev.HasField("go"):
        return ""
    go = ev.go
    if go.heap_profile_missing:
        return section(
            "Go heap profile",
            tag("p", esc("none: " + go.heap_profile_missing), class_="missing"),
            "heap",
        )
    hp = go.heap_profile
    if not hp.buckets:
        return ""
    parts = [
        tag(
            "p",
            esc(
                f"{render.size(hp.inuse_bytes)} in use at the last GC"
                + (
                    f", {render.size(hp.since_gc_bytes)} allocated since (not in the file)"
                    if hp.since_gc_bytes > 0
                    else ""
                )
                + f"; {hp.buckets} stacks, one sample per {render.size(hp.sample_rate)}"
            ),
            class_="caption",
        ),
        _sites(hp.top, hp.inuse_bytes + hp.since_gc_bytes),
    ]
    at_kill = _flame_of(hp)
    if at_kill is not None:
        parts.append(tag("h3", esc("at the kill (in use, by call path)")))
        parts.append(charts.flame(flame.tree(at_kill), "heap at the kill"))
    elif hp.pprof:
        parts.append(tag("p", esc("the profile file does not decode"), class_="missing"))
    before = go.heap_profile_before
    if before.buckets:
        parts.append(
            tag(
                "h3",
                esc(
                    f"before: {records.seconds_text(before.taken_ns_before_kill)} before the kill, "
                    f"the memory cgroup at {before.memcg_percent} % of its limit"
                ),
            )
        )
        b = _flame_of(before)
        if b is not None:
            parts.append(charts.flame(flame.tree(b), "heap before the kill"))
        if hp.growth:
            grew = hp.inuse_bytes + hp.since_gc_bytes - before.inuse_bytes - before.since_gc_bytes
            parts.append(tag("h3", esc("what grew between them")))
            parts.append(_sites(hp.growth, grew, sign="+"))
        if at_kill is not None and b is not None:
            g = flame.growth(at_kill, b)
            if g:
                parts.append(charts.flame(flame.tree(g, "grew"), "growth", growth=True))
    return section("Go heap profile", "".join(parts), "heap")


def kernel_report(ev: Event, _links: Links) -> str:
    if not ev.HasField("kernel_report"):
        return ""
    kr = ev.kernel_report
    parts = []
    if kr.ratelimited:
        parts.append(
            tag(
                "p",
                esc("the kernel ratelimited its report: only the Killed process line"),
                class_="note",
            )
        )
    if kr.tasks:
        rows = [
            [
                esc(t.pid),
                esc(t.uid),
                size(t.rss_bytes),
                size(t.rss_anon_bytes),
                size(t.total_vm_bytes),
                size(t.pgtables_bytes),
                size(t.swap_bytes),
                esc(t.oom_score_adj),
                esc(t.name),
            ]
            for t in sorted(kr.tasks, key=lambda t: t.rss_bytes, reverse=True)
        ]
        parts.append(
            table(
                ["pid", "uid", "rss", "anon", "virt", "pgtables", "swap", "adj", "name"],
                rows,
                class_="grid tasks",
            )
        )
    if kr.raw:
        parts.append(
            tag(
                "details",
                tag("summary", esc("the raw report")) + tag("pre", esc_lines(kr.raw), class_="raw"),
                open=True,
            )
        )
    return section("The kernel's report", "".join(parts), "kernel") if parts else ""


def incident(ev: Event, links: Links) -> str:
    others = [o for o in links.incident if o.id != ev.id]
    if not others:
        return ""
    items = "".join(
        tag("li", links.kill(o.id, o.id[:12]) + esc(f" {render.victim(o)} in {render.where(o)}"))
        for o in others
    )
    return section(
        f"The incident's other kills ({len(others)})",
        tag(
            "p",
            esc("one invocation of the OOM killer took these too (memory.oom.group)"),
            class_="caption",
        )
        + tag("ul", items),
        "incident",
    )


def missing(ev: Event, _links: Links) -> str:
    if not ev.missing:
        return ""
    return section(
        "Not known", tag("ul", "".join(tag("li", esc(m)) for m in ev.missing)), "missing"
    )


Part = Callable[[Event, Links], str]
# In page order: what went wrong first.
PARTS: list[Part] = [
    verdicts,
    summary,
    where,
    memory,
    timeline,
    choice,
    incident,
    go_runtime,
    heap,
    kernel_report,
    missing,
]


def title(ev: Event) -> str:
    return f"{render.victim(ev)} killed in {render.where(ev)}"


def body(ev: Event, links: Links) -> str:
    head = tag(
        "header",
        tag("h1", esc(title(ev)))
        + tag(
            "p",
            esc(
                f"OOM kill {ev.id} · {render.constraint(ev)} · "
                f"rss {render.size(records.rss_bytes(ev))} of {render.size(records.limit_hit_bytes(ev))}"
            ),
            class_="sub",
        ),
        class_="killhead",
    )
    return head + "".join(part(ev, links) for part in PARTS)
