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


def test_control_characters_from_a_node_are_escaped_everywhere() -> None:
    """A newline in a command line would break the report's layout, and an
    escape sequence would reach the operator's terminal."""
    ev = make_event(comm="evil\x1b[2J")
    ev.victim.cmdline = "sh -c 'a\nb'\x1b]0;title\x07 \u202eevil"
    ev.cgroup.path = "/x\ry"
    ev.kernel_report.tasks.add(pid=1, name="t\x1bab", rss_bytes=4096)
    text = render.report(ev, now=ev.killed_at.ToNanoseconds() / 1e9)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\r" not in text
    assert "\u202e" not in text
    assert "command     sh -c 'a\\nb'\\x1b]0;title\\x07 \\u202eevil" in text
    assert "evil\\x1b[2J[" in text
    assert "t\\x1bab" in text
    line = render.history_table([ev], now=0).splitlines()[1]
    assert "\x1b" not in line
    assert "evil\\x1b[2J" in line
    assert render.clean("plain ünïcödé") == "plain ünïcödé"


def test_the_task_table_is_in_bytes_at_the_nodes_page_size() -> None:
    """A 64 KiB-page node's 10 pages are 640 KiB, not 40."""
    ev = make_event()
    ev.kernel_report.tasks.add(
        pid=7, name="big", rss_bytes=10 * 65536, total_vm_bytes=20 * 65536, swap_bytes=65536
    )
    rows = render.task_table(ev.kernel_report)
    big = next(r for r in rows if r.endswith("big"))
    cells = [c.strip() for c in big.strip().split("  ") if c.strip()]
    assert cells == ["7", "0", "640 KiB", "-", "1.2 MiB", "-", "64 KiB", "0", "big"]


def test_a_missed_second_is_a_gap_in_the_timeline() -> None:
    ev = make_event()
    for off, usage in ((-3000, 30), (-2000, 0), (-1000, 60)):
        p = ev.timeline.add(offset_ms=off, usage_bytes=usage << 20, limit_bytes=64 << 20)
        p.missed = usage == 0
    ev.timeline_cgroup = "/a"
    block = render.timeline_block(ev)
    assert "1 second(s) not sampled, left blank" in block[0]
    prefix = "  usage      "
    assert block[1].startswith(prefix)
    spark = block[1][len(prefix) : len(prefix) + 3]
    assert spark[0] in render._BARS
    assert spark[2] in render._BARS
    assert spark[1] == " "  # blank, not the lowest bar a zero would draw
    assert "30.0 MiB → 60.0 MiB" in block[1]


def test_go_settings_say_where_they_came_from() -> None:
    from oomtrace.v1 import event_pb2

    ev = make_event()
    g = ev.go
    g.version, g.state, g.gc_count = "go1.27.3", event_pb2.GoRuntime.CONTROLLER, 149
    g.effective_gogc, g.gogc_source = 40, event_pb2.GoRuntime.PROGRAM
    g.effective_memory_limit_bytes, g.memory_limit_source = 96 << 20, event_pb2.GoRuntime.PROGRAM
    g.effective_gomaxprocs, g.gomaxprocs_source = 2, event_pb2.GoRuntime.DEFAULT
    g.recent_gc_count, g.recent_gc_span_ns = 149, 1_300_000_000
    g.lifetime_ns = 1_300_000_000
    text = "\n".join(render.go_lines(g))
    assert "GOGC 40 (set by the program), memory limit 96.0 MiB (set by the program)" in text
    assert "GOMAXPROCS 2 (default)" in text
    assert "149 cycles; 149 of them in its 1.3 s of life" in text


def test_show_keeps_the_pprof_files_figures_apart_from_what_came_since_the_last_gc() -> None:
    """go tool pprof -top of `oomtrace pprof` shows the published cycles
    only: show's first figure per site is that one; the bytes allocated
    since the last GC are marked as not in the file."""
    from oomtrace.v1 import event_pb2

    go = event_pb2.GoRuntime()
    hp = go.heap_profile
    hp.pprof, hp.sample_rate, hp.buckets = b"x", 524288, 3
    hp.inuse_bytes, hp.since_gc_bytes = 14 << 20, 13 << 20
    hp.top.add(
        function="main.leakAlpha",
        file="main.go",
        line=40,
        inuse_bytes=14 << 20,
        since_gc_bytes=13 << 20,
    )
    text = "\n".join(render.heap_profile_lines(go, "6b001111"))
    assert "14.0 MiB 100%  main.leakAlpha (main.go:40)  +13.0 MiB since GC" in text, text
    assert "13.0 MiB more allocated since that GC" in text
    assert "not in the pprof file" in text
    assert "`oomtrace pprof 6b001111 > heap.pb.gz`" in text
