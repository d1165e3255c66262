"""`oomtrace collector`: the store, the server, retention; stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import structlog
from grpc_health.v1 import health_pb2

from oomtrace import tls
from oomtrace.collector.kube_events import ApiServer, KubeEvents
from oomtrace.collector.metrics import CollectorMetrics
from oomtrace.collector.otlp import OtlpExporter, OtlpTarget
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.collector.store import Store

log = structlog.get_logger(__name__)


def open_store(where: Path | str, password: str | None = None) -> Store:
    """The SQLite file at a path, or the PostgreSQL database at a URL."""
    if isinstance(where, str) and where.startswith(("postgresql://", "postgres://")):
        from oomtrace.collector.postgres import PostgresStore

        return PostgresStore(where, password=password)
    return SqliteStore(Path(where))


def run_collector(
    listen: str,
    db: Path | str,
    retention_s: int,
    prune_every_s: float = 3600,
    metrics_listen: str | None = None,
    kube_api: ApiServer | None = None,
    tls_files: tuple[Path, Path, Path] | None = None,
    store_password: str | None = None,
    otlp: OtlpTarget | None = None,
) -> None:
    """kube_api: where to post Kubernetes Events for kills (None: none).
    tls_files: (certificate, key, client CA) for mutual TLS; None serves
    plaintext (the caller allows that on a local address only)."""
    credentials = tls.server_credentials(*tls_files) if tls_files else None
    store = open_store(db, store_password)
    metrics = CollectorMetrics()
    kube = KubeEvents(kube_api) if kube_api is not None else None
    on_stored = []
    if kube is not None:
        kube.start()
        metrics.watch_kube_events(lambda: dict(kube.outcomes))
        on_stored.append(kube.offer)
        log.info("kube_events.enabled", api=kube_api.url if kube_api else "")
    exporter = None
    if otlp is not None:
        exporter = OtlpExporter(otlp, exported=metrics.otlp_exported, dropped=metrics.otlp_dropped)
        exporter.start()
        on_stored.append(exporter.offer)
        log.info("otlp.enabled", endpoint=otlp.endpoint, tls=otlp.credentials is not None)
    server, port, health = create_server(
        listen, store, metrics=metrics, on_stored=on_stored, credentials=credentials
    )
    if metrics_listen:
        # /healthz for a probe that has no client certificate (a kubelet's):
        # the gRPC health of the whole server, which says whether it stores.
        def healthy() -> tuple[bool, str]:
            request = health_pb2.HealthCheckRequest(service="")
            status = health.Check(request, None).status
            ok = status == health_pb2.HealthCheckResponse.SERVING
            return ok, "serving" if ok else "not serving: the store cannot write"

        port_m = metrics.serve(metrics_listen, health=healthy)
        log.info("metrics.serving", address=metrics_listen, port=port_m)
    stop = threading.Event()

    def prune() -> None:
        while not stop.is_set():
            cutoff = time.time_ns() - retention_s * 1_000_000_000
            removed = store.prune(cutoff)
            metrics.pruned.inc(removed)
            if removed:
                log.info("store.pruned", removed=removed, retention_s=retention_s)
            stop.wait(prune_every_s)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    threading.Thread(target=prune, daemon=True, name="retention").start()
    log.info(
        "collector.ready",
        listen=listen,
        port=port,
        tls="mutual" if credentials else "off (local address)",
        store=store.path,
        records=store.count(),
        schema_version=store.schema_version,
        retention_s=retention_s,
    )
    stop.wait()
    health.enter_graceful_shutdown()
    # Bounded: gRPC Python's shutdown can wait forever on a call whose request
    # failed to deserialize (grpc/grpc#6891); what is committed is committed.
    finished = server.stop(grace=5).wait(timeout=10)
    if kube is not None:
        kube.stop()
    if exporter is not None:
        exporter.stop()
    store.close()
    log.info("collector.stopped", grpc_shutdown_finished=finished)
    if not finished:
        # Everything acknowledged is committed and the store is closed; do not
        # let gRPC's stuck shutdown hold the process at interpreter exit.
        os._exit(0)
