"""HTML and SVG text, escaped: every string that came from a record (names,
command lines, kernel text) is data from another machine and goes through
esc(), which also escapes control and bidi characters as `show` does. Pages
are strings built from these pieces; no template engine."""

from __future__ import annotations

import html
from collections.abc import Iterable

from oomtrace import render


def esc(value: object) -> str:
    """Text for an element's content or a quoted attribute."""
    return html.escape(render.clean(str(value)), quote=True)


def esc_lines(text: str) -> str:
    """Multi-line text (the kernel's report) for a <pre>: each line escaped,
    its line breaks kept."""
    return "\n".join(esc(line) for line in text.split("\n"))


def attrs(**kw: object) -> str:
    """key="value" pairs, escaped; None and False left out; a trailing _ in
    a name (class_) dropped, other _ become -."""
    out = []
    for k, v in kw.items():
        if v is None or v is False:
            continue
        name = k.rstrip("_").replace("_", "-")
        out.append(f' {name}="{esc(v)}"')
    return "".join(out)


def tag(element: str, body: str = "", /, **kw: object) -> str:
    """body is markup already (escape text with esc() first)."""
    return f"<{element}{attrs(**kw)}>{body}</{element}>"


def table(head: Iterable[str], rows: Iterable[Iterable[str]], **kw: object) -> str:
    """head: plain text; rows: cells of markup."""
    th = "".join(tag("th", esc(h)) for h in head)
    body = "".join("<tr>" + "".join(tag("td", c) for c in r) + "</tr>" for r in rows)
    return tag("table", f"<thead><tr>{th}</tr></thead><tbody>{body}</tbody>", **kw)


def dl(items: Iterable[tuple[str, str]]) -> str:
    """(term, markup) pairs; terms are plain text."""
    return tag("dl", "".join(tag("dt", esc(k)) + tag("dd", v) for k, v in items), class_="facts")


def size(n: int) -> str:
    return esc(render.size(n))
