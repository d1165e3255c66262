"""`oomtrace collector`: the store, the server, retention; stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import structlog

from oomtrace.collector.metrics import CollectorMetrics
from oomtrace.collector.service import create_server
from oomtrace.collector.store import SqliteStore

log = structlog.get_logger(__name__)


def run_collector(
    listen: str,
    db: Path,
    retention_s: int,
    prune_every_s: float = 3600,
    metrics_listen: str | None = None,
) -> None:
    store = SqliteStore(db)
    metrics = CollectorMetrics()
    server, port, health = create_server(listen, store, metrics=metrics)
    if metrics_listen:
        log.info("metrics.serving", address=metrics_listen, port=metrics.serve(metrics_listen))
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
        db=str(db),
        records=store.count(),
        schema_version=store.schema_version,
        retention_s=retention_s,
    )
    stop.wait()
    health.enter_graceful_shutdown()
    # Bounded: gRPC Python's shutdown can wait forever on a call whose request
    # failed to deserialize (grpc/grpc#6891); what is committed is committed.
    finished = server.stop(grace=5).wait(timeout=10)
    store.close()
    log.info("collector.stopped", grpc_shutdown_finished=finished)
    if not finished:
        # Everything acknowledged is committed and the store is closed; do not
        # let gRPC's stuck shutdown hold the process at interpreter exit.
        os._exit(0)
