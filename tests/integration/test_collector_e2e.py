"""Agent to collector with real kills and real process faults: the store must
hold each kill exactly once whatever is stopped or killed, and when."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oomtrace import rpc
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    CollectorProcess,
    KmsgReader,
    assert_matches_kernel,
    free_port,
    scratch_cgroup,
)


def stored(addr: str) -> list[event_pb2.OomEvent]:
    with grpc.insecure_channel(addr) as ch:
        stub = collector_pb2_grpc.HistoryServiceStub(ch)
        out: list[event_pb2.OomEvent] = []
        token = ""
        while True:
            resp = stub.ListEvents(
                collector_pb2.ListEventsRequest(page_size=1000, page_token=token), timeout=10
            )
            out += resp.events
            token = resp.next_page_token
            if not token:
                return out


def wait_stored(addr: str, pids: set[int], timeout: float = 30) -> list[event_pb2.OomEvent]:
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in stored(addr) if e.victim.pid in pids]
        if {e.victim.pid for e in events} >= pids or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def kill_in(cg: Any, n: int) -> list[int]:
    pids = []
    for _ in range(n):
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        pids.append(p.pid)
    return pids


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def start_agent(started: list[Any], addr: str, spool: Path) -> AgentProcess:
    a = AgentProcess("--collector", addr, "--spool", str(spool))
    started.append(a)
    a.wait_ready()
    return a


def start_collector(started: list[Any], db: Path, port: int) -> CollectorProcess:
    c = CollectorProcess(db, port)
    started.append(c)
    return c


def pids_of(records: list[dict[str, Any]]) -> set[int]:
    return {int(r["victim"]["pid"]) for r in records}


def once_each(events: list[event_pb2.OomEvent], pids: set[int]) -> None:
    got = sorted(e.victim.pid for e in events)
    assert got == sorted(pids), f"expected each of {sorted(pids)} once, store has {got}"


def test_kills_reach_the_store_and_match_the_kernel(
    workdir: Path, started: list[Any], kmsg: KmsgReader
) -> None:
    port = free_port()
    col = start_collector(started, workdir / "c.db", port)
    agent = start_agent(started, col.addr, workdir / "spool")
    with scratch_cgroup(48 * MIB) as cg:
        pids = set(kill_in(cg, 3))
        kernel = kmsg.wait_kills(pids)
    events = wait_stored(col.addr, pids)
    once_each(events, pids)
    for ev in events:
        from oomtrace.records import to_json

        assert_matches_kernel(json.loads(to_json(ev)), kernel[ev.victim.pid])
    assert agent.proc.poll() is None


def test_kills_while_the_collector_is_down_all_arrive_once_it_starts(
    workdir: Path, started: list[Any]
) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    agent = start_agent(started, addr, workdir / "spool")
    with scratch_cgroup(48 * MIB) as cg:
        pids = set(kill_in(cg, 4))
    assert pids_of(agent.take(4, where=lambda r: r["victim"]["pid"] in pids)) == pids
    assert len(list((workdir / "spool").glob("*.rec"))) == 4
    col = start_collector(started, workdir / "c.db", port)
    once_each(wait_stored(col.addr, pids), pids)
    wait_for(lambda: not list((workdir / "spool").glob("*.rec")))


def test_collector_killed_mid_stream_loses_and_duplicates_nothing(
    workdir: Path, started: list[Any]
) -> None:
    port = free_port()
    db = workdir / "c.db"
    col = start_collector(started, db, port)
    start_agent(started, col.addr, workdir / "spool")
    pids: set[int] = set()
    with scratch_cgroup(48 * MIB) as cg:
        pids |= set(kill_in(cg, 3))
        col.kill()  # SIGKILL while the agent's stream is open
        pids |= set(kill_in(cg, 3))
        col = start_collector(started, db, port)
        pids |= set(kill_in(cg, 3))
    once_each(wait_stored(col.addr, pids), pids)


def test_agent_killed_before_the_ack_replays_after_restart_without_duplicates(
    workdir: Path, started: list[Any]
) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    spool = workdir / "spool"
    agent = start_agent(started, addr, spool)
    with scratch_cgroup(48 * MIB) as cg:
        pids = set(kill_in(cg, 3))
    # Captured (printed after spooling) but never acknowledged: no collector.
    assert pids_of(agent.take(3, where=lambda r: r["victim"]["pid"] in pids)) == pids
    agent.proc.kill()
    agent.proc.wait()
    col = start_collector(started, workdir / "c.db", port)
    start_agent(started, col.addr, spool)
    once_each(wait_stored(col.addr, pids), pids)
    # And once more: a second restart must not send them again.
    wait_for(lambda: not list(spool.glob("*.rec")))
    assert len([e for e in stored(col.addr) if e.victim.pid in pids]) == 3


def test_bad_grpc_input_gets_status_codes_and_the_collector_keeps_serving(
    workdir: Path, started: list[Any]
) -> None:
    col = start_collector(started, workdir / "c.db", free_port())
    with grpc.insecure_channel(col.addr) as ch:
        ingest = collector_pb2_grpc.IngestServiceStub(ch)
        big = event_pb2.OomEvent(id="big")
        big.killed_at.GetCurrentTime()
        big.victim.cmdline = "x" * (2 * MIB)
        with pytest.raises(grpc.RpcError) as too_big:
            list(ingest.Ingest(iter([collector_pb2.IngestRequest(event=big)]), timeout=10))
        assert rpc.status(too_big.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

        raw = ch.stream_stream(
            "/oomtrace.v1.IngestService/Ingest",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as garbage:
            list(raw(iter([b"\x0a\x05\xff\xff\xff\xff\xff"]), timeout=10))
        # grpc.aio answers a request it cannot parse with INVALID_ARGUMENT.
        assert rpc.status(garbage.value)[0] == grpc.StatusCode.INVALID_ARGUMENT

        no_id = event_pb2.OomEvent()
        (resp,) = ingest.Ingest(iter([collector_pb2.IngestRequest(event=no_id)]), timeout=10)
        assert [a.rejected for a in resp.acks] == ["record has no id"]

        health = health_pb2_grpc.HealthStub(ch)
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        ok = event_pb2.OomEvent(id="fine")
        ok.killed_at.GetCurrentTime()
        (resp,) = ingest.Ingest(iter([collector_pb2.IngestRequest(event=ok)]), timeout=10)
        assert [a.stored for a in resp.acks] == [True]
    assert col.proc.poll() is None
    assert col.stop() == 0


def wait_for(cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
