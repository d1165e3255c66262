"""The collector's Prometheus metrics, served on --metrics-listen.

Labels are closed sets (kind, outcome, method): never a node, a record id or
anything an agent sends, so no client can grow the series. The one exception,
cluster, is bounded: the first MAX_CLUSTERS names seen, the rest "other".

  oomtrace_collector_records_total{kind,outcome}
      records received: kind kill|pressure, outcome stored|duplicate|rejected
  oomtrace_collector_cluster_kills_total{cluster}
      kill records stored, by the cluster they came from
  oomtrace_collector_ingest_commit_seconds   storing one batch durably (an ack waits for it)
  oomtrace_collector_query_seconds{method}   each query (ListEvents, GetEvent, Top, ...)
  oomtrace_collector_watchers                WatchEvents streams open
  oomtrace_collector_ingest_streams          agent ingest streams open
  oomtrace_collector_ingest_queued_bytes     received, waiting for the store's writer
  oomtrace_collector_stored_records          kill records in the store
  oomtrace_collector_store_bytes             the store's size on disk
  oomtrace_collector_pruned_records_total    records retention removed
  oomtrace_collector_kube_events_total{outcome}
      Kubernetes Events: created, updated (a series), duplicate, rate_limited,
      dropped, failed, not_kubernetes
  process_*                                  the collector's own CPU and memory
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from oomtrace import exposition, tls

# Queries should answer in tens of ms; commits take an fsync or two.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# Distinct cluster label values at most.
MAX_CLUSTERS = 100


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.records = Counter(
            "oomtrace_collector_records",
            "Records received from agents, by kind and what became of them.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.cluster_kills = Counter(
            "oomtrace_collector_cluster_kills",
            "Kill records stored, by the cluster they came from.",
            ["cluster"],
            registry=self.registry,
        )
        self._clusters: set[str] = set()
        self.commit_seconds = Histogram(
            "oomtrace_collector_ingest_commit_seconds",
            "Time to store one batch of records durably; each ack waits for it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "oomtrace_collector_query_seconds",
            "Time to answer one query, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.forged = Counter(
            "oomtrace_collector_forged_node_records",
            "Records rejected because they named a node other than their sender's certificate.",
            registry=self.registry,
        )
        self.pruned = Counter(
            "oomtrace_collector_pruned_records",
            "Records removed by retention.",
            registry=self.registry,
        )
        self.otlp_exported = Counter(
            "oomtrace_collector_otlp_exported",
            "Kill records (logs) and oomtrace.kills data points (metrics) an "
            "OpenTelemetry Collector accepted (--otlp-endpoint).",
            ["signal"],
            registry=self.registry,
        )
        self.otlp_dropped = Counter(
            "oomtrace_collector_otlp_dropped",
            "Kill records not exported over OTLP: the queue was full, or the "
            "receiver refused or did not answer within the retry time.",
            ["reason"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    def received(self, kind: str, stored: int, duplicate: int, rejected: int) -> None:
        for outcome, n in (("stored", stored), ("duplicate", duplicate), ("rejected", rejected)):
            if n:
                self.records.labels(kind, outcome).inc(n)

    def stored_in(self, cluster: str, n: int) -> None:
        """n kill records of a cluster stored; a cluster past the first
        MAX_CLUSTERS seen is counted as "other" (agents name it)."""
        if cluster not in self._clusters:
            if len(self._clusters) >= MAX_CLUSTERS:
                cluster = "other"
            else:
                self._clusters.add(cluster)
        self.cluster_kills.labels(cluster).inc(n)

    def watch_state(
        self,
        *,
        watchers: Callable[[], int],
        records: Callable[[], int],
        size: Callable[[], int],
        streams: Callable[[], int] = lambda: 0,
        queued: Callable[[], int] = lambda: 0,
    ) -> None:
        """What is read at each scrape: open watches and agent streams, the
        bytes waiting for the store's writer, and the store's size."""
        self.registry.register(_StateCollector(watchers, records, size, streams, queued))

    def watch_kube_events(self, outcomes: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_KubeEventsCollector(outcomes))

    def serve(self, address: str, health: exposition.Health | None = None) -> int:
        """Serves /metrics, and /healthz when `health` is given, on host:port
        (port 0: any); returns the port."""
        return exposition.serve(self.registry, address, health)


class _StateCollector(Collector):
    def __init__(
        self,
        watchers: Callable[[], int],
        records: Callable[[], int],
        size: Callable[[], int],
        streams: Callable[[], int],
        queued: Callable[[], int],
    ) -> None:
        self.watchers, self.records, self.size = watchers, records, size
        self.streams, self.queued = streams, queued

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "oomtrace_collector_ingest_streams",
            "Agent ingest streams open (one per connected agent).",
            value=self.streams(),
        )
        yield GaugeMetricFamily(
            "oomtrace_collector_ingest_queued_bytes",
            "Bytes of records received and waiting for the store's writer.",
            value=self.queued(),
        )
        yield GaugeMetricFamily(
            "oomtrace_collector_watchers", "WatchEvents streams open.", value=self.watchers()
        )
        yield GaugeMetricFamily(
            "oomtrace_collector_stored_records",
            "Kill records in the store.",
            value=self.records(),
        )
        yield GaugeMetricFamily(
            "oomtrace_collector_store_bytes", "The store's size on disk.", value=self.size()
        )


class _KubeEventsCollector(Collector):
    def __init__(self, outcomes: Callable[[], dict[str, int]]) -> None:
        self.outcomes = outcomes

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "oomtrace_collector_kube_events",
            "Kubernetes Events for stored records, by what became of them.",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.outcomes().items()):
            family.add_metric([outcome], n)
        yield family


class QueryTimer(tls.AioServerInterceptor):
    """Times every unary call of the history service (the asyncio server)."""

    def __init__(self, metrics: CollectorMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(  # type: ignore[override]  # None: no such method
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or not method.startswith("/oomtrace.v1.HistoryService/")
            or handler.unary_unary is None
        ):
            return handler
        histogram = self.metrics.query_seconds.labels(method.rsplit("/", 1)[1])
        inner = cast("Callable[..., Awaitable[Any]]", handler.unary_unary)

        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                histogram.observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
