"""What people read: tables, folded incidents, the report."""

from __future__ import annotations

from oomtrace import render
from tests.unit.events import BASE_NS, make_event


def test_group_kill_folds_into_one_incident_row() -> None:
    a, b, c = make_event(), make_event(), make_event()
    a.incident_id = b.incident_id = a.id
    c.incident_id = c.id
    folded = render.fold_incidents([a, b, c])
    assert [(ev.id, n) for ev, n in folded] == [(a.id, 2), (c.id, 1)]
    table = render.incidents_table([a, b, c], now=BASE_NS / 1e9 + 100)
    assert "+1 more" in table.splitlines()[1]
    assert len(table.splitlines()) == 3


def test_history_row_shows_rss_against_the_limit_hit() -> None:
    ev = make_event(namespace="shop", pod="cart-1", container="cart", rss_mib=60)
    line = render.history_table([ev], now=ev.killed_at.ToNanoseconds() / 1e9 + 90).splitlines()[1]
    assert "shop/cart-1/cart" in line
    assert "65.0 MiB / 64.0 MiB" in line
    assert "(1m ago)" in line


def test_report_names_what_is_not_known() -> None:
    ev = make_event()
    ev.missing.append("victim.cmdline: the victim exited before /proc could be read")
    text = render.report(ev, now=ev.killed_at.ToNanoseconds() / 1e9)
    assert "not known" in text
    assert "victim.cmdline" in text
    assert "limit hit" in text
