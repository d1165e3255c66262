"""Kubernetes Events for OOM kills: a Warning Event on the victim's Pod (on
the Node for a global OOM) that says what died, how big it was against which
limit, and the first verdict, so `kubectl describe pod` shows it.

Emitted by the collector, not the agents: one RBAC grant (create and patch
events.k8s.io events) for one Deployment instead of an API token on every
node, and the collector already sees each record once (stored once, by id).

  - Deduplicated per record: the Event's name is derived from the record id,
    so a record stored twice (a resend, another collector replica) meets
    409 Conflict and is not shown twice.
  - Aggregated as Kubernetes event series are: repeated kills of the same
    container within `series_window_s` update the first Event's `series`
    (count, lastObservedTime) instead of adding Events.
  - Rate-limited: a token bucket (`qps`, `burst`) across all Events; what it
    holds back is counted, never queued without bound.
  - Off the ingest path: a thread with a bounded queue; a slow or failing API
    server costs Events (counted and logged), never an ack.

In the cluster, it authenticates with the pod's service account token and
trusts the cluster's CA, from the usual files. No API server can run where
oomtrace is tested: the tests run this against a local HTTPS server that
checks each request against the Kubernetes OpenAPI schema (the schemas
kubernetes-validate bundles) and the in-cluster bearer token."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from oomtrace import records
from oomtrace.v1 import event_pb2

log = structlog.get_logger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONTROLLER = "oomtrace.io/collector"
REASON = "OOMKilled"
NOTE_MAX_BYTES = 1024  # the API server's limit on an Event's note


@dataclass(frozen=True, slots=True)
class ApiServer:
    url: str  # https://host:port
    token_file: Path
    ca_file: Path

    @classmethod
    def in_cluster(cls) -> ApiServer:
        """From the environment Kubernetes gives every pod; KeyError outside one."""
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt")


def note(ev: event_pb2.OomEvent) -> str:
    """What `kubectl describe pod` shows: who died, how big, against which
    limit, and the first verdict. At most 1 KiB, as the API requires."""
    v = ev.victim
    where = f"container {ev.container.name}" if ev.container.name else "the node"
    limit = records.limit_hit_bytes(ev)
    cgroup = ev.cgroup.oom_memcg_path or ev.cgroup.path
    against = f"the {records.mib_text(limit)} limit of {cgroup}" if limit else "no limit"
    kind = event_pb2.OomEvent.Constraint.Name(ev.constraint)
    text = (
        f"{v.comm}[{v.pid}] in {where} was OOM-killed ({kind}): "
        f"{records.mib_text(records.rss_bytes(ev))} resident against {against}."
    )
    if ev.source == event_pb2.OomEvent.RUNTIME:
        d = ev.runtime_death
        text = (
            f"{v.comm}[{v.pid}] in {where} ran out of its {d.runtime} heap limit and ended "
            f"itself (exit {d.exit_code}; not a kernel OOM kill), against {against}."
        )
    if ev.verdicts:
        first = ev.verdicts[0]
        text += f" {first.code}: {first.explanation} {first.suggestion}"
    text += f" oomtrace show {ev.id[:12]}"
    data = text.encode()
    if len(data) > NOTE_MAX_BYTES:
        text = data[: NOTE_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."
    return text


def _micro_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _name(obj: str, record_id: str) -> str:
    """A DNS-subdomain name, unique per record, stable whoever makes it."""
    digest = hashlib.sha256(record_id.encode()).hexdigest()[:16]
    return f"{obj[:200]}.oomtrace-{digest}"


@dataclass
class _Series:
    name: str
    namespace: str
    count: int
    first_s: float


class TokenBucket:
    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps, self.burst, self.clock = qps, burst, clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.qps)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class KubeEvents:
    def __init__(
        self,
        api: ApiServer,
        *,
        instance: str | None = None,
        qps: float = 5.0,
        burst: int = 25,
        series_window_s: float = 600.0,
        queue_depth: int = 1000,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.instance = instance or socket.gethostname()
        self.bucket = TokenBucket(qps, burst)
        self.series_window_s = series_window_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._queue: queue.Queue[event_pb2.OomEvent | None] = queue.Queue(queue_depth)
        self._series: OrderedDict[tuple[str, str, str, str], _Series] = OrderedDict()
        self._thread: threading.Thread | None = None
        # What became of each record: created, updated (a series), duplicate,
        # not_kubernetes (no pod, not global), rate_limited, dropped (queue
        # full), failed (the API server said no, or did not answer).
        self.outcomes: dict[str, int] = {}
        self._ssl = ssl.create_default_context(cafile=str(api.ca_file))

    # -- feeding ------------------------------------------------------------------

    def offer(self, stored: list[event_pb2.OomEvent]) -> None:
        """Newly stored records; never blocks."""
        for ev in stored:
            try:
                self._queue.put_nowait(ev)
            except queue.Full:
                self._count("dropped")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="kube-events")
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            ev = self._queue.get()
            if ev is None:
                return
            try:
                self.emit(ev)
            except Exception:
                self._count("failed")
                log.exception("kube_events.failed", id=ev.id)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    # -- one record ---------------------------------------------------------------

    def emit(self, ev: event_pb2.OomEvent) -> str:
        """Creates or updates the Event of one record; returns the outcome."""
        outcome = self._emit(ev)
        self._count(outcome)
        return outcome

    def _emit(self, ev: event_pb2.OomEvent) -> str:
        regarding = self._regarding(ev)
        if regarding is None:
            return "not_kubernetes"
        namespace = regarding.get("namespace", "default")
        key = (namespace, regarding["kind"], regarding["name"], ev.container.name)
        killed_s = ev.killed_at.ToNanoseconds() / 1e9
        series = self._series.get(key)
        if series is not None and killed_s - series.first_s <= self.series_window_s:
            if not self.bucket.take():
                return "rate_limited"
            series.count += 1
            patch = {
                "series": {"count": series.count, "lastObservedTime": _micro_time(killed_s)},
                "note": note(ev),
            }
            self._request("PATCH", namespace, series.name, patch)
            return "updated"
        if not self.bucket.take():
            return "rate_limited"
        name = _name(regarding["name"], ev.id)
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "eventTime": _micro_time(killed_s),
            "reportingController": CONTROLLER,
            "reportingInstance": self.instance[:128],
            "action": "OOMKill",
            "reason": REASON,
            "type": "Warning",
            "regarding": regarding,
            "note": note(ev),
        }
        status = self._request("POST", namespace, None, body)
        self._series[key] = _Series(name, namespace, 1, killed_s)
        while len(self._series) > 10_000:
            self._series.popitem(last=False)
        return "duplicate" if status == 409 else "created"

    @staticmethod
    def _regarding(ev: event_pb2.OomEvent) -> dict[str, Any] | None:
        if ev.pod.name and ev.pod.namespace:
            obj: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": ev.pod.namespace,
                "name": ev.pod.name,
            }
            if ev.pod.uid:
                obj["uid"] = ev.pod.uid
            if ev.container.name:
                obj["fieldPath"] = f"spec.containers{{{ev.container.name}}}"
            return obj
        if ev.constraint == event_pb2.OomEvent.GLOBAL and ev.node:
            return {"apiVersion": "v1", "kind": "Node", "name": ev.node}
        return None

    def _request(self, method: str, namespace: str, name: str | None, body: dict[str, Any]) -> int:
        """The HTTP status; 409 (already exists) is an answer, not an error."""
        path = f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"
        if name is not None:
            path += f"/{name}"
        token = self.api.token_file.read_text().strip()  # re-read: tokens are rotated
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        req = urllib.request.Request(
            self.api.url + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": content_type,
                "Accept": "application/json",
                "User-Agent": "oomtrace-collector",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            if exc.code == 409 and method == "POST":
                return 409
            detail = exc.read(2000).decode(errors="replace")
            raise RuntimeError(f"{method} {path}: {exc.code} {detail}") from None
