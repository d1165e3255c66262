"""Serving a Prometheus registry over HTTP, for the agent and the collector."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def serve(registry: CollectorRegistry, address: str) -> int:
    """/metrics on host:port (an empty host: every address; port 0: any free
    one) from a thread of prometheus_client's; returns the port."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    return int(server.server_address[1])
