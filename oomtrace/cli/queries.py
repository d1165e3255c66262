"""The query commands: history, show, pprof, top, pressure, watch. Each
reads its flags into typed values (a client.Collector, an EventFilter, an
output.Output) and calls oomtrace.client with them; grpc is imported only
when one of them runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from oomtrace.cli import AddCommand, filters, output, times
from oomtrace.cli.parsing import CommandParser, address, client_tls_arguments, positive
from oomtrace.records import DEFAULT_COLLECTOR

# What `top --by` takes: the names of TopRequest.GroupBy, lower case (kept
# here, not read from the wire code, so --help does not import it).
GROUPS = (
    "cgroup",
    "container",
    "pod",
    "namespace",
    "node",
    "image",
    "comm",
    "workload",
    "verdict",
)


def _check_id(text: str) -> str:
    from oomtrace import client

    try:
        return client.check_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _query(add: AddCommand, name: str, help_: str, *examples: str) -> CommandParser:
    q = add(name, help_, *examples)
    q.add_argument(
        "--collector",
        default=os.environ.get("OOMTRACE_COLLECTOR") or DEFAULT_COLLECTOR,
        type=address,
        metavar="HOST:PORT",
        help="the collector to ask ($OOMTRACE_COLLECTOR when set)",
    )
    client_tls_arguments(q)
    return q


def _runs(
    name: str, fn: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from oomtrace import client

        try:
            return fn(args)
        except client.ClientError as exc:
            print(f"oomtrace {name}: {exc}", file=sys.stderr)
            return 1

    return run


def _collector(args: argparse.Namespace) -> Any:
    from oomtrace import client, tls

    return client.Collector(
        args.collector, tls.ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.insecure)
    )


def _when(args: argparse.Namespace) -> filters.When:
    return filters.When(time.time(), times.zone(args.utc))


# -- the commands -----------------------------------------------------------------------------


def history(args: argparse.Namespace) -> int:
    from oomtrace import client, render

    when = _when(args)
    f = filters.build(args, when)
    out = output.from_args(args)
    c = _collector(args)
    events = client.list_events(c, f, args.limit)

    def table(wide: bool) -> str:
        if args.incidents:
            return render.incidents_table(events, now=when.now, tz=when.tz)
        return render.history_table(events, now=when.now, wide=wide, tz=when.tz)

    output.print_list(events, out, table, nothing="no OOM kills match")
    if not args.watch:
        return 0
    # As kubectl get -w: the listing, then each new record as it is stored,
    # in the same columns (and no heading again).
    sys.stdout.flush()
    shown = {ev.id for ev in events}
    base = type(f)()
    base.CopyFrom(f)
    base.since.FromNanoseconds(int((when.now - client.WATCH_REPLAY_SLACK_S) * 1e9))
    first = not events
    for ev in client.watch_events(c, base):
        if ev.id in shown:
            continue
        shown.add(ev.id)

        def row(wide: bool, ev: Any = ev, heading: bool = first and not out.no_headers) -> str:
            text = render.history_table([ev], now=time.time(), wide=wide, tz=when.tz)
            return text if heading else text.split("\n", 1)[1]

        output.print_one(ev, out, row, first=first)
        first = False
    return 0


def watch(args: argparse.Namespace, *, sleep: Callable[[float], None] = time.sleep) -> int:
    from oomtrace import client, render

    when = _when(args)
    f = filters.build(args, when)
    out = output.from_args(args)
    c = _collector(args)
    if out.is_table:
        print(f"watching {c.target} for OOM kills (Ctrl-C stops)", file=sys.stderr, flush=True)
    first = True
    for ev in client.watch_events(c, f, sleep=sleep):

        def line(wide: bool, ev: Any = ev) -> str:
            return render.one_line(ev, when.tz, wide=wide)

        output.print_one(ev, out, line, first=first)
        first = False
    return 0


def show(args: argparse.Namespace) -> int:
    from oomtrace import client, render

    when = _when(args)
    out = output.from_args(args)
    if out.format == "html":  # the ui's post-mortem page as one file (oomtrace/ui/export.py)
        from oomtrace.ui import export

        output.write(export.page(_collector(args), args.id))
        return 0
    ev = client.get_event(_collector(args), args.id)
    output.print_one(ev, out, lambda wide: render.report(ev, now=when.now, tz=when.tz), first=True)
    return 0


def pprof(args: argparse.Namespace) -> int:
    from oomtrace import client

    out = sys.stdout.buffer
    if out.isatty():
        raise client.ClientError("the profile is binary: redirect it to a file (> heap.pb.gz)")
    ev = client.get_event(_collector(args), args.id)
    out.write(client.heap_profile(ev, before=args.before))
    out.flush()
    return 0


def top(args: argparse.Namespace) -> int:
    from oomtrace import client, render

    when = _when(args)
    f = filters.build(args, when)
    out = output.from_args(args)
    resp = client.top(_collector(args), args.by, f, args.limit)
    output.print_list(
        resp.rows,
        out,
        lambda wide: render.top_table(resp, args.by, now=when.now, wide=wide, tz=when.tz),
        nothing="no OOM kills match",
    )
    return 0


def pressure(args: argparse.Namespace) -> int:
    from oomtrace import client, render

    when = _when(args)
    f = filters.build(args, when)
    out = output.from_args(args)
    records = client.list_pressure(_collector(args), f, args.limit)
    output.print_list(
        records,
        out,
        lambda wide: render.pressure_table(records, now=when.now, wide=wide, tz=when.tz),
        nothing="no pressure records match",
    )
    return 0


def register(add: AddCommand) -> None:
    h = _query(
        add,
        "history",
        "OOM kills, newest first",
        "oomtrace history -n shop --since yesterday -o wide",
        "oomtrace history --constraint MEMCG --source kernel --since '2026-12-04 14:00' -o json",
        "oomtrace history -l app.kubernetes.io/name=cart -w   # then each new kill, as it comes",
    )
    filters.add_arguments(h, command=filters.KILLS, default_since="7d")
    h.add_argument("--limit", type=positive, default=50, help="at most this many records")
    output.add_arguments(h)
    h.add_argument(
        "--incidents",
        action="store_true",
        help="one row per OOM-killer invocation (a group kill's victims folded)",
    )
    h.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="after the list, print each new record as the collector stores it (Ctrl-C stops)",
    )
    h.set_defaults(run=_runs("history", history))

    s = _query(
        add,
        "show",
        "the full report of one kill",
        "oomtrace show 3f2a9c1b77e0          # any unique prefix of the id",
        "oomtrace show 3f2a9c1b77e0 -o yaml",
        "oomtrace show 3f2a9c1b77e0 -o jsonpath='{.victim.cmdline}'",
        "oomtrace show 3f2a9c1b77e0 -o html > kill.html   # to attach to a ticket",
    )
    s.add_argument(
        "id", type=_check_id, help="a record id, or any prefix of one that only one record has"
    )
    output.add_arguments(s, own=("html",))
    s.add_argument("--utc", action="store_true", help="print times in UTC, not the local zone")
    s.set_defaults(run=_runs("show", show))

    pp = _query(
        add,
        "pprof",
        "a Go victim's heap profile at the kill, for go tool pprof",
        "oomtrace pprof 3f2a9c1b77e0 > heap.pb.gz && go tool pprof -top heap.pb.gz",
        "oomtrace pprof --before 3f2a9c1b77e0 > before.pb.gz   # then: go tool pprof "
        "-diff_base before.pb.gz heap.pb.gz",
    )
    pp.add_argument(
        "id", type=_check_id, help="a record id, or any prefix of one that only one record has"
    )
    pp.add_argument(
        "--before",
        action="store_true",
        help="the profile taken at a GC before the kill, when the memory cgroup neared its limit",
    )
    pp.set_defaults(run=_runs("pprof", pprof))

    t = _query(
        add,
        "top",
        "who gets OOM-killed most",
        "oomtrace top --by workload --since 30d",
        "oomtrace top --by pod -n shop -o json",
        "oomtrace top --by comm --since today --no-headers",
    )
    t.add_argument(
        "--by",
        default="cgroup",
        choices=GROUPS,
        help="what to count kills by: pod is namespace/pod; workload is the Deployment, "
        "StatefulSet, ... owning the pod, the same across rollouts; verdict is each "
        "kill's first verdict code (where its memory was)",
    )
    filters.add_arguments(t, command=filters.KILLS, default_since="7d")
    t.add_argument("--limit", type=positive, default=10, help="at most this many rows")
    output.add_arguments(t)
    t.set_defaults(run=_runs("top", top))

    pr = _query(
        add,
        "pressure",
        "memory pressure records (10 s windows with pressure), newest first",
        "oomtrace pressure --cgroup /kubepods --since 1h",
        "oomtrace pressure -n shop -o wide",
    )
    filters.add_arguments(pr, command=filters.PRESSURE, default_since="1h")
    pr.add_argument("--limit", type=positive, default=50, help="at most this many records")
    output.add_arguments(pr)
    pr.set_defaults(run=_runs("pressure", pressure))

    w = _query(
        add,
        "watch",
        "OOM kills as the collector records them; reconnects when it restarts",
        "oomtrace watch",
        "oomtrace watch -n shop --since 10m     # what was recorded since, first",
        "oomtrace watch -o json | jq .victim.comm",
    )
    filters.add_arguments(w, command=filters.KILLS, default_since=None)
    output.add_arguments(w)
    w.set_defaults(run=_runs("watch", watch))
