"""The gRPC face of the collector: thin servicers over the store and the
query logic, the health service beside them, and create_server()."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from oomtrace import records, tls
from oomtrace.collector.errors import InvalidQueryError, NotFoundError, StoreError
from oomtrace.collector.metrics import CollectorMetrics, QueryTimer
from oomtrace.collector.query import (
    GROUP_COLUMNS,
    MAX_PAGE_SIZE,
    MAX_TOP_LIMIT,
    Filter,
    PageToken,
    columns_of,
    page_size,
    validate,
)
from oomtrace.collector.store import Store
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

log = structlog.get_logger(__name__)

# One record is a few KiB; agents keep theirs under this (oomtrace/records.py).
MAX_MESSAGE_BYTES = records.MAX_MESSAGE_BYTES
# Records stored in one transaction at most (group commit: one fsync for all).
BATCH = 512
# What one stream may hold between the wire and the store, in bytes: a stream
# of 1 MiB records cannot make the collector hold a gigabyte.
MAX_INBOX_BYTES = 16 << 20
_END = object()
# Ids an ambiguous prefix names at most, in its error.
_CANDIDATES = 10


# A record on its way to a watcher, with its size in bytes (computed once per
# record in publish, not once per watcher); None ends the watch.
Entry = tuple[event_pb2.OomEvent, int] | None


class _ByteQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue.Queue of Entries whose size is their bytes (None counts one):
    maxsize bounds a watcher's memory, not its count."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._bytes = 0

    def _qsize(self) -> int:
        return self._bytes

    def _put(self, entry: Entry) -> None:
        self.queue.append(entry)
        self._bytes += 1 if entry is None else entry[1]

    def _get(self) -> Entry:
        entry: Entry = self.queue.popleft()
        self._bytes -= 1 if entry is None else entry[1]
        return entry


# What one watcher may have waiting before it is dropped as too slow.
WATCHER_MAX_BYTES = 16 << 20


class Broadcast:
    """New records to every watcher. A watcher that falls behind by more than
    its queue holds (in bytes) is dropped (told so), never allowed to block
    ingest."""

    def __init__(self, max_bytes: int = WATCHER_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._watchers: set[queue.Queue[Entry]] = set()

    def subscribe(self) -> queue.Queue[Entry]:
        q: queue.Queue[Entry] = _ByteQueue(self.max_bytes)
        with self._lock:
            self._watchers.add(q)
        return q

    def __len__(self) -> int:
        with self._lock:
            return len(self._watchers)

    def unsubscribe(self, q: queue.Queue[Entry]) -> None:
        with self._lock:
            self._watchers.discard(q)

    def publish(self, events: list[event_pb2.OomEvent]) -> None:
        with self._lock:
            watchers = list(self._watchers)
        if not watchers:
            return
        entries = [(ev, max(1, ev.ByteSize())) for ev in events]
        for q in watchers:
            for entry in entries:
                try:
                    q.put_nowait(entry)
                except queue.Full:
                    self.unsubscribe(q)
                    # Wake the watcher so it can end its stream with a reason.
                    while True:
                        try:
                            q.get_nowait()
                        except queue.Empty:
                            break
                    q.put_nowait(None)
                    break


class _Inbox:
    """A stream's requests between its reader and its committer: bounded in
    bytes (one request always fits), and closed by the committer when the
    call ends, so a reader blocked on it is never left behind."""

    def __init__(self, max_bytes: int = MAX_INBOX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: deque[tuple[object, int]] = deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: object, size: int, alive: Callable[[], bool]) -> bool:
        """False when the call ended (or the inbox closed) before there was room."""
        with self._cond:
            while self._items and self._bytes + size > self.max_bytes:
                if self._closed or not alive():
                    return False
                self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> object:
        """The next item; raises queue.Empty after timeout (None: no wait)."""
        with self._cond:
            if not self._items and timeout is not None:
                self._cond.wait(timeout)
            if not self._items:
                raise queue.Empty
            item, size = self._items.popleft()
            self._bytes -= size
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class IngestServicer(collector_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        store: Store,
        broadcast: Broadcast,
        metrics: CollectorMetrics,
        on_stored: Sequence[Callable[[list[event_pb2.OomEvent]], None]] = (),
        health_of_store: Callable[[bool, str], None] = lambda ok, why: None,
        slots: Slots | None = None,
    ) -> None:
        self.slots = slots or Slots(MAX_INGEST_STREAMS, "agent streams")
        self.health_of_store = health_of_store
        self.store = store
        self.broadcast = broadcast
        self.metrics = metrics
        # Told of each record stored for the first time (Kubernetes Events);
        # each must return at once.
        self.on_stored = tuple(on_stored)

    def Ingest(
        self, request_iterator: Iterator[collector_pb2.IngestRequest], context: grpc.ServicerContext
    ) -> Iterator[collector_pb2.IngestResponse]:
        with self.slots.taken(context):
            yield from self._ingest(request_iterator, context)

    def _ingest(
        self, request_iterator: Iterator[collector_pb2.IngestRequest], context: grpc.ServicerContext
    ) -> Iterator[collector_pb2.IngestResponse]:
        # A reader thread takes requests off the stream, so that whatever
        # has arrived while the last batch was committed goes in one commit.
        inbox = _Inbox()
        # On a TLS server: the certificate says which node's records this
        # stream may carry (tls.Identity.node_allowed); None: plaintext, local.
        who = tls.identity_of(context)

        def read() -> None:
            try:
                for req in request_iterator:
                    if not inbox.put(req, req.ByteSize(), context.is_active):
                        return  # the call ended while this stream was over its bytes
            except Exception as exc:  # noqa: BLE001 - any end of the stream ends this call
                # The peer went away, or sent bytes that are no request (grpc
                # then fails the call itself); either way the acks loop ends.
                log.info("ingest.stream_ended", reason=type(exc).__name__)
            finally:
                inbox.put(_END, 0, lambda: True)

        threading.Thread(target=read, daemon=True, name="ingest-reader").start()
        try:
            while True:
                try:
                    first = inbox.get(timeout=1.0)
                except queue.Empty:
                    if not context.is_active():
                        return  # cancelled or failed underneath us; free the worker
                    continue
                if first is _END:
                    return
                batch = [first]
                ended = False
                while len(batch) < BATCH:
                    try:
                        item = inbox.get()
                    except queue.Empty:
                        break
                    if item is _END:
                        ended = True
                        break
                    batch.append(item)
                yield self._store(batch, who)  # type: ignore[arg-type]
                if ended:
                    return
        finally:
            inbox.close()  # a reader still waiting for room gives up

    def _store(
        self, batch: list[collector_pb2.IngestRequest], who: tls.Identity | None = None
    ) -> collector_pb2.IngestResponse:
        good: list[event_pb2.OomEvent] = []
        acks: list[collector_pb2.IngestAck] = []
        pressure: list[event_pb2.PressureRecord] = []
        for req in batch:
            record = req.pressure if req.HasField("pressure") else req.event
            if who is not None and not who.node_allowed(record.node):
                # A forged node: rejected alone, the stream goes on.
                reason = f"node {record.node[:64]!r} is not this client's ({who.subject})"
                log.warning("ingest.forged_node", id=record.id[:128], reason=reason)
                self.metrics.forged.inc()
                acks.append(collector_pb2.IngestAck(id=record.id[:128], rejected=reason))
                continue
            if req.HasField("pressure"):
                if req.pressure.id and req.pressure.HasField("end"):
                    pressure.append(req.pressure)
                else:
                    reason = "pressure record has no id or end"
                    acks.append(collector_pb2.IngestAck(id=req.pressure.id[:128], rejected=reason))
                continue
            reason = validate(req.event)
            if reason:
                log.warning("ingest.rejected", id=req.event.id[:128], reason=reason)
                acks.append(collector_pb2.IngestAck(id=req.event.id[:128], rejected=reason))
            else:
                good.append(req.event)
        rejected = len(acks)
        started = time.perf_counter()
        pressure_stored = self.store.put_pressure(pressure) if pressure else []
        for rec, s in zip(pressure, pressure_stored, strict=True):
            acks.append(collector_pb2.IngestAck(id=rec.id, stored=s))
        try:
            stored = self.store.put_many(good) if good else []
        except StoreError as exc:
            # The store cannot write (disk full, read-only): say so in health,
            # and fail this stream; the agents keep their records and resend.
            self.health_of_store(False, str(exc))
            raise
        self.health_of_store(True, "")
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        new = [ev for ev, s in zip(good, stored, strict=True) if s]
        if new:
            self.broadcast.publish(new)
            for tell in self.on_stored:
                tell(new)
        acks += [
            collector_pb2.IngestAck(id=ev.id, stored=s) for ev, s in zip(good, stored, strict=True)
        ]
        pressure_rejected = sum(1 for req in batch if req.HasField("pressure")) - len(pressure)
        self.metrics.received("kill", len(new), len(good) - len(new), rejected - pressure_rejected)
        new_pressure = sum(pressure_stored)
        self.metrics.received(
            "pressure", new_pressure, len(pressure) - new_pressure, pressure_rejected
        )
        return collector_pb2.IngestResponse(acks=acks)


def _page_args(
    request: collector_pb2.ListEventsRequest | collector_pb2.ListPressureRequest,
    context: grpc.ServicerContext,
) -> tuple[Filter, int, PageToken | None]:
    """A list request's filter, page size and position; a token this
    collector did not issue is INVALID_ARGUMENT."""
    try:
        after = PageToken.decode(request.page_token) if request.page_token else None
    except InvalidQueryError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return Filter.from_proto(request.filter), page_size(request.page_size), after


class HistoryServicer(collector_pb2_grpc.HistoryServiceServicer):
    def __init__(self, store: Store, broadcast: Broadcast, slots: Slots | None = None) -> None:
        self.store = store
        self.broadcast = broadcast
        self.slots = slots or Slots(MAX_WATCHERS, "watchers")

    def ListEvents(
        self, request: collector_pb2.ListEventsRequest, context: grpc.ServicerContext
    ) -> collector_pb2.ListEventsResponse:
        events, token = self.store.list_events(*_page_args(request, context))
        return collector_pb2.ListEventsResponse(
            events=[records.without_profile_files(ev) for ev in events],
            next_page_token=token.encode() if token else "",
        )

    def GetEvent(
        self, request: collector_pb2.GetEventRequest, context: grpc.ServicerContext
    ) -> event_pb2.OomEvent:
        try:
            return self.store.get(request.id)
        except InvalidQueryError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFoundError as exc:
            if not request.id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no id given")
            # history prints 12 characters: any unique prefix will do.
            ids = self.store.ids_with_prefix(request.id, _CANDIDATES + 1)
            if not ids:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            if len(ids) > 1:
                more = " and more" if len(ids) > _CANDIDATES else ""
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"id prefix {request.id!r} is ambiguous: it matches "
                    + ", ".join(ids[:_CANDIDATES])
                    + more,
                )
            try:
                return self.store.get(ids[0])
            except InvalidQueryError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def WatchEvents(
        self, request: collector_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[event_pb2.OomEvent]:
        with self.slots.taken(context):
            yield from self._watch(request, context)

    def _watch(
        self, request: collector_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[event_pb2.OomEvent]:
        f = Filter.from_proto(request.filter)
        # Subscribed before the replay is read, so nothing stored in between
        # is missed; what both see is sent once.
        q = self.broadcast.subscribe()
        context.add_callback(lambda: q.put(None))
        replayed: set[str] = set()
        try:
            if f.since_ns is not None:
                events, _ = self.store.list_events(f, MAX_PAGE_SIZE, None)
                for old in reversed(events):
                    replayed.add(old.id)
                    yield records.without_profile_files(old)
            while context.is_active():
                try:
                    entry = q.get(timeout=1.0)
                except queue.Empty:
                    continue
                if entry is None:
                    if context.is_active():
                        context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "watcher fell too far behind; reconnect and list what was missed",
                        )
                    return
                ev = entry[0]
                if ev.id in replayed:
                    replayed.discard(ev.id)
                    continue
                if f.matches(columns_of(ev)):
                    yield records.without_profile_files(ev)
        finally:
            self.broadcast.unsubscribe(q)

    def ListPressure(
        self, request: collector_pb2.ListPressureRequest, context: grpc.ServicerContext
    ) -> collector_pb2.ListPressureResponse:
        records, token = self.store.list_pressure(*_page_args(request, context))
        return collector_pb2.ListPressureResponse(
            records=records, next_page_token=token.encode() if token else ""
        )

    def Top(
        self, request: collector_pb2.TopRequest, context: grpc.ServicerContext
    ) -> collector_pb2.TopResponse:
        column = GROUP_COLUMNS.get(request.group_by)
        if column is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown group_by {request.group_by}")
        limit = min(request.limit or 10, MAX_TOP_LIMIT)
        rows = self.store.top(column, Filter.from_proto(request.filter), limit)
        resp = collector_pb2.TopResponse()
        for r in rows:
            row = resp.rows.add(key=r.key, kills=r.kills, max_rss_bytes=r.max_rss_bytes)
            row.last_killed_at.FromNanoseconds(r.last_killed_at_ns)
        return resp


class Slots:
    """At most n calls of one kind at a time; one more is refused at once
    with RESOURCE_EXHAUSTED (the agent's exporter and `watch` retry with
    backoff), so long-lived streams cannot take every worker thread."""

    def __init__(self, n: int, what: str) -> None:
        self.n = n
        self.what = what
        self._free = threading.BoundedSemaphore(n)

    @contextlib.contextmanager
    def taken(self, context: grpc.ServicerContext) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.n} {self.what} are open, the most this collector takes; retry later",
            )
        try:
            yield
        finally:
            self._free.release()


# Each stream holds a worker thread for its life (gRPC's sync server): the
# pool is sized for every stream allowed plus QUERY_WORKERS that only unary
# queries can use. Idle threads cost little: a blocked stack.
MAX_INGEST_STREAMS = 512
MAX_WATCHERS = 64
QUERY_WORKERS = 32


def create_server(
    address: str,
    store: Store,
    *,
    max_ingest_streams: int = MAX_INGEST_STREAMS,
    max_watchers: int = MAX_WATCHERS,
    query_workers: int = QUERY_WORKERS,
    metrics: CollectorMetrics | None = None,
    on_stored: Sequence[Callable[[list[event_pb2.OomEvent]], None]] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-ready (not yet started) server bound to address; port 0
    picks a free port, returned. Raises RuntimeError when it cannot bind.
    metrics: counted into, when given (served by the caller).
    credentials: mutual TLS (oomtrace.tls.server_credentials), each method
    then checked against the caller's certificate's roles; None: plaintext,
    which the caller allows on a loopback address or unix socket only."""
    metrics = metrics if metrics is not None else CollectorMetrics()
    interceptors: list[grpc.ServerInterceptor] = [QueryTimer(metrics)]  # type: ignore[type-arg]
    if credentials is not None:
        interceptors.insert(0, tls.Authorizer())
    server = grpc.server(
        futures.ThreadPoolExecutor(
            # Each ingest stream's reader thread is its own, not the pool's.
            max_workers=max_ingest_streams + max_watchers + query_workers,
            thread_name_prefix="grpc",
        ),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 64 * MAX_MESSAGE_BYTES),
        ],
    )
    broadcast = Broadcast()
    health_servicer = health.HealthServicer()
    writable = [True]

    def health_of_store(ok: bool, why: str) -> None:
        """Ingest and the whole server are NOT_SERVING while the store cannot
        write; queries still answer what is stored."""
        if ok == writable[0]:
            return
        writable[0] = ok
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", "oomtrace.v1.IngestService"):
            health_servicer.set(name, status)
        if ok:
            log.info("store.writable_again")
        else:
            log.error("store.unwritable", error=why)

    metrics.watch_state(watchers=lambda: len(broadcast), records=store.count, size=store.size_bytes)
    # Records other collectors on the same database stored, for watchers here.
    store.follow(broadcast.publish)
    collector_pb2_grpc.add_IngestServiceServicer_to_server(
        IngestServicer(
            store,
            broadcast,
            metrics,
            on_stored,
            health_of_store,
            slots=Slots(max_ingest_streams, "agent streams"),
        ),
        server,
    )
    collector_pb2_grpc.add_HistoryServiceServicer_to_server(
        HistoryServicer(store, broadcast, Slots(max_watchers, "watchers")), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", "oomtrace.v1.IngestService", "oomtrace.v1.HistoryService"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port, health_servicer
