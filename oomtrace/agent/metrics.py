"""The agent's Prometheus metrics, served on --metrics-listen.

Names follow Prometheus' conventions (oomtrace_ prefix, _total for counters,
base units in names). Labels are bounded by what one node holds: namespace,
pod, container (the pods on the node), constraint and source (closed sets),
hook, cause, layer and reason (closed sets). Never a pid, a record id or a
cgroup path: those grow without bound.

  oomtrace_oom_kills_total{namespace,pod,container,constraint,source,verdict}
      every kill recorded, by its record's `kills` (a COUNTER record stands
      for several); a group kill's victims and a container's non-first
      processes count each. source: live, kmsg (recovered from the kernel's
      log), counter (known only from a kill counter), userspace (a
      userspace OOM killer's signal). verdict: the code of the record's
      first verdict (TMPFS_MEMORY, KERNEL_MEMORY, ...; a closed set, "" for
      none).
  oomtrace_kernel_log_recovered_kills_total{source}
      the kills of those that the BPF side did not see.
  oomtrace_records_total                 records handed to the sinks
  oomtrace_events_lost_total{layer,cause}
      layer kernel: the BPF side could not hand an event over (cause: the
      buffer or map that was full); buffer: the perf buffer dropped it;
      decode: user space could not decode it; callback: handling it raised;
      sink: a sink failed; spool: the spool was full.
  oomtrace_spool_records                 records waiting for the collector
  oomtrace_spool_oldest_record_age_seconds
  oomtrace_hook_attached{hook}           1 attached, 0 skipped
  oomtrace_pressure_windows_total{reason}
  oomtrace_pressure_seconds_missed_total seconds the sampler took no point for
  oomtrace_build_info{version,kernel}    1
  process_cpu_seconds_total, process_resident_memory_bytes, ...
      the agent's own CPU and RSS (prometheus_client's process collector)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from oomtrace import __version__, exposition
from oomtrace.records import verdict_label
from oomtrace.v1 import event_pb2


@dataclass(frozen=True, slots=True)
class Losses:
    """Every loss the agent counts, read at scrape time."""

    kernel: dict[str, int]
    buffer: dict[str, int]
    decode: int
    sink: int
    spool: int
    callback: int = 0


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.kills = Counter(
            "oomtrace_oom_kills",
            "OOM kills recorded on this node.",
            ["namespace", "pod", "container", "constraint", "source", "verdict"],
            registry=self.registry,
        )
        self.recovered = Counter(
            "oomtrace_kernel_log_recovered_kills",
            "OOM kills the BPF side did not see, recovered from the kernel's log or counters.",
            ["source"],
            registry=self.registry,
        )
        self.records = Counter(
            "oomtrace_records", "Records handed to the sinks.", registry=self.registry
        )
        self.pressure = Counter(
            "oomtrace_pressure_windows",
            "Pressure windows recorded, by each reason they had.",
            ["reason"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self._state: _StateCollector | None = None

    def recorded(self, ev: event_pb2.OomEvent) -> None:
        source = event_pb2.OomEvent.Source.Name(ev.source).lower()
        n = max(ev.kills, 1)
        self.kills.labels(
            ev.pod.namespace,
            ev.pod.name,
            ev.container.name,
            event_pb2.OomEvent.Constraint.Name(ev.constraint).lower(),
            source,
            verdict_label(ev),
        ).inc(n)
        if ev.source in (event_pb2.OomEvent.KMSG, event_pb2.OomEvent.COUNTER):
            self.recovered.labels(source).inc(n)
        self.records.inc()

    def pressure_recorded(self, reasons: Sequence[str]) -> None:
        for reason in reasons:
            self.pressure.labels(reason).inc()

    def watch(
        self,
        *,
        losses: Callable[[], Losses],
        hooks: Sequence[tuple[str, bool]],
        spool_depth: Callable[[], int] | None = None,
        spool_oldest_at: Callable[[], float | None] | None = None,
        seconds_missed: Callable[[], int] = lambda: 0,
    ) -> None:
        """What is read from the agent's own counters at each scrape."""
        self._state = _StateCollector(losses, hooks, spool_depth, spool_oldest_at, seconds_missed)
        self.registry.register(self._state)

    def serve(self, address: str, health: exposition.Health | None = None) -> int:
        """Serves /metrics, and /healthz when `health` is given, on host:port
        (port 0: any); returns the port."""
        return exposition.serve(self.registry, address, health)


class _StateCollector(Collector):
    def __init__(
        self,
        losses: Callable[[], Losses],
        hooks: Sequence[tuple[str, bool]],
        spool_depth: Callable[[], int] | None,
        spool_oldest_at: Callable[[], float | None] | None,
        seconds_missed: Callable[[], int],
    ) -> None:
        self.losses = losses
        self.hooks = tuple(hooks)
        self.spool_depth = spool_depth
        self.spool_oldest_at = spool_oldest_at
        self.seconds_missed = seconds_missed

    def collect(self) -> Iterable[Metric]:
        lost = CounterMetricFamily(
            "oomtrace_events_lost",
            "Events lost, by where and why; a kill lost here may still be recovered from the "
            "kernel's log (oomtrace_kernel_log_recovered_kills_total).",
            labels=["layer", "cause"],
        )
        lost_now = self.losses()
        for cause, n in sorted(lost_now.kernel.items()):
            lost.add_metric(["kernel", cause], n)
        for cause, n in sorted(lost_now.buffer.items()):
            lost.add_metric(["buffer", cause], n)
        lost.add_metric(["decode", "undecodable"], lost_now.decode)
        lost.add_metric(["sink", "write_failed"], lost_now.sink)
        lost.add_metric(["spool", "full"], lost_now.spool)
        lost.add_metric(["callback", "exception"], lost_now.callback)
        yield lost
        hooks = GaugeMetricFamily(
            "oomtrace_hook_attached",
            "Whether each hook is attached (1) or skipped (0).",
            labels=["hook"],
        )
        for name, attached in self.hooks:
            hooks.add_metric([name], 1.0 if attached else 0.0)
        yield hooks
        if self.spool_depth is not None:
            yield GaugeMetricFamily(
                "oomtrace_spool_records",
                "Records on disk waiting for the collector's acknowledgement.",
                value=self.spool_depth(),
            )
        if self.spool_oldest_at is not None:
            oldest = self.spool_oldest_at()
            yield GaugeMetricFamily(
                "oomtrace_spool_oldest_record_age_seconds",
                "How long the oldest record waiting for the collector has waited (0: none waits).",
                value=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
            )
        yield CounterMetricFamily(
            "oomtrace_pressure_seconds_missed",
            "Seconds the pressure sampler took no point for (the agent was starved).",
            value=self.seconds_missed(),
        )
        info = GaugeMetricFamily(
            "oomtrace_build_info",
            "The agent's version and the node's kernel.",
            labels=["version", "kernel"],
        )
        info.add_metric([__version__, os.uname().release], 1.0)
        yield info
