"""The ui's pages around the post-mortem: the layout, the kill list (its
filter form, rows and paging), top, and a cgroup's pressure windows. Rows
of the list are one function, so the live stream sends the same markup the
page was rendered with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources

from oomtrace import records, render
from oomtrace.ui import charts, filters, postmortem
from oomtrace.ui.markup import attrs, esc, size, table, tag
from oomtrace.v1 import collector_pb2, event_pb2

NAV = (("/", "kills"), ("/top", "top"), ("/pressure", "pressure"))
TOP_BY = ("workload", "pod", "namespace", "node", "container", "image", "cgroup", "comm", "verdict")


def asset(name: str) -> bytes:
    return resources.files("oomtrace.ui").joinpath("static", name).read_bytes()


def layout(title: str, body: str, *, active: str = "", standalone: bool = False) -> str:
    """The whole document. standalone: the stylesheet inline and no script
    (an exported file); else the ui's own /static files."""
    if standalone:
        head = (
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'; img-src data:\">"
            f"<style>{asset('ui.css').decode()}</style>"
        )
        nav = ""
    else:
        head = '<link rel="stylesheet" href="/static/ui.css"><script src="/static/ui.js" defer></script>'
        nav = tag(
            "nav",
            tag("span", "oomtrace", class_="brand")
            + "".join(
                tag("a", esc(label), href=href, class_="on" if label == active else None)
                for href, label in NAV
            )
            + tag("span", "", id="live", class_="live"),
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title>{head}</head><body>{nav}<main>{body}</main></body></html>"
    )


def error_page(message: str, status: int) -> str:
    return layout(
        f"oomtrace: {status}",
        tag("div", tag("h1", esc(f"{status}")) + tag("p", esc(message)), class_="error"),
    )


def kill_page(
    ev: event_pb2.OomEvent, incident: Sequence[event_pb2.OomEvent] = (), *, standalone: bool = False
) -> str:
    links = postmortem.Links(base=None if standalone else "/", incident=tuple(incident))
    return layout(
        postmortem.title(ev),
        tag("article", postmortem.body(ev, links), class_="postmortem"),
        active="kills",
        standalone=standalone,
    )


def kill_row(ev: event_pb2.OomEvent) -> str:
    """One <tr> of the list."""
    killed = ev.killed_at.ToNanoseconds() / 1e9
    verdict = ev.verdicts[0] if ev.verdicts else None
    rss, limit = records.rss_bytes(ev), records.limit_hit_bytes(ev)
    share = min(100.0, 100 * rss / limit) if limit else 0.0
    cells = [
        tag("time", esc(render.at(killed)), data_ts=f"{killed:.3f}"),
        esc(ev.node),
        esc(render.where(ev)),
        tag("a", esc(render.victim(ev)), href=f"/kill/{ev.id}"),
        size(rss)
        + esc(" / ")
        + size(limit)
        + f'<svg class="minibar" viewBox="0 0 100 8"><rect x="0" y="0" width="{share:.1f}" height="8"/></svg>',
        esc(render.constraint(ev)) + (esc(f" ×{ev.kills}") if ev.kills > 1 else ""),
        tag("span", esc(verdict.code), class_=f"vtag sev{verdict.severity}") if verdict else "",
        tag("a", tag("code", esc(ev.id[:12])), href=f"/kill/{ev.id}"),
    ]
    return f"<tr{attrs(data_id=ev.id)}>" + "".join(tag("td", c) for c in cells) + "</tr>"


LIST_HEAD = ["when", "node", "where", "victim", "rss / limit", "kind", "verdict", "id"]


def _form(params: Mapping[str, str], action: str, kills: bool = True, extra: str = "") -> str:
    fields = [
        tag(
            "label",
            esc(uf.label) + f"<input{attrs(name=uf.param, value=params.get(uf.param, ''))}>",
        )
        for uf in filters.active(kills)
    ]
    fields += [
        tag(
            "label",
            esc(p)
            + f"<input{attrs(name=p, value=params.get(p, ''), placeholder='7d, 2026-11-27T09:00:00Z')}>",
        )
        for p in filters.TIME_PARAMS
    ]
    return tag(
        "form",
        extra + "".join(fields) + '<button type="submit">filter</button>',
        method="get",
        action=action,
        class_="filters",
    )


def list_page(
    events: Sequence[event_pb2.OomEvent],
    params: Mapping[str, str],
    next_token: str,
    error: str = "",
) -> str:
    rows = "".join(kill_row(ev) for ev in events)
    head = "".join(tag("th", esc(h)) for h in LIST_HEAD)
    more = ""
    if next_token:
        more = tag(
            "a",
            "older →",
            href="/?" + filters.query_string(params, page=next_token),
            class_="more",
            rel="next",
        )
    empty = tag("p", esc("no OOM kills match"), class_="empty", id="empty") if not events else ""
    body = (
        tag("h1", esc("OOM kills"))
        + (tag("p", esc(error), class_="error") if error else "")
        + _form(params, "/")
        + tag(
            "table",
            f"<thead><tr>{head}</tr></thead>" + tag("tbody", rows, id="kills"),
            class_="grid kills",
            # Where the live stream connects: the same filters; only the
            # first page is live (older pages do not move).
            data_live="/events?" + filters.query_string(params) if not params.get("page") else None,
        )
        + empty
        + more
    )
    return layout("oomtrace: OOM kills", body, active="kills")


def top_page(
    resp: collector_pb2.TopResponse, by: str, params: Mapping[str, str], error: str = ""
) -> str:
    choices = "".join(
        tag("option", esc(b), value=b, selected=b == by)
        for b in TOP_BY
        if b.upper() in collector_pb2.TopRequest.GroupBy.keys()  # noqa: SIM118 - an enum wrapper, not a dict
    )
    select = tag("label", esc("by") + tag("select", choices, name="by"))
    bars = charts.hbars(
        [
            (r.key or "-", r.kills, f"{r.kills} · max rss {render.size(r.max_rss_bytes)}")
            for r in resp.rows
        ]
    )
    key = {
        "pod": "namespace",
        "workload": "workload",
        "namespace": "namespace",
        "node": "node",
        "container": "container",
        "image": "image",
        "comm": "comm",
        "verdict": "verdict",
    }
    rows = []
    for r in resp.rows:
        param = key.get(by)
        value = r.key.split("/", 1)[1] if by == "pod" and "/" in r.key else r.key
        label = esc(r.key) or "-"
        if param and any(uf.param == param for uf in filters.active()) and by != "workload":
            label = tag(
                "a",
                label,
                href="/?"
                + filters.query_string(params, **{("pod" if by == "pod" else param): value}),
            )
        last = r.last_killed_at.ToNanoseconds() / 1e9
        rows.append([label, esc(r.kills), esc(render.at(last)), size(r.max_rss_bytes)])
    body = (
        tag("h1", esc(f"Who gets OOM-killed most, by {by}"))
        + (tag("p", esc(error), class_="error") if error else "")
        + _form(params, "/top", extra=select)
        + bars
        + table([by, "kills", "last", "max rss"], rows, class_="grid top")
        + ("" if resp.rows else tag("p", esc("no OOM kills match"), class_="empty"))
    )
    return layout("oomtrace: top", body, active="top")


def pressure_page(
    recs: Sequence[event_pb2.PressureRecord], params: Mapping[str, str], error: str = ""
) -> str:
    rows = []
    verdicts = []
    for r in recs:
        end = r.end.ToNanoseconds() / 1e9
        start = r.start.ToNanoseconds() / 1e9
        rows.append(
            [
                esc(render.at(start)) + esc(" → ") + esc(render.at(end).split(" ")[1]),
                esc(r.node),
                tag("code", esc(r.cgroup)),
                size(r.usage_max_bytes) + esc(" / ") + size(r.limit_bytes),
                esc(r.reclaims),
                esc(f"{r.reclaim_stall_ns / 1e6:.1f} ms"),
                esc(f"{r.psi_some_avg10_max:.1f} / {r.psi_full_avg10_max:.1f} ({r.psi_source})"),
                esc(",".join(r.reasons)),
            ]
        )
        for v in r.verdicts:
            verdicts.append(
                tag(
                    "div",
                    tag("code", esc(v.code), class_="vcode")
                    + tag("p", esc(v.explanation))
                    + tag("p", "→ " + esc(v.suggestion), class_="suggest"),
                    class_="verdict warning",
                )
            )
    body = (
        tag("h1", esc("Memory pressure windows"))
        + (tag("p", esc(error), class_="error") if error else "")
        + _form(params, "/pressure", kills=False)
        + "".join(dict.fromkeys(verdicts))
        + charts.windows(recs)
        + table(
            [
                "window",
                "node",
                "cgroup",
                "peak / limit",
                "reclaims",
                "stalled",
                "PSI some / full",
                "why",
            ],
            rows,
            class_="grid pressure",
        )
        + ("" if recs else tag("p", esc("no pressure records match"), class_="empty"))
    )
    return layout("oomtrace: pressure", body, active="pressure")
