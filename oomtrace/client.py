"""The people's side of the collector: history, show, top, pressure, watch.
Each command builds and checks its whole request before it connects, so a
bad flag is reported as a bad flag, not as an unreachable collector; gRPC
failures become sentences. Imports the wire contract and oomtrace.records,
never the agent or the collector."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from oomtrace import records, render, rpc, tls
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

DEFAULT_COLLECTOR = records.DEFAULT_COLLECTOR
OUTPUTS = ("table", "wide", "json", "yaml")
# How far back a reconnecting watch asks for again, before the last record it
# saw: records reach the store out of kill order (an agent's spool drains
# after a restart), and ids already shown are skipped.
WATCH_REPLAY_SLACK_S = 60.0


class ClientError(Exception):
    """A query failed, or was asked wrongly; the message says why, for a person."""


# -- arguments --------------------------------------------------------------------------


def parse_when(text: str, now: float) -> datetime:
    """`1h`, `30m`, `7d`, `2w` ago, or an RFC 3339 / ISO 8601 time (UTC
    unless it names its zone)."""
    try:
        return datetime.fromtimestamp(now - records.parse_duration_s(text), tz=UTC)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ClientError(
            f"{text!r} is neither a duration (1h, 7d) nor a time (2026-11-27T09:00:00Z)"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


CONSTRAINTS = {
    "memcg": event_pb2.OomEvent.MEMCG,
    "global": event_pb2.OomEvent.GLOBAL,
    "cpuset": event_pb2.OomEvent.CPUSET,
    "memory_policy": event_pb2.OomEvent.MEMORY_POLICY,
}
_WHERE_FIELDS = ("node", "namespace", "pod", "container", "image")


def add_filter_args(
    p: argparse.ArgumentParser, *, default_since: str | None, kills: bool = True
) -> None:
    """kills: the filters that only OOM kills have (--comm, --constraint);
    pressure records have neither, so `pressure` does not take them."""
    p.add_argument(
        "--since",
        default=default_since,
        help="from this long ago (30m, 1h, 7d) or this time (2026-11-27T09:00:00Z)",
    )
    p.add_argument("--until", help="up to this long ago, or this time")
    for name in _WHERE_FIELDS:
        p.add_argument(f"--{name}", default="", help=f"only this {name} (exact match)")
    if kills:
        p.add_argument("--comm", default="", help="only victims with this comm (exact match)")
        p.add_argument("--constraint", choices=sorted(CONSTRAINTS), help="only this kind of OOM")
    p.add_argument("--cgroup", default="", help="only cgroups under this path prefix")


def build_filter(args: argparse.Namespace, now: float) -> collector_pb2.EventFilter:
    f = collector_pb2.EventFilter(
        node=args.node,
        namespace=args.namespace,
        pod=args.pod,
        container=args.container,
        image=args.image,
        comm=getattr(args, "comm", ""),
        cgroup_prefix=args.cgroup,
    )
    if args.since:
        f.since.FromDatetime(parse_when(args.since, now))
    if args.until:
        f.until.FromDatetime(parse_when(args.until, now))
    if (
        f.HasField("since")
        and f.HasField("until")
        and f.until.ToNanoseconds() <= f.since.ToNanoseconds()
    ):
        raise ClientError(f"--until {args.until} is not after --since {args.since}")
    if getattr(args, "constraint", None):
        f.constraint = CONSTRAINTS[args.constraint]
    return f


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


# -- talking to the collector -----------------------------------------------------------


def client_tls(args: argparse.Namespace) -> tls.ClientTls:
    return tls.ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.insecure)


def _channel(args: argparse.Namespace, timeout_s: float = 5) -> grpc.Channel:
    target = args.collector
    try:
        channel = client_tls(args).channel(target)
    except tls.TlsError as exc:
        raise ClientError(str(exc)) from None
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise ClientError(
            f"collector unreachable at {target} (is `oomtrace collector` running? "
            "--collector or $OOMTRACE_COLLECTOR say where)"
        ) from None
    return channel


def _explain(exc: grpc.RpcError, target: str) -> ClientError:
    code, detail = rpc.status(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ClientError(f"collector unreachable at {target}: {detail}")
    return ClientError(detail or (code.name if code else "the call failed"))


def _call(
    args: argparse.Namespace, fn: Callable[[collector_pb2_grpc.HistoryServiceStub], Any]
) -> Any:
    target = args.collector
    channel = _channel(args)
    try:
        return fn(collector_pb2_grpc.HistoryServiceStub(channel))
    except grpc.RpcError as exc:
        raise _explain(exc, target) from None
    finally:
        channel.close()


# -- output -----------------------------------------------------------------------------


def output_format(args: argparse.Namespace) -> str:
    """-o, with --json as its old spelling."""
    return "json" if getattr(args, "json", False) else str(args.output)


def _as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def emit_messages(messages: Iterable[Message], fmt: str, *, one: bool = False) -> bool:
    """json: one JSON object a line; yaml: one document (a list, or the one
    message). False when fmt is neither."""
    if fmt == "json":
        for m in messages:
            print(records.to_json(m))
        return True
    if fmt == "yaml":
        items = [_as_dict(m) for m in messages]
        print(yaml.safe_dump(items[0] if one else items, sort_keys=False), end="")
        return True
    return False


# -- commands ---------------------------------------------------------------------------


def history(args: argparse.Namespace) -> int:
    now = time.time()
    f = build_filter(args, now)
    fmt = output_format(args)

    def fetch(stub: collector_pb2_grpc.HistoryServiceStub) -> list[event_pb2.OomEvent]:
        events: list[event_pb2.OomEvent] = []
        token = ""
        while len(events) < args.limit:
            resp = stub.ListEvents(
                collector_pb2.ListEventsRequest(
                    filter=f, page_size=min(1000, args.limit - len(events)), page_token=token
                ),
                timeout=30,
            )
            events += resp.events
            token = resp.next_page_token
            if not token:
                break
        return events

    events = _call(args, fetch)
    if emit_messages(events, fmt):
        return 0
    if args.incidents:
        print(render.incidents_table(events, now=now))
    else:
        print(render.history_table(events, now=now, wide=fmt == "wide"))
    return 0


def pressure(args: argparse.Namespace) -> int:
    now = time.time()
    req = collector_pb2.ListPressureRequest(
        filter=build_filter(args, now), page_size=min(1000, args.limit)
    )
    fmt = output_format(args)
    resp = _call(args, lambda stub: stub.ListPressure(req, timeout=30))
    if not emit_messages(resp.records, fmt):
        print(render.pressure_table(list(resp.records), now=now, wide=fmt == "wide"))
    return 0


def _get_event_request(args: argparse.Namespace) -> collector_pb2.GetEventRequest:
    """The id asked for, checked before connecting."""
    req = collector_pb2.GetEventRequest(id=args.id.strip())
    if not req.id or not re.fullmatch(r"[0-9A-Za-z_-]+", req.id):
        raise ClientError(f"{args.id!r} is not a record id (history prints them, 12 characters)")
    return req


def show(args: argparse.Namespace) -> int:
    req = _get_event_request(args)
    fmt = output_format(args)
    if fmt == "html":  # the ui's post-mortem page as one file (oomtrace/ui/export.py)
        from oomtrace.ui import export

        print(_call(args, lambda stub: export.document(stub, req)))
        return 0
    ev = _call(args, lambda stub: stub.GetEvent(req, timeout=30))
    if not emit_messages([ev], fmt, one=True):
        print(render.report(ev, now=time.time()))
    return 0


def pprof(args: argparse.Namespace, out: Any = None) -> int:
    """A Go victim's heap profile at the kill, as the pprof file go tool pprof reads."""
    req = _get_event_request(args)
    out = out if out is not None else sys.stdout.buffer
    if out.isatty():
        raise ClientError("the profile is binary: redirect it to a file (> heap.pb.gz)")
    ev = _call(args, lambda stub: stub.GetEvent(req, timeout=30))
    if not ev.HasField("go"):
        raise ClientError(f"{ev.id} is not the kill of a Go program")
    if args.before:
        if not ev.go.HasField("heap_profile_before"):
            raise ClientError(
                f"{ev.id} has no profile from before the kill (none was taken: its memory "
                "cgroup never passed the agent's --profile-before-percent at a GC)"
            )
        profile = ev.go.heap_profile_before
    elif ev.go.heap_profile_missing:
        raise ClientError(f"{ev.id} has no heap profile: {ev.go.heap_profile_missing}")
    else:
        profile = ev.go.heap_profile
    if not profile.pprof:
        raise ClientError(f"{ev.id} has no heap profile file (see `oomtrace show {ev.id}`)")
    out.write(profile.pprof)
    out.flush()
    return 0


GROUPS = {
    "cgroup": collector_pb2.TopRequest.CGROUP,
    "container": collector_pb2.TopRequest.CONTAINER,
    "pod": collector_pb2.TopRequest.POD,
    "workload": collector_pb2.TopRequest.WORKLOAD,
    "namespace": collector_pb2.TopRequest.NAMESPACE,
    "node": collector_pb2.TopRequest.NODE,
    "image": collector_pb2.TopRequest.IMAGE,
    "comm": collector_pb2.TopRequest.COMM,
}


def top(args: argparse.Namespace) -> int:
    now = time.time()
    req = collector_pb2.TopRequest(
        group_by=GROUPS[args.by], filter=build_filter(args, now), limit=args.limit
    )
    fmt = output_format(args)
    resp = _call(args, lambda stub: stub.Top(req, timeout=30))
    if not emit_messages(resp.rows, fmt):
        print(render.top_table(resp, args.by, now=now, wide=fmt == "wide"))
    return 0


def watch(
    args: argparse.Namespace,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_backoff_s: float = 10.0,
) -> int:
    """Streams new records; when the collector goes away, says so, retries
    with backoff, and on reconnecting asks again from shortly before the last
    record it saw (or from when it started), showing each record once."""
    started = time.time()
    base = build_filter(args, started)
    fmt = output_format(args)
    seen: OrderedDict[str, None] = OrderedDict()
    last_killed_s: float | None = None
    backoff = min_backoff = 0.5
    attempt = 0
    if fmt != "json":
        print(
            f"watching {args.collector} for OOM kills (Ctrl-C stops)", file=sys.stderr, flush=True
        )
    while True:
        f = collector_pb2.EventFilter()
        f.CopyFrom(base)
        if attempt:
            replay_from = (last_killed_s or started) - WATCH_REPLAY_SLACK_S
            if not base.HasField("since") or base.since.ToNanoseconds() < replay_from * 1e9:
                f.since.FromNanoseconds(int(replay_from * 1e9))
        attempt += 1
        try:
            channel = client_tls(args).channel(args.collector)
        except tls.TlsError as exc:
            raise ClientError(str(exc)) from None
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
            if attempt > 1:
                print(f"reconnected to {args.collector}", file=sys.stderr, flush=True)
            backoff = min_backoff
            stub = collector_pb2_grpc.HistoryServiceStub(channel)
            for ev in stub.WatchEvents(collector_pb2.WatchEventsRequest(filter=f)):
                if ev.id in seen:
                    continue
                seen[ev.id] = None
                if len(seen) > 10000:
                    seen.popitem(last=False)
                killed_s = ev.killed_at.ToNanoseconds() / 1e9
                last_killed_s = max(last_killed_s or killed_s, killed_s)
                print(records.to_json(ev) if fmt == "json" else render.one_line(ev), flush=True)
            why = "the collector ended the stream"
        except grpc.FutureTimeoutError:
            why = "unreachable"
        except grpc.RpcError as exc:
            code, detail = rpc.status(exc)
            if code == grpc.StatusCode.CANCELLED:
                return 0
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise _explain(exc, args.collector) from None
            why = detail or code.name
        except KeyboardInterrupt:
            return 0
        finally:
            channel.close()
        print(
            f"collector at {args.collector}: {why}; reconnecting in {backoff:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        try:
            sleep(backoff)
        except KeyboardInterrupt:
            return 0
        backoff = min(backoff * 2, max_backoff_s)
