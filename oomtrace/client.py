"""The people's side of the collector: history, show, top, watch. Talks
gRPC to the collector and turns its failures into sentences."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime

import grpc

from oomtrace import render, rpc
from oomtrace.records import to_json
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

DEFAULT_COLLECTOR = "127.0.0.1:50051"


class ClientError(Exception):
    """A query failed; the message says why, for a person."""


def _channel(target: str) -> grpc.Channel:
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
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


def parse_when(text: str, now: float | None = None) -> datetime:
    """`1h`, `30m`, `7d` ago, or an RFC 3339 / ISO 8601 time."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if m:
        seconds = (
            int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        )
        return datetime.fromtimestamp(now - seconds, tz=UTC)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ClientError(
            f"{text!r} is neither a duration (1h, 7d) nor a time (2026-11-27T09:00:00Z)"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


_CONSTRAINTS = {
    "memcg": event_pb2.OomEvent.MEMCG,
    "global": event_pb2.OomEvent.GLOBAL,
    "cpuset": event_pb2.OomEvent.CPUSET,
    "memory_policy": event_pb2.OomEvent.MEMORY_POLICY,
}


def add_filter_args(p: argparse.ArgumentParser, *, default_since: str | None) -> None:
    p.add_argument("--since", default=default_since, help="a duration ago (1h, 7d) or a time")
    p.add_argument("--until", help="a duration ago or a time")
    for name in ("node", "namespace", "pod", "container", "image", "comm"):
        p.add_argument(f"--{name}", default="")
    p.add_argument("--constraint", choices=sorted(_CONSTRAINTS), help="kind of OOM")
    p.add_argument("--cgroup", default="", help="cgroup path prefix")


def build_filter(args: argparse.Namespace) -> collector_pb2.EventFilter:
    f = collector_pb2.EventFilter(
        node=args.node,
        namespace=args.namespace,
        pod=args.pod,
        container=args.container,
        image=args.image,
        comm=args.comm,
        cgroup_prefix=args.cgroup,
    )
    if args.since:
        f.since.FromDatetime(parse_when(args.since))
    if args.until:
        f.until.FromDatetime(parse_when(args.until))
    if args.constraint:
        f.constraint = _CONSTRAINTS[args.constraint]
    return f


def history(args: argparse.Namespace) -> int:
    channel = _channel(args.collector)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    events: list[event_pb2.OomEvent] = []
    token = ""
    try:
        while len(events) < args.limit:
            resp = stub.ListEvents(
                collector_pb2.ListEventsRequest(
                    filter=build_filter(args),
                    page_size=min(1000, args.limit - len(events)),
                    page_token=token,
                ),
                timeout=30,
            )
            events += resp.events
            token = resp.next_page_token
            if not token:
                break
    except grpc.RpcError as exc:
        raise _explain(exc, args.collector) from None
    if args.json:
        for ev in events:
            print(to_json(ev))
    elif args.incidents:
        print(render.incidents_table(events, now=time.time()))
    else:
        print(render.history_table(events, now=time.time()))
    return 0


def pressure(args: argparse.Namespace) -> int:
    channel = _channel(args.collector)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    try:
        resp = stub.ListPressure(
            collector_pb2.ListPressureRequest(
                filter=build_filter(args), page_size=min(1000, args.limit)
            ),
            timeout=30,
        )
    except grpc.RpcError as exc:
        raise _explain(exc, args.collector) from None
    if args.json:
        for r in resp.records:
            print(to_json(r))
    else:
        print(render.pressure_table(list(resp.records), now=time.time()))
    return 0


def show(args: argparse.Namespace) -> int:
    channel = _channel(args.collector)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    try:
        ev = stub.GetEvent(collector_pb2.GetEventRequest(id=args.id), timeout=30)
    except grpc.RpcError as exc:
        raise _explain(exc, args.collector) from None
    print(to_json(ev) if args.json else render.report(ev, now=time.time()))
    return 0


_GROUPS = {
    "cgroup": collector_pb2.TopRequest.CGROUP,
    "container": collector_pb2.TopRequest.CONTAINER,
    "pod": collector_pb2.TopRequest.POD,
    "namespace": collector_pb2.TopRequest.NAMESPACE,
    "node": collector_pb2.TopRequest.NODE,
    "image": collector_pb2.TopRequest.IMAGE,
    "comm": collector_pb2.TopRequest.COMM,
}


def top(args: argparse.Namespace) -> int:
    channel = _channel(args.collector)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    try:
        resp = stub.Top(
            collector_pb2.TopRequest(
                group_by=_GROUPS[args.by], filter=build_filter(args), limit=args.limit
            ),
            timeout=30,
        )
    except grpc.RpcError as exc:
        raise _explain(exc, args.collector) from None
    print(render.top_table(resp, args.by, now=time.time()))
    return 0


def watch(args: argparse.Namespace) -> int:
    channel = _channel(args.collector)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    if not args.json:
        print(
            f"watching {args.collector} for OOM kills (Ctrl-C stops)", file=sys.stderr, flush=True
        )
    stream = stub.WatchEvents(collector_pb2.WatchEventsRequest(filter=build_filter(args)))
    try:
        for ev in stream:
            print(to_json(ev) if args.json else render.one_line(ev), flush=True)
    except grpc.RpcError as exc:
        if rpc.status(exc)[0] == grpc.StatusCode.CANCELLED:
            return 0
        raise _explain(exc, args.collector) from None
    except KeyboardInterrupt:
        return 0
    return 0
