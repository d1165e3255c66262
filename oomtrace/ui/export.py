"""`oomtrace show ID -o html`: one kill's post-mortem as a single file to
attach to a ticket: the ui's page with its stylesheet inline, no script, no
link that needs the ui (the incident's other kills are listed by id)."""

from __future__ import annotations

from oomtrace import client
from oomtrace.ui import pages, server
from oomtrace.v1 import collector_pb2, collector_pb2_grpc


def document(
    stub: collector_pb2_grpc.HistoryServiceStub, req: collector_pb2.GetEventRequest
) -> str:
    ev = stub.GetEvent(req, timeout=30)
    incident = server.incident_of(stub, ev)
    return pages.kill_page(ev, incident, standalone=True)


def page(c: client.Collector, ident: str) -> str:
    """`oomtrace show ID -o html`: the record's post-mortem, asked of the
    collector the CLI was given."""
    req = collector_pb2.GetEventRequest(id=ident)
    return str(client.call(c, lambda stub: document(stub, req)))
