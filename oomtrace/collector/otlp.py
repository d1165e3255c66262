"""OpenTelemetry export: each newly stored kill record as one OTLP log
record, and the kill counter as an OTLP metric, sent over OTLP/gRPC to an
OpenTelemetry Collector (`collector --otlp-endpoint`).

  - Once per record: fed from the ingest step's on_stored hook, which sees a
    record only after its commit and only when the store kept it (a resend
    the store deduplicates is not offered again).
  - Off the ingest path: a thread with a bounded queue and batched sends; a
    full queue drops the record and counts it, never blocks an ack.
  - Retries UNAVAILABLE (and the other transient codes) with backoff, for at
    most `retry_for_s`; a batch given up on is counted as dropped.
  - Attribute names follow the OpenTelemetry semantic conventions
    (k8s.*, container.*, process.*); our own fields are `oomtrace.*`.
    Everything in a record came from an agent: it is copied as bounded
    strings and clamped ints, never interpreted."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
import structlog
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from prometheus_client import Counter

from oomtrace import records, rpc
from oomtrace.v1 import event_pb2

log = structlog.get_logger(__name__)

SERVICE_NAME = "oomtrace-collector"
SCOPE_NAME = "oomtrace.collector"
KILLS_METRIC = "oomtrace.kills"
# A string attribute is cut to this many bytes: a record is hostile input.
MAX_STRING_BYTES = 4096
# Distinct (namespace, workload, verdict) series of oomtrace.kills at most;
# past it a kill is counted under "other", as the Prometheus counters are.
MAX_SERIES = 1000
# One request's size at most: an OpenTelemetry Collector's OTLP/gRPC receiver
# takes 4 MiB by default (max_recv_msg_size_mib), and a batch of records full
# of long strings would pass that and be refused forever.
MAX_REQUEST_BYTES = 3 << 20
OTHER = "other"
_INT64_MAX = (1 << 63) - 1


_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    endpoint: str  # host:port of an OTLP/gRPC receiver
    credentials: grpc.ChannelCredentials | None  # None: plaintext
    cluster: str = ""  # k8s.cluster.name when the records name none
    queue_depth: int = 10_000  # records waiting to be sent at most

    def channel(self) -> grpc.Channel:
        # gRPC's own reconnect backoff grows to 120 s: capped at ours, so a
        # receiver that comes back is used within one retry of ours.
        options = [("grpc.max_reconnect_backoff_ms", 30_000)]
        if self.credentials is None:
            return grpc.insecure_channel(self.endpoint, options)
        return grpc.secure_channel(self.endpoint, self.credentials, options)


def endpoint_from_env(environ: dict[str, str] | None = None) -> tuple[str, bool] | None:
    """OTEL_EXPORTER_OTLP_ENDPOINT as (host:port, insecure); an http:// URL is
    plaintext, https:// (or none) TLS; None when unset."""
    env = os.environ if environ is None else environ
    url = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not url:
        return None
    insecure = url.startswith("http://")
    hostport = url.split("://", 1)[-1].rstrip("/")
    return hostport, insecure


def _str(text: str) -> common_pb2.AnyValue:
    data = text.encode()
    if len(data) > MAX_STRING_BYTES:
        text = data[:MAX_STRING_BYTES].decode("utf-8", "ignore")
    return common_pb2.AnyValue(string_value=text)


def _int(n: int) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(int_value=max(-_INT64_MAX - 1, min(n, _INT64_MAX)))


def _kv(key: str, value: common_pb2.AnyValue) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=value)


def summary(ev: event_pb2.OomEvent) -> str:
    """The log body: one line a person reads."""
    v = ev.victim
    where = "/".join(p or "-" for p in (ev.pod.namespace, ev.pod.name, ev.container.name))
    if where == "-/-/-":
        where = ev.cgroup.oom_memcg_path or ev.cgroup.path or "the node"
    limit = records.limit_hit_bytes(ev)
    against = f"limit {records.mib_text(limit)}" if limit else "no limit"
    if ev.source == event_pb2.OomEvent.RUNTIME:
        # The runtime ended itself on its heap limit: no kernel kill, as the
        # collector's Kubernetes Event says too (kube_events.note).
        d = ev.runtime_death
        text = (
            f"{d.runtime} heap limit death of {v.comm} (pid {v.pid}) in {where}: "
            f"exit {d.exit_code}, not a kernel OOM kill; {against}"
        )
    else:
        text = (
            f"OOM kill of {v.comm} (pid {v.pid}) in {where}: "
            f"{records.mib_text(records.rss_bytes(ev))} resident, {against}"
        )
    if ev.verdicts:
        text += f"; {ev.verdicts[0].code}: {ev.verdicts[0].explanation}"
    return " ".join(text.split())  # one line, whatever the record held


def log_attributes(ev: event_pb2.OomEvent) -> list[common_pb2.KeyValue]:
    v, c, p, cg = ev.victim, ev.container, ev.pod, ev.cgroup
    strings = [
        ("k8s.namespace.name", p.namespace),
        ("k8s.pod.name", p.name),
        ("k8s.pod.uid", p.uid),
        ("k8s.container.name", c.name),
        ("container.id", c.id),
        ("container.image.name", c.image),
        ("container.runtime", c.runtime),
        ("process.executable.name", v.comm),
        ("process.executable.path", v.exe),
        ("oomtrace.record.id", ev.id),
        ("oomtrace.incident.id", ev.incident_id),
        ("oomtrace.cgroup.path", cg.oom_memcg_path or cg.path),
        ("oomtrace.source", event_pb2.OomEvent.Source.Name(ev.source)),
        ("oomtrace.constraint", event_pb2.OomEvent.Constraint.Name(ev.constraint)),
        ("oomtrace.workload", records.pod_workload(ev)),
    ]
    out = [_kv(k, _str(s)) for k, s in strings if s]
    out.append(_kv("process.pid", _int(v.pid)))
    out.append(_kv("oomtrace.victim.rss_bytes", _int(records.rss_bytes(ev))))
    out.append(
        _kv("oomtrace.memory.usage_bytes", _int(cg.oom_memcg_usage_bytes or cg.memory_usage_bytes))
    )
    out.append(_kv("oomtrace.memory.limit_bytes", _int(records.limit_hit_bytes(ev))))
    if ev.verdicts:
        codes = common_pb2.ArrayValue(values=[_str(vd.code) for vd in ev.verdicts[:32]])
        out.append(_kv("oomtrace.verdict.codes", common_pb2.AnyValue(array_value=codes)))
    return out


def _resource(cluster: str, node: str) -> resource_pb2.Resource:
    attrs = [_kv("service.name", _str(SERVICE_NAME))]
    if cluster:
        attrs.append(_kv("k8s.cluster.name", _str(cluster)))
    if node:
        attrs.append(_kv("k8s.node.name", _str(node)))
    return resource_pb2.Resource(attributes=attrs)


def logs_request(
    evs: Iterable[event_pb2.OomEvent], default_cluster: str, now_ns: int
) -> logs_service_pb2.ExportLogsServiceRequest:
    """One ResourceLogs per (cluster, node): the node is where the kill
    happened, an attribute of what produced the record, so it belongs on the
    resource."""
    by_origin: dict[tuple[str, str], list[logs_pb2.LogRecord]] = {}
    for ev in evs:
        rec = logs_pb2.LogRecord(
            time_unix_nano=ev.killed_at.ToNanoseconds(),
            observed_time_unix_nano=now_ns,
            severity_number=logs_pb2.SEVERITY_NUMBER_WARN,
            severity_text="WARN",
            body=_str(summary(ev)),
            attributes=log_attributes(ev),
            event_name="oomtrace.oom_kill",
        )
        by_origin.setdefault((ev.cluster or default_cluster, ev.node), []).append(rec)
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=_resource(cluster, node),
                scope_logs=[
                    logs_pb2.ScopeLogs(
                        scope=common_pb2.InstrumentationScope(name=SCOPE_NAME), log_records=recs
                    )
                ],
            )
            for (cluster, node), recs in by_origin.items()
        ]
    )


def _by_size(batch: list[event_pb2.OomEvent], cluster: str) -> Iterator[list[event_pb2.OomEvent]]:
    """The batch in parts whose log requests stay under MAX_REQUEST_BYTES
    (a single record always fits: its strings are bounded)."""
    part: list[event_pb2.OomEvent] = []
    size = 0
    for ev in batch:
        n = logs_request([ev], cluster, 0).ByteSize()
        if part and size + n > MAX_REQUEST_BYTES:
            yield part
            part, size = [], 0
        part.append(ev)
        size += n
    if part:
        yield part


class KillCounter:
    """oomtrace.kills: kills stored, by namespace, workload and first
    verdict, bounded to MAX_SERIES series."""

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()  # added to on ingest, read by the sender

    def add(self, ev: event_pb2.OomEvent) -> None:
        key = (ev.pod.namespace[:253], records.pod_workload(ev)[:253], records.verdict_label(ev))
        with self._lock:
            if key not in self.counts and len(self.counts) >= MAX_SERIES:
                key = (OTHER, OTHER, OTHER)
            self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.counts)

    def request(self, cluster: str, now_ns: int) -> metrics_service_pb2.ExportMetricsServiceRequest:
        points = [
            metrics_pb2.NumberDataPoint(
                start_time_unix_nano=self.start_ns,
                time_unix_nano=now_ns,
                as_int=n,
                attributes=[
                    _kv("namespace", _str(ns)),
                    _kv("workload", _str(wl)),
                    _kv("verdict", _str(vd)),
                ],
            )
            for (ns, wl, vd), n in sorted(self.snapshot().items())
        ]
        metric = metrics_pb2.Metric(
            name=KILLS_METRIC,
            description="OOM kills stored by the collector.",
            unit="{kill}",
            sum=metrics_pb2.Sum(
                data_points=points,
                aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
                is_monotonic=True,
            ),
        )
        return metrics_service_pb2.ExportMetricsServiceRequest(
            resource_metrics=[
                metrics_pb2.ResourceMetrics(
                    resource=_resource(cluster, ""),
                    scope_metrics=[
                        metrics_pb2.ScopeMetrics(
                            scope=common_pb2.InstrumentationScope(name=SCOPE_NAME),
                            metrics=[metric],
                        )
                    ],
                )
            ]
        )


class OtlpExporter:
    def __init__(
        self,
        target: OtlpTarget,
        *,
        exported: Counter,
        dropped: Counter,
        queue_depth: int | None = None,
        batch_max: int = 512,
        flush_s: float = 1.0,
        timeout_s: float = 10.0,
        retry_for_s: float = 300.0,
        metrics_every_s: float = 60.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """exported: a Counter labelled by signal (logs, metrics); dropped: a
        Counter labelled by reason (queue_full, send_failed)."""
        self.target = target
        self.exported, self.dropped = exported, dropped
        self.batch_max, self.flush_s, self.timeout_s = batch_max, flush_s, timeout_s
        self.retry_for_s, self.backoff_s = retry_for_s, backoff_s
        # A cumulative counter is sent again while no kill comes, so that a
        # backend does not take the series for gone.
        self.metrics_every_s = metrics_every_s
        self.clock = clock
        self.kills = KillCounter(clock())
        depth = target.queue_depth if queue_depth is None else queue_depth
        self._queue: queue.Queue[event_pb2.OomEvent | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, stored: list[event_pb2.OomEvent]) -> None:
        """Newly stored records; never blocks. The kill counter counts every
        stored kill, exported as a log or dropped."""
        for ev in stored:
            self.kills.add(ev)
            try:
                self._queue.put_nowait(ev)
            except queue.Full:
                self.dropped.labels("queue_full").inc()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="otlp-export")
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued if the receiver answers within timeout_s."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._stop.set()

    def _take_batch(self) -> tuple[list[event_pb2.OomEvent], bool]:
        """Up to batch_max records, waiting at most flush_s after the first;
        True when the stop mark was met. None in metrics_every_s: []."""
        try:
            first = self._queue.get(timeout=self.metrics_every_s)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_max:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                ev = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if ev is None:
                return batch, True
            batch.append(ev)
        return batch, False

    def _run(self) -> None:
        with self.target.channel() as channel:
            # The method paths of opentelemetry-proto's *_pb2_grpc stubs,
            # which are untyped; the messages are typed.
            logs = channel.unary_unary(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                request_serializer=logs_service_pb2.ExportLogsServiceRequest.SerializeToString,
                response_deserializer=logs_service_pb2.ExportLogsServiceResponse.FromString,
            )
            metrics = channel.unary_unary(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                request_serializer=metrics_service_pb2.ExportMetricsServiceRequest.SerializeToString,
                response_deserializer=metrics_service_pb2.ExportMetricsServiceResponse.FromString,
            )
            done = False
            while not done:
                batch, done = self._take_batch()
                for part in _by_size(batch, self.target.cluster):
                    request = logs_request(part, self.target.cluster, self.clock())
                    if self._send(logs, request, "logs"):
                        self.exported.labels("logs").inc(len(part))
                    else:
                        self.dropped.labels("send_failed").inc(len(part))
                if self.kills.snapshot():
                    m = self.kills.request(self.target.cluster, self.clock())
                    if self._send(metrics, m, "metrics"):
                        points = m.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
                        self.exported.labels("metrics").inc(len(points))

    def _send(self, export: Callable[..., object], request: object, signal: str) -> bool:
        """True once the receiver took it; retries the transient codes with
        doubling backoff for at most retry_for_s."""
        delay, cap = self.backoff_s
        give_up = time.monotonic() + self.retry_for_s
        while True:
            try:
                export(request, timeout=self.timeout_s)
                return True
            except grpc.RpcError as exc:
                code, details = rpc.status(exc)
                if code not in _RETRYABLE or time.monotonic() + delay > give_up:
                    log.warning(
                        "otlp.export_failed", signal=signal, code=str(code), details=details
                    )
                    return False
                log.info("otlp.retrying", signal=signal, code=str(code), in_s=delay)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, cap)
