"""Several collectors on one PostgreSQL database (a real server the tests
start): a record raced through two replicas is stored once, a watcher on
one sees what another stored, an agent's exporter fails over between them
keeping each record once, and a database restart mid-ingest turns health to
NOT_SERVING and back with nothing lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from oomtrace.agent.delivery.export import Exporter
from oomtrace.agent.delivery.spool import Spool
from oomtrace.collector.postgres import PostgresStore
from oomtrace.collector.query import Filter
from oomtrace.collector.service import create_server
from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.postgres_server import PostgresServer
from tests.unit.events import make_event
from tests.unit.test_collector_service import ingest


class Replica:
    def __init__(self, url: str, port: int = 0) -> None:
        self.store = PostgresStore(url)
        self.server, self.port, self.health = create_server(f"127.0.0.1:{port}", self.store)
        self.server.start()
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=0.1).wait(timeout=5)
        self.store.close()

    def serving(self) -> bool:
        status = self.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return bool(status.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def replicas(postgres: PostgresServer) -> Iterator[tuple[Replica, Replica]]:
    url = postgres.database()
    a, b = Replica(url), Replica(url)
    yield a, b
    a.stop()
    b.stop()


def test_a_record_raced_through_two_replicas_is_stored_once(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    evs = [make_event() for _ in range(50)]
    acks: dict[str, list[collector_pb2.IngestAck]] = {}

    def send(r: Replica) -> None:
        with grpc.insecure_channel(r.addr) as ch:
            acks[r.addr] = ingest(ch, evs)

    threads = [threading.Thread(target=send, args=(r,)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ev in evs:
        stored = [ack.stored for got in acks.values() for ack in got if ack.id == ev.id]
        assert sorted(stored) == [False, True], ev.id  # acked by both, stored by one
    assert a.store.count() == 50


def test_a_watcher_on_one_replica_sees_what_another_stored(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    seen: list[str] = []
    with grpc.insecure_channel(a.addr) as ch:
        stream = collector_pb2_grpc.HistoryServiceStub(ch).WatchEvents(
            collector_pb2.WatchEventsRequest(), timeout=20
        )

        def read() -> None:
            try:
                for ev in stream:
                    seen.append(ev.id)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.5)  # the watch is subscribed
        ev = make_event()
        with grpc.insecure_channel(b.addr) as chb:
            (ack,) = ingest(chb, [ev])
        assert ack.stored
        deadline = time.monotonic() + 10
        while ev.id not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        stream.cancel()  # type: ignore[no-untyped-call]
    assert seen == [ev.id]


def test_an_agent_fails_over_to_another_replica_and_each_record_is_stored_once(
    replicas: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = replicas
    spool = Spool(tmp_path / "spool")
    exporter = Exporter(spool, f"{a.addr},{b.addr}", min_backoff_s=0.05, max_backoff_s=0.2)
    exporter.start()
    try:
        first = [make_event() for _ in range(20)]
        for ev in first:
            spool.put(ev)
        deadline = time.monotonic() + 20
        while len(spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(spool) == 0
        a.server.stop(grace=0).wait(timeout=5)  # the replica the agent used is gone
        second = [make_event() for _ in range(20)]
        for ev in second:
            spool.put(ev)
        deadline = time.monotonic() + 30
        while len(spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(spool) == 0, "the agent did not fail over"
    finally:
        exporter.stop()
    # The second batch could only be acknowledged by b (a was down); the
    # database holds each record once.
    assert b.store.count() == 40
    stored = {e.id for e in b.store.list_events(Filter(), 100, None)[0]}
    assert stored == {e.id for e in first + second}


def test_a_database_restart_mid_ingest_loses_nothing_and_health_says_so(
    postgres: PostgresServer,
) -> None:
    r = Replica(postgres.database())
    try:
        with grpc.insecure_channel(r.addr) as ch:
            before = [make_event() for _ in range(5)]
            assert all(a.stored for a in ingest(ch, before))
            postgres.stop("immediate")
            try:
                during = [make_event() for _ in range(5)]
                with pytest.raises(grpc.RpcError):
                    ingest(ch, during)  # not acked: the agent keeps them spooled
                deadline = time.monotonic() + 15
                while r.serving():
                    assert time.monotonic() < deadline, "health never said NOT_SERVING"
                    time.sleep(0.1)
            finally:
                postgres.start()
            deadline = time.monotonic() + 20
            while True:
                try:
                    acks = ingest(ch, during)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "the store never came back"
                    time.sleep(0.2)
            assert all(a.stored for a in acks)
            assert r.serving()
            assert r.store.count() == 10
    finally:
        r.stop()


def test_collectors_starting_together_run_each_migration_step_once(
    postgres: PostgresServer,
) -> None:
    """Four collectors open a new database at the same moment: the advisory
    lock lets one migrate; each step is recorded once and every one opens."""
    from oomtrace.collector.postgres import MIGRATIONS

    url = postgres.database()
    start = threading.Barrier(4)
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgresStore(url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert len(opened) == 4
        steps = postgres.sql(
            "SELECT version FROM oomtrace_schema ORDER BY version", dbname=url.rsplit("/", 1)[1]
        )
        assert steps.split() == [str(i + 1) for i in range(len(MIGRATIONS))]
        assert all(s.schema_version == len(MIGRATIONS) for s in opened)
    finally:
        for s in opened:
            s.close()
