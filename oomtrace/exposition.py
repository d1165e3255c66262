"""Serving a Prometheus registry over HTTP, for the agent and the collector,
with /healthz beside /metrics for a Kubernetes probe."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app

# Every counter and histogram would also export a `<name>_created` series
# (the time it was made): twice the series for nothing a rate() needs. Global
# to prometheus_client; both the agent's and the collector's metrics import
# this module before they make a metric.
disable_created_metrics()  # type: ignore[no-untyped-call]

# (healthy, one line saying why)
Health = Callable[[], tuple[bool, str]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def serve(registry: CollectorRegistry, address: str, health: Health | None = None) -> int:
    """/metrics (and /healthz when `health` is given: 200 or 503 with its
    reason) on host:port (an empty host: every address; port 0: any free
    one), from a daemon thread; returns the port."""
    host, _, port = address.rpartition(":")
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if health is not None and environ.get("PATH_INFO") == "/healthz":
            ok, why = health()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8")],
            )
            return [why.encode() + b"\n"]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host or "0.0.0.0", int(port), app, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return int(server.server_address[1])
