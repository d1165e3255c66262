"""Charts as inline SVG: the timeline before a kill, a bar against a limit,
a flame graph, horizontal bars for top. Colours are CSS classes (the
stylesheet, or the export's inline copy), never style attributes, so a
Content-Security-Policy without 'unsafe-inline' styles draws them too.
Every figure a test or a reader may want is also in a data- attribute or a
<title> (the browser's own tooltip: no script)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from oomtrace import render
from oomtrace.ui.flame import Frame
from oomtrace.ui.markup import attrs, esc
from oomtrace.v1 import event_pb2

W = 960  # user units; the SVG scales to the page's width
LEFT, RIGHT = 70, 16


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(height: int, body: str, **kw: object) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
        f'preserveAspectRatio="xMinYMin meet"{attrs(**kw)}>{body}</svg>'
    )


@dataclass(frozen=True, slots=True)
class _Axis:
    """Seconds before the kill, mapped onto the chart's width."""

    first_ms: int

    def x(self, offset_ms: int) -> float:
        span = max(1, -self.first_ms)
        return LEFT + (W - LEFT - RIGHT) * (offset_ms - self.first_ms) / span


def _path(points: Sequence[tuple[float, float] | None]) -> str:
    """A line broken at None (a second the agent missed is a gap, not 0)."""
    out, pen = [], False
    for p in points:
        if p is None:
            pen = False
            continue
        out.append(f"{'L' if pen else 'M'}{_fmt(p[0])},{_fmt(p[1])}")
        pen = True
    return "".join(out)


def _strip(
    pts: Sequence[event_pb2.TimelinePoint],
    axis: _Axis,
    top: float,
    y0: int,
    h: int,
    label: str,
    series: Sequence[tuple[str, Callable[[event_pb2.TimelinePoint], float]]],
    fmt: Callable[[float], str],
    bars: bool = False,
) -> str:
    """One band of the timeline: its label, grid, and each series as a line
    (or bars), scaled to top."""
    top = top or 1.0

    def y(v: float) -> float:
        return y0 + h - h * min(v, top) / top

    out = [
        f'<text class="band" x="4" y="{y0 + 12}">{esc(label)}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{y0 + 10}" text-anchor="end">{esc(fmt(top))}</text>',
        f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y0 + h}" y2="{y0 + h}"/>',
        f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y0}" y2="{y0}"/>',
    ]
    step = (W - LEFT - RIGHT) / max(1, len(pts))
    for cls, value in series:
        if bars:
            for p in pts:
                v = 0.0 if p.missed else value(p)
                if v > 0:
                    bh = h * min(v, top) / top
                    out.append(
                        f'<rect class="{cls}" x="{_fmt(axis.x(p.offset_ms) - step * 0.4)}" '
                        f'y="{_fmt(y0 + h - bh)}" width="{_fmt(step * 0.8)}" height="{_fmt(bh)}">'
                        f"<title>{p.offset_ms / 1000:.0f} s: {esc(fmt(v))}</title></rect>"
                    )
            continue
        line = [None if p.missed else (axis.x(p.offset_ms), y(value(p))) for p in pts]
        out.append(f'<path class="line {cls}" d="{_path(line)}"/>')
    return "".join(out)


def timeline(ev: event_pb2.OomEvent) -> str:
    """Usage against the limit (and the Go heap), then reclaims, PSI and the
    GC rate where the record has them, one point a second, the kill at the
    right edge. Each sampled usage point is a circle carrying its figures."""
    pts = list(ev.timeline)
    if not pts:
        return ""
    axis = _Axis(min(pts[0].offset_ms, -1000))
    sampled = [p for p in pts if not p.missed]
    top = max(
        [p.limit_bytes for p in sampled]
        + [p.usage_bytes for p in sampled]
        + [p.go_heap_live_bytes for p in sampled]
        + [1]
    )
    top = int(top * 1.05)
    h, y0 = 200, 10
    parts = []

    def y(v: float) -> float:
        return y0 + h - h * v / top

    for frac in (0.25, 0.5, 0.75, 1.0):
        yy = y(top * frac)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{_fmt(yy)}" y2="{_fmt(yy)}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{_fmt(yy + 4)}" text-anchor="end">'
            f"{esc(render.size(int(top * frac)))}</text>"
        )
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{y0 + h}" y2="{y0 + h}"/>')
    limit = [
        None if p.missed or not p.limit_bytes else (axis.x(p.offset_ms), y(p.limit_bytes))
        for p in pts
    ]
    parts.append(f'<path class="line limit" d="{_path(limit)}"/>')
    if any(p.go_heap_live_bytes for p in sampled):
        heap = [None if p.missed else (axis.x(p.offset_ms), y(p.go_heap_live_bytes)) for p in pts]
        parts.append(f'<path class="line goheap" d="{_path(heap)}"/>')
    usage = [None if p.missed else (axis.x(p.offset_ms), y(p.usage_bytes)) for p in pts]
    parts.append(f'<path class="line usage" d="{_path(usage)}"/>')
    for p in sampled:
        parts.append(
            f'<circle class="pt" cx="{_fmt(axis.x(p.offset_ms))}" cy="{_fmt(y(p.usage_bytes))}" '
            f'r="2.5"{attrs(data_offset_ms=p.offset_ms, data_usage_bytes=p.usage_bytes, data_limit_bytes=p.limit_bytes)}>'
            f"<title>{p.offset_ms / 1000:.0f} s: {esc(render.size(p.usage_bytes))} of "
            f"{esc(render.size(p.limit_bytes))}"
            + (
                f", Go heap {esc(render.size(p.go_heap_live_bytes))}"
                if p.go_heap_live_bytes
                else ""
            )
            + "</title></circle>"
        )
    for p in pts:
        if p.missed:
            x = axis.x(p.offset_ms)
            parts.append(
                f'<rect class="missed" x="{_fmt(x - 3)}" y="{y0}" width="6" height="{h}">'
                f"<title>{p.offset_ms / 1000:.0f} s: not sampled</title></rect>"
            )
    y_next = y0 + h + 14
    band = 56
    if any(p.reclaims for p in sampled):
        parts.append(
            _strip(
                pts,
                axis,
                max(p.reclaims for p in sampled),
                y_next,
                band - 14,
                "reclaims",
                [("reclaim", lambda p: float(p.reclaims))],
                lambda v: f"{v:.0f}",
                bars=True,
            )
        )
        y_next += band
    if any(p.psi_some_avg10 or p.psi_full_avg10 for p in sampled):
        parts.append(
            _strip(
                pts,
                axis,
                100.0,
                y_next,
                band - 14,
                "PSI avg10 %",
                [("psisome", lambda p: p.psi_some_avg10), ("psifull", lambda p: p.psi_full_avg10)],
                lambda v: f"{v:.0f} %",
            )
        )
        y_next += band
    if any(p.go_gc_per_second for p in sampled):
        parts.append(
            _strip(
                pts,
                axis,
                max(p.go_gc_per_second for p in sampled),
                y_next,
                band - 14,
                "Go GC/s",
                [("gcrate", lambda p: p.go_gc_per_second)],
                lambda v: f"{v:.0f}/s",
            )
        )
        y_next += band
    # Seconds before the kill along the bottom, and the kill itself.
    span_s = -axis.first_ms / 1000
    step_s = max(5, int(span_s / 6 / 5 + 1) * 5)
    s = 0
    while s <= span_s:
        x = axis.x(-s * 1000)
        parts.append(
            f'<text class="tick" x="{_fmt(x)}" y="{y_next + 4}" text-anchor="middle">'
            f"{'kill' if s == 0 else f'-{s} s'}</text>"
        )
        s += step_s
    kx = axis.x(0)
    parts.append(
        f'<line class="kill" x1="{_fmt(kx)}" x2="{_fmt(kx)}" y1="{y0}" y2="{y_next - 10}"/>'
    )
    return _svg(
        y_next + 10,
        "".join(parts),
        class_="timeline",
        role="img",
        aria_label=f"memory of {ev.timeline_cgroup} in the {span_s:.0f} s before the kill",
        data_points=len(sampled),
    )


@dataclass(frozen=True, slots=True)
class Segment:
    cls: str
    label: str
    nbytes: int


def bar(segments: Sequence[Segment], whole: int, caption: str) -> str:
    """Segments laid end to end against `whole` (a limit): each a rect with
    its bytes in data-bytes and a <title>, and a legend under it."""
    whole = max(whole, sum(s.nbytes for s in segments), 1)
    x = 0.0
    out = []
    legend = []
    lx = 0
    for s in segments:
        if s.nbytes <= 0:
            continue
        w = (W - 2) * s.nbytes / whole
        out.append(
            f'<rect class="seg {s.cls}" x="{_fmt(x + 1)}" y="1" width="{_fmt(w)}" height="30"'
            f"{attrs(data_bytes=s.nbytes, data_part=s.label)}>"
            f"<title>{esc(s.label)}: {esc(render.size(s.nbytes))} "
            f"({s.nbytes / whole:.0%})</title></rect>"
        )
        if w > 60:
            out.append(
                f'<text class="seglabel" x="{_fmt(x + 6)}" y="21">{esc(render.size(s.nbytes))}</text>'
            )
        legend.append(
            f'<rect class="seg {s.cls}" x="{lx}" y="42" width="10" height="10"/>'
            f'<text class="legend" x="{lx + 14}" y="51">{esc(s.label)} {esc(render.size(s.nbytes))}</text>'
        )
        lx += 28 + 7 * (len(s.label) + len(render.size(s.nbytes)))
        x += w
    out.append(f'<rect class="frame" x="1" y="1" width="{W - 2}" height="30"/>')
    return _svg(
        60,
        "".join(out) + "".join(legend),
        class_="membar",
        role="img",
        aria_label=caption,
        data_whole_bytes=whole,
    )


def _hue(name: str, warm: bool) -> str:
    h = zlib.crc32(name.encode()) % 40
    return f"fl{h % 8}" if warm else f"fg{h % 4}"


def flame(root: Frame, what: str, *, growth: bool = False, row: int = 18) -> str:
    """An icicle graph (the root at the top, callees below), each frame's
    width its share of root's bytes; frames under half a unit wide are not
    drawn. Each frame is a <g> with its full name and bytes in a <title>."""
    if root.value <= 0:
        return ""
    out: list[str] = []
    scale = W / root.value
    max_depth = 0

    def draw(node: Frame, x: float, depth: int) -> None:
        nonlocal max_depth
        w = node.value * scale
        if w < 0.5:
            return
        max_depth = max(max_depth, depth)
        y = depth * row
        share = node.value / root.value
        cls = "fr " + ("grow" if growth else _hue(node.name, True))
        label = ""
        chars = int((w - 6) / 6.5)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 1] + "…"
            label = f'<text x="{_fmt(x + 3)}" y="{y + row - 5}">{esc(text)}</text>'
        out.append(
            f"<g{attrs(class_=cls, data_function=node.name, data_bytes=node.value)}>"
            f"<title>{esc(node.name)}: {esc(render.size(node.value))} ({share:.1%})</title>"
            f'<rect x="{_fmt(x)}" y="{y}" width="{_fmt(max(w - 0.5, 0.5))}" height="{row - 1}"/>'
            f"{label}</g>"
        )
        cx = x
        for child in sorted(node.children.values(), key=lambda c: -c.value):
            draw(child, cx, depth + 1)
            cx += child.value * scale

    draw(root, 0.0, 0)
    return _svg(
        (max_depth + 1) * row + 2, "".join(out), class_="flame", role="img", aria_label=what
    )


def hbars(rows: Sequence[tuple[str, int, str]]) -> str:
    """(label markup-free, value, annotation) as horizontal bars: top."""
    if not rows:
        return ""
    top = max(v for _, v, _ in rows) or 1
    h = 22
    out = []
    for i, (label, v, note) in enumerate(rows):
        w = (W - 520) * v / top
        y = i * h
        out.append(
            f'<text class="hlabel" x="0" y="{y + 15}">{esc(label[:40])}</text>'
            f'<rect class="hbar" x="300" y="{y + 3}" width="{_fmt(max(w, 1))}" height="{h - 6}"/>'
            f'<text class="tick" x="{_fmt(306 + w)}" y="{y + 15}">{esc(note)}</text>'
        )
    return _svg(len(rows) * h + 4, "".join(out), class_="hbars", role="img", aria_label="top")


def windows(recs: Sequence[event_pb2.PressureRecord]) -> str:
    """Pressure windows along time: each a bar as wide as its window and as
    high as its peak usage against its limit (the dashed line)."""
    if not recs:
        return ""
    start = min(r.start.ToNanoseconds() for r in recs)
    end = max(r.end.ToNanoseconds() for r in recs)
    span = max(end - start, 1)
    h, y0 = 120, 8

    def x(ns: int) -> float:
        return LEFT + (W - LEFT - RIGHT) * (ns - start) / span

    out = [
        f'<line class="limit line" x1="{LEFT}" x2="{W - RIGHT}" y1="{y0}" y2="{y0}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{y0 + 4}" text-anchor="end">limit</text>',
        f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{y0 + h}" y2="{y0 + h}"/>',
    ]
    for r in recs:
        share = min(1.0, r.usage_max_bytes / r.limit_bytes) if r.limit_bytes else 0.0
        x0, x1 = x(r.start.ToNanoseconds()), x(r.end.ToNanoseconds())
        cls = "stall" if "memory_high_stall" in r.reasons else "window"
        out.append(
            f'<rect class="{cls}" x="{_fmt(x0)}" y="{_fmt(y0 + h - h * share)}" '
            f'width="{_fmt(max(x1 - x0 - 1, 2))}" height="{_fmt(h * share)}">'
            f"<title>{esc(r.cgroup)}: peak {esc(render.size(r.usage_max_bytes))} of "
            f"{esc(render.size(r.limit_bytes))}, {r.reclaims} reclaims, "
            f"{esc(','.join(r.reasons))}</title></rect>"
        )
    out.append(
        f'<text class="tick" x="{LEFT}" y="{y0 + h + 14}">{esc(render.at(start / 1e9))}</text>'
        f'<text class="tick" x="{W - RIGHT}" y="{y0 + h + 14}" text-anchor="end">'
        f"{esc(render.at(end / 1e9))}</text>"
    )
    return _svg(
        y0 + h + 20,
        "".join(out),
        class_="windows",
        role="img",
        aria_label="pressure windows",
        data_windows=len(recs),
    )
