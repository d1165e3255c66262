"""The gRPC face of the collector, on gRPC's asyncio server: thin servicers
over the ingest rules (oomtrace/collector/ingest.py) and the query logic,
the health service beside them, and create_server().

No thread per stream: every call is a coroutine on one event loop, in one
thread. An idle agent stream costs a few Python objects and its HTTP/2
state, so one collector holds tens of thousands of agents. What blocks runs
off the loop: records go to the one writer thread (ingest.Writer), queries
to a small thread pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oomtrace import records, tls
from oomtrace.collector.errors import InvalidQueryError, NotFoundError, StoreError
from oomtrace.collector.ingest import BATCH, IngestRules, Writer
from oomtrace.collector.metrics import CollectorMetrics, QueryTimer
from oomtrace.collector.query import (
    GROUP_COLUMNS,
    MAX_PAGE_SIZE,
    MAX_TOP_LIMIT,
    Filter,
    PageToken,
    columns_of,
    page_size,
)
from oomtrace.collector.store import Store
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

log = structlog.get_logger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

# One record is a few KiB; agents keep theirs under this (oomtrace/records.py).
MAX_MESSAGE_BYTES = records.MAX_MESSAGE_BYTES
# What one stream may hold between the wire and the store, in bytes (one
# request always fits): one agent cannot take the whole ingest budget.
MAX_INBOX_BYTES = 4 << 20
# What all streams together may hold received and not yet stored. Past it
# streams stop reading: HTTP/2 flow control holds the agents back and their
# records wait in their spools (a storm is paced, not buffered here).
MAX_INGEST_BYTES = 256 << 20
# Agent streams open at once at most; one more is refused at once with
# RESOURCE_EXHAUSTED (the exporter retries with backoff, elsewhere).
MAX_INGEST_STREAMS = 20_000
MAX_WATCHERS = 256
# Threads that answer queries (the store's reads block).
QUERY_WORKERS = 8
# A connection is closed after this age (gRPC adds +-10% jitter), its streams
# given the grace to finish: agents then reconnect, and spread over the
# collectors there are now (added or restarted ones too).
MAX_CONNECTION_AGE_S = 30 * 60
MAX_CONNECTION_AGE_GRACE_S = 30
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
    ingest. Published from any thread (the store's writer, another
    collector's records); each watcher's wake() is called after its puts."""

    def __init__(self, max_bytes: int = WATCHER_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._watchers: dict[queue.Queue[Entry], Callable[[], None]] = {}

    def subscribe(self, wake: Callable[[], None] = lambda: None) -> queue.Queue[Entry]:
        q: queue.Queue[Entry] = _ByteQueue(self.max_bytes)
        with self._lock:
            self._watchers[q] = wake
        return q

    def __len__(self) -> int:
        with self._lock:
            return len(self._watchers)

    def unsubscribe(self, q: queue.Queue[Entry]) -> None:
        with self._lock:
            self._watchers.pop(q, None)

    def publish(self, events: list[event_pb2.OomEvent]) -> None:
        with self._lock:
            watchers = list(self._watchers.items())
        if not watchers:
            return
        entries = [(ev, max(1, ev.ByteSize())) for ev in events]
        for q, wake in watchers:
            for entry in entries:
                try:
                    q.put_nowait(entry)
                except queue.Full:
                    self.unsubscribe(q)
                    # Emptied, so that the watcher reads its end at once.
                    while True:
                        try:
                            q.get_nowait()
                        except queue.Empty:
                            break
                    q.put_nowait(None)
                    break
            wake()


class _Changed:
    """Wakes coroutines waiting for a change they re-check (one loop)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._event.clear()
            await self._event.wait()

    def tell(self) -> None:
        self._event.set()


class IngestBudget:
    """Bytes received and not yet stored, over all streams (one loop):
    take() waits while more would pass max_bytes (one request always fits).
    Waiters are served in order, and only those that fit are woken: in a
    storm a thousand streams wait here, and waking them all at every commit
    would keep the loop from answering queries."""

    def __init__(self, max_bytes: int = MAX_INGEST_BYTES) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return not self.used or self.used + n <= self.max_bytes

    async def take(self, n: int) -> None:
        if not self._waiting and self._fits(n):
            self.used += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted as it was cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove((n, fut))
            raise

    def give(self, n: int) -> None:
        self.used -= n
        while self._waiting:
            want, fut = self._waiting[0]
            if fut.done():
                self._waiting.popleft()
                continue
            if not self._fits(want):
                break
            self._waiting.popleft()
            self.used += want
            fut.set_result(None)


class Inbox:
    """A stream's requests between its reader and its committer (one loop),
    bounded in bytes; one request always fits."""

    def __init__(self, max_bytes: int = MAX_INBOX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.ended = False
        self._items: deque[tuple[collector_pb2.IngestRequest, int]] = deque()
        self._changed = _Changed()

    async def put(self, item: collector_pb2.IngestRequest, size: int) -> None:
        await self._changed.until(lambda: not self._items or self.bytes + size <= self.max_bytes)
        self._items.append((item, size))
        self.bytes += size
        self._changed.tell()

    def end(self) -> None:
        self.ended = True
        self._changed.tell()

    async def take(self, n: int) -> tuple[list[collector_pb2.IngestRequest], int]:
        """Up to n requests, waiting for the first; none once ended and empty.
        Also their bytes."""
        await self._changed.until(lambda: bool(self._items) or self.ended)
        batch: list[collector_pb2.IngestRequest] = []
        size = 0
        while self._items and len(batch) < n:
            item, s = self._items.popleft()
            batch.append(item)
            size += s
        self.bytes -= size
        self._changed.tell()
        return batch, size


class Slots:
    """At most n calls of one kind at a time (one loop); one more is refused
    at once with RESOURCE_EXHAUSTED (the agent's exporter and `watch` retry
    with backoff)."""

    def __init__(self, n: int, what: str) -> None:
        self.n = n
        self.what = what
        self.used = 0

    async def take(self, context: Context) -> None:
        if self.used >= self.n:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.n} {self.what} are open, the most this collector takes; retry later",
            )
        self.used += 1

    def give(self) -> None:
        self.used -= 1


class IngestServicer(collector_pb2_grpc.IngestServiceServicer):
    def __init__(self, writer: Writer, slots: Slots, budget: IngestBudget | None = None) -> None:
        self.writer = writer
        self.slots = slots
        self.budget = budget or IngestBudget()

    async def Ingest(
        self, request_iterator: AsyncIterator[collector_pb2.IngestRequest], context: Context
    ) -> AsyncIterator[collector_pb2.IngestResponse]:
        await self.slots.take(context)
        try:
            async for resp in self._ingest(request_iterator, context):
                yield resp
        finally:
            self.slots.give()

    async def _ingest(
        self, request_iterator: AsyncIterator[collector_pb2.IngestRequest], context: Context
    ) -> AsyncIterator[collector_pb2.IngestResponse]:
        # On a TLS server: the certificate says which node's records this
        # stream may carry (tls.Identity.node_allowed); None: plaintext, local.
        who = tls.identity_of(context)
        inbox = Inbox()
        held = [0]  # budget bytes this stream holds, given back however it ends
        broken: list[str] = []  # why the stream broke, when it did

        async def read() -> None:
            # Whatever arrives while the last batch is stored goes in the next.
            try:
                async for req in request_iterator:
                    size = req.ByteSize()
                    await self.budget.take(size)
                    held[0] += size
                    await inbox.put(req, size)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any end of the stream ends this call
                # Bytes that are no request (what came before them is still
                # stored and acknowledged), or the peer went away.
                log.info("ingest.stream_ended", reason=type(exc).__name__)
                broken.append(f"the stream broke: {type(exc).__name__}")
            finally:
                inbox.end()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                batch, size = await inbox.take(BATCH)
                if not batch:
                    if broken:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, broken[0])
                    return
                try:
                    resp = await asyncio.wrap_future(self.writer.submit(batch, who, size))
                except StoreError as exc:
                    # The store cannot write (disk full, read-only; health says
                    # so): the agent keeps its records and resends them.
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                finally:
                    held[0] -= size
                    self.budget.give(size)
                yield resp
        finally:
            reader.cancel()
            self.budget.give(held[0])


class HistoryServicer(collector_pb2_grpc.HistoryServiceServicer):
    def __init__(
        self,
        store: Store,
        broadcast: Broadcast,
        slots: Slots,
        pool: concurrent.futures.Executor,
    ) -> None:
        self.store = store
        self.broadcast = broadcast
        self.slots = slots
        self.pool = pool

    async def _off(self, context: Context, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a query thread; the store's errors as status codes."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, functools.partial(fn, *args))
        except InvalidQueryError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def ListEvents(
        self, request: collector_pb2.ListEventsRequest, context: Context
    ) -> collector_pb2.ListEventsResponse:
        return await self._off(context, _list_events, self.store, request)

    async def GetEvent(
        self, request: collector_pb2.GetEventRequest, context: Context
    ) -> event_pb2.OomEvent:
        return await self._off(context, get_event, self.store, request.id)

    async def ListPressure(
        self, request: collector_pb2.ListPressureRequest, context: Context
    ) -> collector_pb2.ListPressureResponse:
        return await self._off(context, _list_pressure, self.store, request)

    async def Top(
        self, request: collector_pb2.TopRequest, context: Context
    ) -> collector_pb2.TopResponse:
        return await self._off(context, _top, self.store, request)

    async def WatchEvents(
        self, request: collector_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[event_pb2.OomEvent]:
        await self.slots.take(context)
        try:
            async for ev in self._watch(request, context):
                yield ev
        finally:
            self.slots.give()

    async def _watch(
        self, request: collector_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[event_pb2.OomEvent]:
        f = Filter.from_proto(request.filter)
        loop = asyncio.get_running_loop()
        changed = _Changed()

        def wake() -> None:
            # From the thread that published; the loop may be gone at exit.
            with _suppress_closed_loop():
                loop.call_soon_threadsafe(changed.tell)

        # Subscribed before the replay is read, so nothing stored in between
        # is missed; what both see is sent once.
        q = self.broadcast.subscribe(wake)
        replayed: set[str] = set()
        try:
            if f.since_ns is not None:
                events, _ = await self._off(context, self.store.list_events, f, MAX_PAGE_SIZE, None)
                for old in reversed(events):
                    replayed.add(old.id)
                    yield records.without_profile_files(old)
            while True:
                await changed.until(lambda: not q.empty())
                entry = q.get_nowait()
                if entry is None:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "watcher fell too far behind; reconnect and list what was missed",
                    )
                ev = entry[0]
                if ev.id in replayed:
                    replayed.discard(ev.id)
                    continue
                if f.matches(columns_of(ev)):
                    yield records.without_profile_files(ev)
        finally:
            self.broadcast.unsubscribe(q)


class _suppress_closed_loop:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is RuntimeError


# -- the queries, free of gRPC: a request in, a response out ------------------------


def _page_args(
    request: collector_pb2.ListEventsRequest | collector_pb2.ListPressureRequest,
) -> tuple[Filter, int, PageToken | None]:
    """A list request's filter, page size and position; a token this
    collector did not issue is an InvalidQueryError."""
    after = PageToken.decode(request.page_token) if request.page_token else None
    return Filter.from_proto(request.filter), page_size(request.page_size), after


def _list_events(
    store: Store, request: collector_pb2.ListEventsRequest
) -> collector_pb2.ListEventsResponse:
    events, token = store.list_events(*_page_args(request))
    return collector_pb2.ListEventsResponse(
        events=[records.without_profile_files(ev) for ev in events],
        next_page_token=token.encode() if token else "",
    )


def _list_pressure(
    store: Store, request: collector_pb2.ListPressureRequest
) -> collector_pb2.ListPressureResponse:
    found, token = store.list_pressure(*_page_args(request))
    return collector_pb2.ListPressureResponse(
        records=found, next_page_token=token.encode() if token else ""
    )


def _top(store: Store, request: collector_pb2.TopRequest) -> collector_pb2.TopResponse:
    column = GROUP_COLUMNS.get(request.group_by)
    if column is None:
        raise InvalidQueryError(f"unknown group_by {request.group_by}")
    limit = min(request.limit or 10, MAX_TOP_LIMIT)
    rows = store.top(column, Filter.from_proto(request.filter), limit)
    resp = collector_pb2.TopResponse()
    for r in rows:
        row = resp.rows.add(key=r.key, kills=r.kills, max_rss_bytes=r.max_rss_bytes)
        row.last_killed_at.FromNanoseconds(r.last_killed_at_ns)
    return resp


def get_event(store: Store, event_id: str) -> event_pb2.OomEvent:
    """The record with this id or with this unique id prefix (history prints
    12 characters); NotFoundError, or InvalidQueryError for no id or an
    ambiguous prefix."""
    try:
        return store.get(event_id)
    except NotFoundError:
        if not event_id:
            raise InvalidQueryError("no id given") from None
        ids = store.ids_with_prefix(event_id, _CANDIDATES + 1)
        if not ids:
            raise
        if len(ids) > 1:
            more = " and more" if len(ids) > _CANDIDATES else ""
            raise InvalidQueryError(
                f"id prefix {event_id!r} is ambiguous: it matches "
                + ", ".join(ids[:_CANDIDATES])
                + more
            ) from None
        return store.get(ids[0])


# -- health ---------------------------------------------------------------------------


class Health:
    """Serving status by service name, set and read from any thread (the
    store's writer sets it; /healthz reads it); served by _HealthService."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {}
        self._listeners: set[Callable[[], None]] = set()
        self._shutting_down = False

    def set(
        self, name: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        with self._lock:
            if self._shutting_down:
                return
            self._status[name] = status
            listeners = list(self._listeners)
        for tell in listeners:
            tell()

    def status(self, name: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType | None:
        with self._lock:
            return self._status.get(name)

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: object = None
    ) -> health_pb2.HealthCheckResponse:
        """In-process, as grpc_health's servicer: an unknown name is SERVICE_UNKNOWN."""
        status = self.status(request.service)
        if status is None:
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        return health_pb2.HealthCheckResponse(status=status)

    def enter_graceful_shutdown(self) -> None:
        """Everything NOT_SERVING from now on, whatever is set later."""
        with self._lock:
            names = list(self._status)
        for name in names:
            self.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        with self._lock:
            self._shutting_down = True

    def listen(self, tell: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.add(tell)

    def unlisten(self, tell: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.discard(tell)


class _HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 over a Health, on the event loop."""

    def __init__(self, health: Health) -> None:
        self.health = health

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self.health.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        loop = asyncio.get_running_loop()
        changed = _Changed()
        version = [0]

        def tell() -> None:
            def bump() -> None:
                version[0] += 1
                changed.tell()

            with _suppress_closed_loop():
                loop.call_soon_threadsafe(bump)

        self.health.listen(tell)
        try:
            last = None
            while True:
                seen = version[0]

                def moved(seen: int = seen) -> bool:
                    return version[0] != seen

                status = self.health.status(request.service)
                if status is None:
                    status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
                await changed.until(moved)
        finally:
            self.health.unlisten(tell)


# -- the server -----------------------------------------------------------------------


class CollectorServer:
    """The asyncio server on its own event loop thread, started and stopped
    from any thread like gRPC's synchronous server (start(), stop(grace)
    returning an event to wait on)."""

    def __init__(self, build: Callable[[], Awaitable[tuple[grpc.aio.Server, int]]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="collector-loop"
        )
        self._thread.start()
        self._closers: list[Callable[[], None]] = []
        try:
            self._server, self.port = self.call(build())
        except BaseException:
            self._end_loop()
            raise
        self._stopped = threading.Event()
        self._started = False

    def call(self, coro: Awaitable[T]) -> T:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(_awaited(coro), self._loop).result()

    def on_stop(self, close: Callable[[], None]) -> None:
        """Called (in order) after the server stopped: the writer, the pool."""
        self._closers.append(close)

    def start(self) -> None:
        self.call(self._server.start())
        self._started = True

    def stop(self, grace: float | None) -> threading.Event:
        """Refuses new calls, lets the open ones finish for grace seconds,
        then ends them; the event is set once everything is closed."""
        if self._stopped.is_set() or not self._loop.is_running():
            return self._stopped

        def finish(_: object) -> None:
            for close in self._closers:
                close()
            self._end_loop()
            self._stopped.set()

        async def stop() -> None:
            if not self._started:
                # A server never started keeps its bound port until it is
                # started and stopped (grpc.aio): give the port back.
                await self._server.start()
            await self._server.stop(grace)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).add_done_callback(finish)
        return self._stopped

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro


def create_server(
    address: str,
    store: Store,
    *,
    max_ingest_streams: int = MAX_INGEST_STREAMS,
    max_watchers: int = MAX_WATCHERS,
    query_workers: int = QUERY_WORKERS,
    max_connection_age_s: float = MAX_CONNECTION_AGE_S,
    max_connection_age_grace_s: float = MAX_CONNECTION_AGE_GRACE_S,
    metrics: CollectorMetrics | None = None,
    on_stored: Sequence[Callable[[list[event_pb2.OomEvent]], None]] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[CollectorServer, int, Health]:
    """A server bound to address, not yet started; port 0 picks a free port,
    returned. Raises RuntimeError when it cannot bind (the address in use:
    port reuse is off, so a second collector cannot silently share a port).
    metrics: counted into, when given (served by the caller).
    credentials: mutual TLS (oomtrace.tls.server_credentials), each method
    then checked against the caller's certificate's roles; None: plaintext,
    which the caller allows on a loopback address or unix socket only."""
    metrics = metrics if metrics is not None else CollectorMetrics()
    broadcast = Broadcast()
    health = Health()
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
            health.set(name, status)
        if ok:
            log.info("store.writable_again")
        else:
            log.error("store.unwritable", error=why)

    writer = Writer(IngestRules(store, metrics, broadcast.publish, on_stored, health_of_store))
    pool = concurrent.futures.ThreadPoolExecutor(query_workers, thread_name_prefix="query")
    ingest_slots = Slots(max_ingest_streams, "agent streams")
    budget = IngestBudget()
    metrics.watch_state(
        watchers=lambda: len(broadcast),
        records=store.count,
        size=store.size_bytes,
        streams=lambda: ingest_slots.used,
        queued=lambda: budget.used,
    )
    # Records other collectors on the same database stored, for watchers here.
    store.follow(broadcast.publish)
    for name in ("", "oomtrace.v1.IngestService", "oomtrace.v1.HistoryService"):
        health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def build() -> tuple[grpc.aio.Server, int]:
        interceptors: list[tls.AioServerInterceptor] = [QueryTimer(metrics)]
        if credentials is not None:
            interceptors.insert(0, tls.Authorizer())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", 64 * MAX_MESSAGE_BYTES),
                # A second collector on a port in use must fail, not share it.
                ("grpc.so_reuseport", 0),
                ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(max_connection_age_grace_s * 1000)),
                # Above the default 100 streams per connection: a connection
                # carries one agent's stream, a few CLI calls at most, but a
                # load generator may multiplex many.
                ("grpc.max_concurrent_streams", 1000),
            ],
            maximum_concurrent_rpcs=max_ingest_streams + max_watchers + 1000,
        )
        collector_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(writer, ingest_slots, budget), server
        )
        collector_pb2_grpc.add_HistoryServiceServicer_to_server(
            HistoryServicer(store, broadcast, Slots(max_watchers, "watchers"), pool), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(_HealthService(health), server)
        try:
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        wanted = address.rsplit(":", 1)[-1]
        if port == 0 or (wanted.isdigit() and int(wanted) not in (0, port)):
            raise RuntimeError(
                f"cannot listen on {address}: the address is in use (another collector?) "
                "or not this machine's"
            )
        return server, port

    try:
        server = CollectorServer(build)
    except BaseException:
        writer.close()
        pool.shutdown(wait=False)
        raise
    server.on_stop(writer.close)
    server.on_stop(lambda: pool.shutdown(wait=False))
    return server, server.port, health
