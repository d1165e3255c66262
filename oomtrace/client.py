"""The people's side of the collector: the calls history, show, pprof, top,
pressure and watch make. Typed arguments in, records out; printing is the
CLI's (oomtrace/cli/queries.py). gRPC failures become sentences. Imports
the wire contract and oomtrace.records, never the agent or the collector."""

from __future__ import annotations

import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from oomtrace import records, rpc, tls
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

DEFAULT_COLLECTOR = records.DEFAULT_COLLECTOR
# How far back a reconnecting watch asks for again, before the last record it
# saw: records reach the store out of kill order (an agent's spool drains
# after a restart), and ids already shown are skipped.
WATCH_REPLAY_SLACK_S = 60.0


class ClientError(Exception):
    """A query failed, or was asked wrongly; the message says why, for a person."""


@dataclass(frozen=True, slots=True)
class Collector:
    """Where the collector is, and how to reach it."""

    target: str = DEFAULT_COLLECTOR
    tls: tls.ClientTls = field(default_factory=tls.ClientTls)

    def channel(self) -> grpc.Channel:
        try:
            return self.tls.channel(self.target)
        except tls.TlsError as exc:
            raise ClientError(str(exc)) from None


def _channel(c: Collector, timeout_s: float = 5) -> grpc.Channel:
    channel = c.channel()
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise ClientError(
            f"collector unreachable at {c.target} (is `oomtrace collector` running? "
            "--collector or $OOMTRACE_COLLECTOR say where)"
        ) from None
    return channel


def _explain(exc: grpc.RpcError, target: str) -> ClientError:
    code, detail = rpc.status(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ClientError(f"collector unreachable at {target}: {detail}")
    return ClientError(detail or (code.name if code else "the call failed"))


def call(c: Collector, fn: Callable[[collector_pb2_grpc.HistoryServiceStub], Any]) -> Any:
    """fn's answer over one connection to the collector: for a caller that
    makes several queries of one page (the html export), with the same TLS,
    roles and errors explained as every call here."""
    channel = _channel(c)
    try:
        return fn(collector_pb2_grpc.HistoryServiceStub(channel))
    except grpc.RpcError as exc:
        raise _explain(exc, c.target) from None
    finally:
        channel.close()


def check_id(ident: str) -> str:
    """A record id or prefix, checked before connecting."""
    i = ident.strip()
    if not i or not re.fullmatch(r"[0-9A-Za-z_-]+", i):
        raise ValueError(f"{ident!r} is not a record id (history prints them, 12 characters)")
    return i


# -- the calls --------------------------------------------------------------------------------


def list_events(c: Collector, f: collector_pb2.EventFilter, limit: int) -> list[event_pb2.OomEvent]:
    def fetch(stub: collector_pb2_grpc.HistoryServiceStub) -> list[event_pb2.OomEvent]:
        events: list[event_pb2.OomEvent] = []
        token = ""
        while len(events) < limit:
            resp = stub.ListEvents(
                collector_pb2.ListEventsRequest(
                    filter=f, page_size=min(1000, limit - len(events)), page_token=token
                ),
                timeout=30,
            )
            events += resp.events
            token = resp.next_page_token
            if not token:
                break
        return events

    result: list[event_pb2.OomEvent] = call(c, fetch)
    return result


def list_pressure(
    c: Collector, f: collector_pb2.EventFilter, limit: int
) -> list[event_pb2.PressureRecord]:
    req = collector_pb2.ListPressureRequest(filter=f, page_size=min(1000, limit))
    resp = call(c, lambda stub: stub.ListPressure(req, timeout=30))
    return list(resp.records)


def get_event(c: Collector, ident: str) -> event_pb2.OomEvent:
    req = collector_pb2.GetEventRequest(id=ident)
    ev: event_pb2.OomEvent = call(c, lambda stub: stub.GetEvent(req, timeout=30))
    return ev


GROUPS = {
    name.lower(): number
    for name, number in collector_pb2.TopRequest.GroupBy.items()
    if number != collector_pb2.TopRequest.GROUP_BY_UNSPECIFIED
}


def top(
    c: Collector, by: str, f: collector_pb2.EventFilter, limit: int
) -> collector_pb2.TopResponse:
    req = collector_pb2.TopRequest(group_by=GROUPS[by], filter=f, limit=limit)
    resp: collector_pb2.TopResponse = call(c, lambda stub: stub.Top(req, timeout=30))
    return resp


def heap_profile(ev: event_pb2.OomEvent, *, before: bool) -> bytes:
    """The pprof file of a Go victim's heap profile, or why there is none."""
    if not ev.HasField("go"):
        raise ClientError(f"{ev.id} is not the kill of a Go program")
    if before:
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
    return profile.pprof


def watch_events(
    c: Collector,
    base: collector_pb2.EventFilter,
    *,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    sleep: Callable[[float], None] = time.sleep,
    max_backoff_s: float = 10.0,
) -> Iterator[event_pb2.OomEvent]:
    """New records as they are stored; when the collector goes away, says
    so, retries with backoff, and on reconnecting asks again from shortly
    before the last record it saw (or from when it started), yielding each
    record once."""
    started = time.time()
    seen: OrderedDict[str, None] = OrderedDict()
    last_killed_s: float | None = None
    backoff = min_backoff = 0.5
    attempt = 0
    while True:
        f = collector_pb2.EventFilter()
        f.CopyFrom(base)
        if attempt:
            replay_from = (last_killed_s or started) - WATCH_REPLAY_SLACK_S
            if not base.HasField("since") or base.since.ToNanoseconds() < replay_from * 1e9:
                f.since.FromNanoseconds(int(replay_from * 1e9))
        attempt += 1
        channel = c.channel()
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
            if attempt > 1:
                say(f"reconnected to {c.target}")
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
                yield ev
            why = "the collector ended the stream"
        except grpc.FutureTimeoutError:
            why = "unreachable"
        except grpc.RpcError as exc:
            code, detail = rpc.status(exc)
            if code == grpc.StatusCode.CANCELLED:
                return
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise _explain(exc, c.target) from None
            why = detail or code.name
        finally:
            channel.close()
        say(f"collector at {c.target}: {why}; reconnecting in {backoff:.1f} s")
        sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
