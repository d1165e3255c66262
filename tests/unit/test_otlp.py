"""OTLP export (collector --otlp-endpoint) against an in-process OTLP/gRPC
receiver; tests/integration/test_otlp.py runs it against a real
OpenTelemetry Collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from prometheus_client import CollectorRegistry

from oomtrace.collector import otlp
from oomtrace.collector.metrics import CollectorMetrics
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.v1 import event_pb2
from tests.unit.events import make_event
from tests.unit.test_collector_service import ingest


class FakeReceiver:
    """An OTLP/gRPC receiver that keeps what it is sent; answers UNAVAILABLE
    to the first `unavailable` calls."""

    def __init__(self, unavailable: int = 0) -> None:
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.unavailable = unavailable
        self.calls = 0
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))

        def handler(keep: list[Any], response: Any) -> Callable[[Any, Any], Any]:
            def export(request: Any, context: grpc.ServicerContext) -> Any:
                with self.lock:
                    self.calls += 1
                    if self.calls <= self.unavailable:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
                    keep.append(request)
                return response()

            return export

        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.logs.v1.LogsService",
                    {
                        "Export": grpc.unary_unary_rpc_method_handler(
                            handler(self.logs, logs_service_pb2.ExportLogsServiceResponse),
                            request_deserializer=logs_service_pb2.ExportLogsServiceRequest.FromString,
                            response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.metrics.v1.MetricsService",
                    {
                        "Export": grpc.unary_unary_rpc_method_handler(
                            handler(self.metrics, metrics_service_pb2.ExportMetricsServiceResponse),
                            request_deserializer=metrics_service_pb2.ExportMetricsServiceRequest.FromString,
                            response_serializer=metrics_service_pb2.ExportMetricsServiceResponse.SerializeToString,
                        )
                    },
                ),
            ]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def log_records(self) -> list[tuple[dict[str, Any], logs_pb2.LogRecord]]:
        """(resource attributes, record) for every log record received."""
        with self.lock:
            return [
                (attrs(rl.resource.attributes), rec)
                for req in self.logs
                for rl in req.resource_logs
                for sl in rl.scope_logs
                for rec in sl.log_records
            ]


def value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@pytest.fixture
def receiver() -> Iterator[FakeReceiver]:
    r = FakeReceiver()
    yield r
    r.server.stop(0)


def exporter(receiver: FakeReceiver, **kw: Any) -> tuple[otlp.OtlpExporter, CollectorMetrics]:
    metrics = CollectorMetrics(CollectorRegistry())
    target = otlp.OtlpTarget(f"127.0.0.1:{receiver.port}", None, cluster="prod-eu")
    kw.setdefault("flush_s", 0.05)
    exp = otlp.OtlpExporter(
        target, exported=metrics.otlp_exported, dropped=metrics.otlp_dropped, **kw
    )
    return exp, metrics


def pod_kill() -> event_pb2.OomEvent:
    ev = make_event(namespace="shop", pod="cart-7d9f8b6c5-x2x4q", container="cart", image="cart:1")
    ev.container.id = "c0ffee" * 10 + "abcd"
    ev.incident_id = "inc-1"
    ev.verdicts.add(code="GO_GOMEMLIMIT_UNSET", explanation="GOMEMLIMIT is not set.")
    ev.verdicts.add(code="LIMIT_TOO_SMALL", explanation="x")
    return ev


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_stored_kill_is_one_warn_log_record_with_semantic_convention_attributes(
    receiver: FakeReceiver,
) -> None:
    ev = pod_kill()
    exp, metrics = exporter(receiver)
    exp.start()
    exp.offer([ev])
    wait_for(lambda: len(receiver.log_records()) == 1, "the log record")
    exp.stop()
    ((resource, rec),) = receiver.log_records()
    assert resource == {
        "service.name": "oomtrace-collector",
        "k8s.cluster.name": "prod-eu",
        "k8s.node.name": "node-a",
    }
    assert rec.severity_number == logs_pb2.SEVERITY_NUMBER_WARN
    assert rec.severity_text == "WARN"
    assert rec.time_unix_nano == ev.killed_at.ToNanoseconds()
    assert rec.body.string_value == (
        f"OOM kill of python3 (pid {ev.victim.pid}) in shop/cart-7d9f8b6c5-x2x4q/cart: "
        "65.0 MiB resident, limit 64.0 MiB; GO_GOMEMLIMIT_UNSET: GOMEMLIMIT is not set."
    )
    a = attrs(rec.attributes)
    assert a["k8s.namespace.name"] == "shop"
    assert a["k8s.pod.name"] == "cart-7d9f8b6c5-x2x4q"
    assert a["k8s.container.name"] == "cart"
    assert a["container.id"] == ev.container.id
    assert a["process.pid"] == ev.victim.pid
    assert a["process.executable.name"] == "python3"
    assert a["oomtrace.record.id"] == ev.id
    assert a["oomtrace.incident.id"] == "inc-1"
    assert a["oomtrace.verdict.codes"] == ["GO_GOMEMLIMIT_UNSET", "LIMIT_TOO_SMALL"]
    assert a["oomtrace.memory.usage_bytes"] == 64 << 20
    assert a["oomtrace.memory.limit_bytes"] == 64 << 20
    assert a["oomtrace.cgroup.path"] == "/kubepods/burstable/pod1/abc"
    assert a["oomtrace.source"] == event_pb2.OomEvent.Source.Name(ev.source)
    assert metrics.otlp_exported.labels("logs")._value.get() == 1


def test_the_kill_counter_is_a_monotonic_cumulative_sum_by_namespace_workload_verdict(
    receiver: FakeReceiver,
) -> None:
    exp, _ = exporter(receiver)
    exp.start()
    exp.offer([pod_kill(), pod_kill()])
    exp.offer([make_event()])
    wait_for(lambda: len(receiver.log_records()) == 3, "three log records")
    exp.stop()
    metric = receiver.metrics[-1].resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.name == "oomtrace.kills"
    assert metric.sum.is_monotonic
    assert metric.sum.aggregation_temporality == 2  # CUMULATIVE
    points = {tuple(attrs(p.attributes).values()): p.as_int for p in metric.sum.data_points}
    assert points == {
        ("shop", "Deployment/cart", "GO_GOMEMLIMIT_UNSET"): 2,
        ("", "", ""): 1,
    }


def test_a_runtimes_own_heap_limit_death_is_not_called_an_oom_kill() -> None:
    """A RUNTIME record (the JVM ended itself on its heap limit): the body
    says so, as the collector's Kubernetes Event does, not 'OOM kill'."""
    ev = pod_kill()
    ev.source = event_pb2.OomEvent.RUNTIME
    ev.runtime_death.runtime, ev.runtime_death.exit_code = "jvm", 3
    body = otlp.summary(ev)
    assert body.startswith(
        f"jvm heap limit death of python3 (pid {ev.victim.pid}) in shop/cart-7d9f8b6c5-x2x4q/cart: "
        "exit 3, not a kernel OOM kill; limit 64.0 MiB"
    ), body
    assert "OOM kill of" not in body


def test_hostile_strings_stay_bounded_one_line_strings(receiver: FakeReceiver) -> None:
    ev = pod_kill()
    ev.victim.comm = "evil\nINFO forged line"
    ev.pod.name = "p" * 100_000
    ev.verdicts[0].code = "${jndi:ldap://x}"
    exp, _ = exporter(receiver)
    exp.start()
    exp.offer([ev])
    wait_for(lambda: len(receiver.log_records()) == 1, "the log record")
    exp.stop()
    ((_, rec),) = receiver.log_records()
    assert "\n" not in rec.body.string_value
    a = attrs(rec.attributes)
    assert len(a["k8s.pod.name"]) == otlp.MAX_STRING_BYTES
    assert a["process.executable.name"] == "evil\nINFO forged line"  # kept, as data
    metric = receiver.metrics[-1].resource_metrics[0].scope_metrics[0].metrics[0]
    assert attrs(metric.sum.data_points[0].attributes)["verdict"] == "OTHER"


def test_unavailable_is_retried_with_backoff_and_the_batch_is_sent_once() -> None:
    receiver = FakeReceiver(unavailable=2)
    try:
        exp, metrics = exporter(receiver, backoff_s=(0.05, 0.1))
        exp.start()
        exp.offer([pod_kill()])
        wait_for(lambda: len(receiver.log_records()) == 1, "the retried log record")
        exp.stop()
        assert receiver.calls >= 3
        assert len(receiver.log_records()) == 1
        assert metrics.otlp_dropped.labels("send_failed")._value.get() == 0
    finally:
        receiver.server.stop(0)


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    metrics = CollectorMetrics(CollectorRegistry())
    # Nothing listens there, and the sender is not started: the queue fills.
    target = otlp.OtlpTarget("127.0.0.1:1", None)
    exp = otlp.OtlpExporter(
        target, exported=metrics.otlp_exported, dropped=metrics.otlp_dropped, queue_depth=3
    )
    started = time.monotonic()
    exp.offer([make_event() for _ in range(10)])
    assert time.monotonic() - started < 1
    assert metrics.otlp_dropped.labels("queue_full")._value.get() == 7
    assert sum(exp.kills.snapshot().values()) == 10  # the counter counts them all


def test_a_receiver_that_stays_down_costs_the_batch_counted_as_send_failed() -> None:
    metrics = CollectorMetrics(CollectorRegistry())
    target = otlp.OtlpTarget("127.0.0.1:1", None)
    exp = otlp.OtlpExporter(
        target,
        exported=metrics.otlp_exported,
        dropped=metrics.otlp_dropped,
        flush_s=0.01,
        timeout_s=0.5,
        retry_for_s=0.3,
        backoff_s=(0.05, 0.1),
    )
    exp.start()
    exp.offer([make_event(), make_event()])
    wait_for(
        lambda: metrics.otlp_dropped.labels("send_failed")._value.get() == 2, "the failed batch"
    )
    exp.stop()


def test_only_newly_stored_records_are_exported_so_a_resend_is_not_logged_twice(
    tmp_path: Path, receiver: FakeReceiver
) -> None:
    store = SqliteStore(tmp_path / "c.db")
    exp, metrics = exporter(receiver)
    exp.start()
    server, port, _ = create_server("127.0.0.1:0", store, metrics=metrics, on_stored=[exp.offer])
    server.start()
    try:
        evs = [pod_kill(), pod_kill()]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            ingest(ch, evs)
            ingest(ch, evs)  # a resend: deduplicated by the store
            ingest(ch, [evs[0]])
        wait_for(lambda: len(receiver.log_records()) >= 2, "two log records")
        time.sleep(0.3)
        ids = [attrs(r.attributes)["oomtrace.record.id"] for _, r in receiver.log_records()]
        assert sorted(ids) == sorted(e.id for e in evs)
    finally:
        server.stop(grace=0.1).wait(timeout=5)  # bounded, as in collector/main.py
        exp.stop()
        store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://otel:4317", ("otel:4317", True)),
        ("https://otel.example:4317/", ("otel.example:4317", False)),
        ("otel:4317", ("otel:4317", False)),
        ("", None),
    ],
)
def test_the_standard_environment_variable_names_the_endpoint(
    url: str, expected: tuple[str, bool] | None
) -> None:
    assert otlp.endpoint_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": url}) == expected


def test_a_batch_of_long_records_is_split_under_the_receivers_message_limit(
    receiver: FakeReceiver,
) -> None:
    evs = []
    for _ in range(200):
        ev = pod_kill()
        ev.pod.name = ev.container.name = ev.victim.exe = ev.cgroup.path = "x" * 10_000
        evs.append(ev)
    exp, metrics = exporter(receiver, flush_s=0.5)
    exp.start()
    exp.offer(evs)
    wait_for(lambda: len(receiver.log_records()) == 200, "200 log records")
    exp.stop()
    assert len(receiver.logs) > 1
    assert all(r.ByteSize() <= otlp.MAX_REQUEST_BYTES for r in receiver.logs)
    assert metrics.otlp_exported.labels("logs")._value.get() == 200


def test_the_counter_is_sent_again_while_no_kill_comes(receiver: FakeReceiver) -> None:
    exp, _ = exporter(receiver, metrics_every_s=0.1)
    exp.start()
    exp.offer([pod_kill()])
    wait_for(lambda: len(receiver.metrics) >= 3, "the counter sent again")
    exp.stop()
    assert len(receiver.logs) == 1
