"""Kubernetes Events for kills, against a stand-in API server that checks
each request as the real one would (schema, token, paths): see kube_api.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from oomtrace.collector.kube_events import ApiServer, KubeEvents
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.v1 import event_pb2
from tests.unit.events import make_event
from tests.unit.kube_api import FakeApiServer
from tests.unit.test_collector_service import ingest


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApiServer]:
    fake = FakeApiServer(tmp_path)
    yield fake
    fake.close()


def emitter(api: FakeApiServer, qps: float = 5.0, burst: int = 25) -> KubeEvents:
    api_server = ApiServer(api.url, api.token_file, api.ca)
    return KubeEvents(api_server, instance="collector-0", qps=qps, burst=burst)


def pod_kill(pod: str = "cart-7d9f8b6c5-x2x4q") -> event_pb2.OomEvent:
    ev = make_event(namespace="shop", pod=pod, container="cart")
    ev.pod.uid = "6f1c2b9e-0d57-4a4c-9a57-3f3b1c6f2a10"
    ev.verdicts.add(
        code="GO_GOMEMLIMIT_UNSET",
        severity=event_pb2.Verdict.WARNING,
        explanation="GOMEMLIMIT is not set in a cgroup limited to 64 MiB.",
        suggestion="Set GOMEMLIMIT=57MiB (about 90 % of the limit).",
    )
    return ev


def describe(event: dict[str, object]) -> str:
    """The Events line `kubectl describe pod` prints: Type Reason From Message."""
    return f"{event['type']}  {event['reason']}  {event['reportingController']}  {event['note']}"


def test_a_kill_in_a_pod_is_one_warning_event_on_that_pod(api: FakeApiServer) -> None:
    ev = pod_kill()
    assert emitter(api).emit(ev) == "created"
    (req,) = api.requests
    assert (req.method, req.status, req.problem) == ("POST", 201, "")
    assert req.path == "/apis/events.k8s.io/v1/namespaces/shop/events"
    body = req.body
    assert body["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "shop",
        "name": "cart-7d9f8b6c5-x2x4q",
        "uid": "6f1c2b9e-0d57-4a4c-9a57-3f3b1c6f2a10",
        "fieldPath": "spec.containers{cart}",
    }
    line = describe(body)
    assert line.startswith("Warning  OOMKilled  oomtrace.io/collector  ")
    assert f"python3[{ev.victim.pid}] in container cart was OOM-killed (MEMCG)" in line
    assert "65.0 MiB resident against the 64.0 MiB limit of /kubepods/burstable/pod1/abc" in line
    assert "GO_GOMEMLIMIT_UNSET: GOMEMLIMIT is not set" in line
    assert line.endswith(f"oomtrace show {ev.id[:12]}")


def test_a_record_sent_twice_or_by_another_replica_is_one_event(api: FakeApiServer) -> None:
    ev = pod_kill()
    assert emitter(api).emit(ev) == "created"
    assert emitter(api).emit(ev) == "duplicate"  # another collector, the same record
    assert [r.status for r in api.requests] == [201, 409]
    assert len(api.events) == 1


def test_repeated_kills_of_one_container_are_one_event_series(api: FakeApiServer) -> None:
    kube = emitter(api)
    outcomes = [kube.emit(pod_kill()) for _ in range(3)]
    assert outcomes == ["created", "updated", "updated"]
    (event,) = api.events.values()
    assert event["series"]["count"] == 3
    assert [r.method for r in api.requests] == ["POST", "PATCH", "PATCH"]
    assert all(r.status in (200, 201) for r in api.requests), [r.problem for r in api.requests]


def test_a_global_oom_is_an_event_on_the_node_and_a_plain_process_none(
    api: FakeApiServer,
) -> None:
    kube = emitter(api)
    node_kill = make_event(node="node-a")
    node_kill.constraint = event_pb2.OomEvent.GLOBAL
    assert kube.emit(node_kill) == "created"
    assert api.requests[-1].body["regarding"] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": "node-a",
    }
    assert kube.emit(make_event()) == "not_kubernetes"  # no pod, not the node's OOM
    assert len(api.requests) == 1


def test_events_are_rate_limited_and_counted(api: FakeApiServer) -> None:
    kube = emitter(api, qps=0.001, burst=2)
    outcomes = [kube.emit(pod_kill(pod=f"p-{i}")) for i in range(3)]
    assert outcomes == ["created", "created", "rate_limited"]
    assert kube.outcomes == {"created": 2, "rate_limited": 1}


def test_a_wrong_token_is_an_error_never_a_silent_success(api: FakeApiServer) -> None:
    kube = emitter(api)
    api.token_file.write_text("stolen")
    with pytest.raises(RuntimeError, match="401"):
        kube.emit(pod_kill())


def test_the_collector_posts_one_event_per_stored_record(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """Through ingest: each record stored for the first time is offered; a
    resend is acked without a second Event."""
    kube = emitter(api)
    kube.start()
    store = SqliteStore(tmp_path / "c.db")
    server, port, _ = create_server("127.0.0.1:0", store, on_stored=[kube.offer])
    server.start()
    try:
        ev = pod_kill()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ingest(channel, [ev])
            ingest(channel, [ev])
        deadline = time.monotonic() + 10
        while not api.events:
            assert time.monotonic() < deadline, api.requests
            time.sleep(0.02)
    finally:
        server.stop(0).wait(5)
        kube.stop()
        store.close()
    assert len(api.requests) == 1
    assert kube.outcomes == {"created": 1}


def test_the_stand_in_refuses_what_the_api_server_would(api: FakeApiServer) -> None:
    """So that the tests above can fail: a field the schema lacks is 422."""
    kube = emitter(api)
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "x.1", "namespace": "shop"},
        "eventTime": "2026-12-02T19:00:00.000000Z",
        "reportingController": "oomtrace.io/collector",
        "reportingInstance": "c",
        "action": "OOMKill",
        "reason": "OOMKilled",
        "type": "Warning",
        "regarding": {"kind": "Pod", "name": "p", "namespace": "shop"},
        "message": "events.k8s.io/v1 calls it note",
    }
    with pytest.raises(RuntimeError, match="422"):
        kube._request("POST", "shop", None, body)
    assert "message" in api.requests[-1].problem
