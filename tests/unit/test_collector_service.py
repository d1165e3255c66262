"""The collector's gRPC services in-process on a free port: ingest acks,
history queries, watch, health, and bad input that must not hurt it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oomtrace import rpc
from oomtrace.collector.service import MAX_MESSAGE_BYTES, create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.collector.store import Store
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.unit.events import make_event


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Store]]:
    """The service on each backend (a real PostgreSQL: tests/postgres_server.py)."""
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "c.db")
    else:
        from oomtrace.collector.postgres import PostgresStore

        store = PostgresStore(request.getfixturevalue("postgres").database())
    srv, port, _health = create_server("127.0.0.1:0", store)
    srv.start()
    yield f"127.0.0.1:{port}", store
    # Bounded, as in collector/main.py (grpc/grpc#6891).
    srv.stop(grace=0.1).wait(timeout=5)
    store.close()


@pytest.fixture
def channel(server: tuple[str, Store]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[0]) as ch:
        yield ch


def ingest(
    channel: grpc.Channel, events: list[event_pb2.OomEvent]
) -> list[collector_pb2.IngestAck]:
    stub = collector_pb2_grpc.IngestServiceStub(channel)
    responses = stub.Ingest(
        iter([collector_pb2.IngestRequest(event=e) for e in events]), timeout=10
    )
    return [ack for resp in responses for ack in resp.acks]


def test_each_record_is_acked_after_it_is_stored_and_resends_are_not_stored_twice(
    server: tuple[str, Store], channel: grpc.Channel
) -> None:
    evs = [make_event() for _ in range(20)]
    acks = ingest(channel, evs)
    assert [a.id for a in acks] == [e.id for e in evs]
    assert all(a.stored for a in acks)
    assert server[1].count() == 20
    again = ingest(channel, evs[:5])
    assert [a.stored for a in again] == [False] * 5
    assert server[1].count() == 20


def test_records_that_can_never_be_stored_are_rejected_with_a_reason(
    server: tuple[str, Store], channel: grpc.Channel
) -> None:
    no_id = make_event()
    no_id.id = ""
    no_time = make_event()
    no_time.ClearField("killed_at")
    good = make_event()
    acks = ingest(channel, [no_id, no_time, good])
    by_reason = sorted(a.rejected for a in acks)
    assert by_reason == ["", "record has no id", "record has no killed_at"]
    assert server[1].count() == 1


def test_list_get_and_pages(channel: grpc.Channel) -> None:
    evs = [make_event(namespace="shop" if i % 2 else "infra") for i in range(9)]
    ingest(channel, evs)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    shop = [e.id for e in evs if e.pod.namespace == "shop"][::-1]
    got: list[str] = []
    token = ""
    while True:
        resp = stub.ListEvents(
            collector_pb2.ListEventsRequest(
                filter=collector_pb2.EventFilter(namespace="shop"), page_size=3, page_token=token
            )
        )
        got += [e.id for e in resp.events]
        token = resp.next_page_token
        if not token:
            break
    assert got == shop
    assert stub.GetEvent(collector_pb2.GetEventRequest(id=evs[3].id)) == evs[3]


def test_not_found_and_bad_page_token_are_status_codes(channel: grpc.Channel) -> None:
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetEvent(collector_pb2.GetEventRequest(id="nope"))
    assert rpc.status(missing.value) == (grpc.StatusCode.NOT_FOUND, "no record with id 'nope'")
    with pytest.raises(grpc.RpcError) as bad:
        stub.ListEvents(collector_pb2.ListEventsRequest(page_token="%%%"))
    assert rpc.status(bad.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_top_groups_pods_by_namespace_and_pod(channel: grpc.Channel) -> None:
    """The same pod name in two namespaces is two pods."""
    ingest(
        channel,
        [
            make_event(namespace="shop", pod="a"),
            make_event(namespace="shop", pod="a"),
            make_event(namespace="infra", pod="a"),
        ],
    )
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    resp = stub.Top(collector_pb2.TopRequest(group_by=collector_pb2.TopRequest.POD))
    assert [(r.key, r.kills) for r in resp.rows] == [("shop/a", 2), ("infra/a", 1)]


def test_top_by_workload_folds_the_pods_of_every_rollout(channel: grpc.Channel) -> None:
    pods = ["cart-7d9f8b6c5-x2x4q", "cart-7d9f8b6c5-bq7zk", "cart-5c7b9d8f4-mm2kp", "db-0"]
    ingest(channel, [make_event(namespace="shop", pod=p) for p in pods])
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    resp = stub.Top(collector_pb2.TopRequest(group_by=collector_pb2.TopRequest.WORKLOAD))
    assert [(r.key, r.kills) for r in resp.rows] == [
        ("shop/Deployment/cart", 3),
        ("shop/StatefulSet/db", 1),
    ]


def test_get_takes_any_unique_id_prefix(channel: grpc.Channel) -> None:
    a = make_event(event_id="ab12" + "0" * 28)
    b = make_event(event_id="ab34" + "0" * 28)
    ingest(channel, [a, b])
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    assert stub.GetEvent(collector_pb2.GetEventRequest(id="ab1")) == a
    assert stub.GetEvent(collector_pb2.GetEventRequest(id=b.id)) == b
    with pytest.raises(grpc.RpcError) as ambiguous:
        stub.GetEvent(collector_pb2.GetEventRequest(id="ab"))
    code, detail = rpc.status(ambiguous.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == f"id prefix 'ab' is ambiguous: it matches {a.id}, {b.id}"
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetEvent(collector_pb2.GetEventRequest(id="ff"))
    assert rpc.status(missing.value)[0] == grpc.StatusCode.NOT_FOUND


def test_watch_replays_since_then_streams_new_records_each_once(channel: grpc.Channel) -> None:
    """With since, what was stored from then on comes first; the stream was
    subscribed before that was read, so the first replayed record also shows
    the watch is live (no sleep needed), and nothing comes twice."""
    shop = [make_event(namespace="shop") for _ in range(3)]
    ingest(channel, [shop[0]])
    f = collector_pb2.EventFilter(namespace="shop")
    f.since.FromNanoseconds(1)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    stream = iter(stub.WatchEvents(collector_pb2.WatchEventsRequest(filter=f)))
    seen = [next(stream).id]
    assert seen == [shop[0].id]
    ingest(channel, [make_event(namespace="infra"), shop[0], shop[1], shop[2]])
    seen += [next(stream).id, next(stream).id]
    stream.cancel()  # type: ignore[attr-defined]  # a grpc.Call at run time
    assert seen == [e.id for e in shop]


def test_oversized_and_garbage_input_get_status_codes_and_the_server_keeps_serving(
    server: tuple[str, Store], channel: grpc.Channel
) -> None:
    big = make_event()
    big.victim.cmdline = "x" * (MAX_MESSAGE_BYTES + 10)
    with pytest.raises(grpc.RpcError) as too_big:
        ingest(channel, [big])
    assert rpc.status(too_big.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Bytes that are no IngestRequest (wrong wire types throughout).
    raw = channel.stream_stream(
        "/oomtrace.v1.IngestService/Ingest",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as garbage:
        list(raw(iter([b"\x0a\x05\xff\xff\xff\xff\xff" * 3]), timeout=5))
    assert rpc.status(garbage.value)[0] in (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    # A GetEvent whose id field carries an integer (wrong type on the wire).
    get = channel.unary_unary(
        "/oomtrace.v1.HistoryService/GetEvent",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as wrong_type:
        get(b"\x08\x96\x01", timeout=5)
    assert rpc.status(wrong_type.value)[0] in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    ok = make_event()
    assert ingest(channel, [ok])[0].stored
    assert server[1].get(ok.id) == ok


def test_a_record_with_out_of_range_fields_is_refused_alone(
    server: tuple[str, Store], channel: grpc.Channel
) -> None:
    """Each is refused with its reason; the records around it are stored, and
    the stream goes on (it once ended with UNKNOWN and rolled back the batch)."""
    good, late, huge, bad_id = make_event(), make_event(), make_event(), make_event()
    late.killed_at.FromSeconds(32_503_680_000)  # the year 3000
    huge.victim.anon_rss_bytes = huge.victim.file_rss_bytes = (1 << 64) - 1
    bad_id.id = "x; DROP TABLE events"
    acks = {a.id: a for a in ingest(channel, [late, good, huge, bad_id])}
    assert acks[good.id].stored
    assert acks[late.id].rejected == "killed_at is outside 2000-2200"
    assert "2^63" in acks[huge.id].rejected
    assert "letters, digits" in acks[bad_id.id].rejected
    assert server[1].count() == 1
    assert ingest(channel, [make_event()])[0].stored  # the stream is still fine


def test_a_huge_page_token_is_a_bad_argument_not_a_crash(channel: grpc.Channel) -> None:
    import base64

    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    for token in (base64.urlsafe_b64encode(f"{10**30}:x".encode()).decode(), "A" * 5000):
        with pytest.raises(grpc.RpcError) as bad:
            stub.ListEvents(collector_pb2.ListEventsRequest(page_token=token))
        assert rpc.status(bad.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_health_says_not_serving_while_the_store_cannot_write(
    server: tuple[str, Store], channel: grpc.Channel, request: pytest.FixtureRequest
) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def status() -> int:
        return int(health.Check(health_pb2.HealthCheckRequest(service="")).status)

    def read_only(on: bool) -> None:
        """As a read-only or full disk would make the store refuse writes."""
        store = server[1]
        if isinstance(store, SqliteStore):
            store._writer.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")
        else:
            request.getfixturevalue("postgres").read_only(on)

    assert status() == health_pb2.HealthCheckResponse.SERVING
    read_only(True)
    try:
        with pytest.raises(grpc.RpcError):
            ingest(channel, [make_event()])
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        read_only(False)
    assert ingest(channel, [make_event()])[0].stored
    assert status() == health_pb2.HealthCheckResponse.SERVING


def test_a_streams_inbox_and_the_ingest_budget_are_bounded_in_bytes() -> None:
    """A reader waits for room (holding nothing more) and one request always
    fits; the budget over all streams likewise."""
    import asyncio

    from oomtrace.collector.service import Inbox, IngestBudget

    async def run() -> None:
        inbox = Inbox(max_bytes=100)
        req = collector_pb2.IngestRequest
        a, b, c = req(event=make_event()), req(event=make_event()), req(event=make_event())
        await inbox.put(a, 60)
        await inbox.put(b, 40)  # exactly full
        waiter = asyncio.ensure_future(inbox.put(c, 10))
        await asyncio.sleep(0.1)
        assert not waiter.done()  # no room: the reader waits
        assert (await inbox.take(1)) == ([a], 60)
        await asyncio.wait_for(waiter, 5)
        assert (await inbox.take(10)) == ([b, c], 50)
        huge = Inbox(max_bytes=10)
        await asyncio.wait_for(huge.put(a, 1000), 5)  # alone, it fits
        inbox.end()
        assert (await asyncio.wait_for(inbox.take(10), 5)) == ([], 0)

        budget = IngestBudget(max_bytes=100)
        await budget.take(80)
        blocked = asyncio.ensure_future(budget.take(30))
        await asyncio.sleep(0.1)
        assert not blocked.done()
        budget.give(80)
        await asyncio.wait_for(blocked, 5)
        assert budget.used == 30

    asyncio.run(run())


def _streams(metrics: object) -> float:
    from prometheus_client import CollectorRegistry

    registry: CollectorRegistry = metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value("oomtrace_collector_ingest_streams")
    assert value is not None
    return value


def test_a_cancelled_ingest_stream_is_let_go(tmp_path: Path) -> None:
    """An agent that goes quiet and cancels: its stream is no longer counted
    (its slot, task and budget are given back)."""
    import threading as th

    from oomtrace.collector.metrics import CollectorMetrics

    store = SqliteStore(tmp_path / "c.db")
    metrics = CollectorMetrics()
    srv, port, _ = create_server("127.0.0.1:0", store, metrics=metrics)
    srv.start()
    hold = th.Event()

    def requests() -> Iterator[collector_pb2.IngestRequest]:
        yield collector_pb2.IngestRequest(event=make_event())
        hold.wait(10)  # an agent that goes quiet with its stream open

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = collector_pb2_grpc.IngestServiceStub(ch).Ingest(requests())
            next(iter(call))  # its first record is acked
            assert _streams(metrics) == 1
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
            hold.set()
            deadline = time.monotonic() + 10
            while _streams(metrics) > 0:
                assert time.monotonic() < deadline, "the stream was never let go"
                time.sleep(0.05)
    finally:
        hold.set()
        srv.stop(grace=0.1).wait(timeout=5)
        store.close()


def test_idle_agent_streams_cannot_starve_queries(tmp_path: Path) -> None:
    """200 agents connected and silent: the stream past the limit is refused
    at once (not queued), and queries still answer at once."""
    import threading

    store = SqliteStore(tmp_path / "c.db")
    srv, port, _ = create_server("127.0.0.1:0", store, max_ingest_streams=200)
    srv.start()
    release = threading.Event()

    def silent() -> Iterator[collector_pb2.IngestRequest]:
        release.wait(60)
        yield from ()

    calls = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = collector_pb2_grpc.IngestServiceStub(ch)
            history = collector_pb2_grpc.HistoryServiceStub(ch)
            calls = [stub.Ingest(silent(), timeout=60) for _ in range(200)]
            # Once every stream holds its slot, one more is refused.
            deadline = time.monotonic() + 30
            while True:
                extra = stub.Ingest(silent(), timeout=1)
                try:
                    list(extra)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        break
                    # It got a slot: some of the 200 have not reached the
                    # server yet. Its slot is freed when it times out.
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
                finally:
                    extra.cancel()  # type: ignore[no-untyped-call]
                assert time.monotonic() < deadline, "the 201st stream was never refused"
            started = time.monotonic()
            history.ListEvents(collector_pb2.ListEventsRequest(), timeout=5)
            assert time.monotonic() - started < 2
    finally:
        release.set()
        for c in calls:
            c.cancel()  # type: ignore[no-untyped-call]
        srv.stop(grace=0.1).wait(timeout=5)
        store.close()


def test_a_slow_watcher_is_dropped_by_the_bytes_it_holds_not_kept() -> None:
    """A watcher that reads nothing holds at most its byte budget; past it,
    it is dropped and told (its queue ends with None), and ingest goes on."""
    from oomtrace.collector.service import Broadcast

    b = Broadcast(max_bytes=64 << 10)
    slow = b.subscribe()
    big = make_event()
    big.victim.cmdline = "x" * (16 << 10)  # ~16 KiB a record
    for _ in range(10):
        b.publish([big])
    assert len(b) == 0  # dropped
    assert slow.qsize() <= (64 << 10) + big.ByteSize()
    items = []
    while not slow.empty():
        items.append(slow.get_nowait())
    assert items[-1] is None
    fast = b.subscribe()
    ev = make_event()
    b.publish([ev])
    assert fast.get_nowait() == (ev, ev.ByteSize())


def test_lists_and_watches_leave_out_profile_files_and_get_keeps_them(
    channel: grpc.Channel,
) -> None:
    """A Go victim's record with its heap profiles: stored whole (GetEvent
    gives it back as sent); ListEvents and WatchEvents send it without the
    pprof files, the top sites kept."""
    ev = make_event(namespace="go")
    ev.go.heap_profile.pprof = b"\x1f\x8b" + b"p" * 300_000
    ev.go.heap_profile.top.add(function="main.leak", inuse_bytes=1 << 20)
    ev.go.heap_profile_before.pprof = b"\x1f\x8b" + b"b" * 300_000
    f = collector_pb2.EventFilter(namespace="go")
    f.since.FromNanoseconds(1)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    stream = iter(stub.WatchEvents(collector_pb2.WatchEventsRequest(filter=f)))
    ingest(channel, [ev])
    watched = next(stream)
    stream.cancel()  # type: ignore[attr-defined]  # a grpc.Call at run time
    (listed,) = stub.ListEvents(collector_pb2.ListEventsRequest(filter=f)).events
    for light in (watched, listed):
        assert light.go.heap_profile.top[0].function == "main.leak"
        assert not light.go.heap_profile.pprof
        assert not light.go.heap_profile_before.pprof
    assert stub.GetEvent(collector_pb2.GetEventRequest(id=ev.id)) == ev


def test_a_second_collector_on_an_address_in_use_fails_clearly(
    server: tuple[str, Store], tmp_path: Path
) -> None:
    """gRPC's SO_REUSEPORT would let it bind and take half the calls."""
    other = SqliteStore(tmp_path / "other.db")
    try:
        with pytest.raises(RuntimeError, match="in use"):
            create_server(server[0], other)
    finally:
        other.close()
    with grpc.insecure_channel(server[0]) as ch:
        assert ingest(ch, [make_event()])[0].stored  # the first one still serves


def test_one_store_holds_clusters_apart(server: tuple[str, Store], channel: grpc.Channel) -> None:
    """The same namespace and pod in two clusters: filtered and counted apart,
    and a watch on one cluster sees only its records."""
    evs = []
    for cluster, n in (("prod-eu", 3), ("prod-us", 2), ("", 1)):
        for _ in range(n):
            ev = make_event(namespace="shop", pod="api")
            ev.cluster = cluster
            evs.append(ev)
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    watch = iter(
        stub.WatchEvents(
            collector_pb2.WatchEventsRequest(filter=collector_pb2.EventFilter(cluster="prod-us"))
        )
    )
    time.sleep(0.3)  # subscribed before the records come
    ingest(channel, evs)
    seen = [next(watch).cluster, next(watch).cluster]
    watch.cancel()  # type: ignore[attr-defined]  # a grpc.Call at run time
    assert seen == ["prod-us", "prod-us"]
    eu = stub.ListEvents(
        collector_pb2.ListEventsRequest(filter=collector_pb2.EventFilter(cluster="prod-eu"))
    ).events
    assert sorted(e.id for e in eu) == sorted(e.id for e in evs if e.cluster == "prod-eu")
    top = stub.Top(collector_pb2.TopRequest(group_by=collector_pb2.TopRequest.CLUSTER))
    assert [(r.key, r.kills) for r in top.rows] == [("prod-eu", 3), ("prod-us", 2), ("", 1)]
