"""Agents spread over collectors: several addresses, one name with several
addresses, and connections closed at their maximum age so that agents
reconnect (and spread again) without losing or doubling a record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomtrace import tls
from oomtrace.agent.delivery.export import Exporter
from oomtrace.agent.delivery.spool import Spool
from oomtrace.collector.service import CollectorServer, create_server
from oomtrace.collector.sqlite import SqliteStore
from tests.unit.events import make_event
from tests.unit.test_spool_export import wait_until

AGENTS = 16


@pytest.fixture
def two(tmp_path: Path) -> Iterator[list[tuple[str, SqliteStore]]]:
    """Two collectors, each its own store, on two loopback addresses."""
    out: list[tuple[str, SqliteStore]] = []
    servers: list[CollectorServer] = []
    port = 0
    for i, host in enumerate(("127.0.0.1", "127.0.0.2")):
        store = SqliteStore(tmp_path / f"c{i}.db")
        # The second on the first's port (another address): one name, one port.
        srv, port, _ = create_server(f"{host}:{port}", store)
        srv.start()
        servers.append(srv)
        out.append((f"{host}:{port}", store))
    yield out
    for srv in servers:
        srv.stop(0.1).wait(timeout=5)
    for _, store in out:
        store.close()


def _agents(tmp_path: Path, target: str, lookup: Callable[[str, int], list[str]]) -> list[Exporter]:
    exporters = []
    for i in range(AGENTS):
        spool = Spool(tmp_path / f"spool-{i}")
        spool.put(make_event())
        ex = Exporter(spool, target, client_tls=tls.ClientTls(insecure=True), lookup=lookup)
        ex.start()
        exporters.append(ex)
    return exporters


@pytest.mark.parametrize("form", ["list", "one name"])
def test_agents_given_several_collectors_spread_over_them(
    two: list[tuple[str, SqliteStore]], tmp_path: Path, form: str
) -> None:
    """Both collectors get agents (all on one: 2**-15 by chance)."""
    addrs = [a for a, _ in two]
    ports = {a.rsplit(":", 1)[1] for a in addrs}
    # One name with several addresses: this machine has no such name, so the
    # lookup is given (two loopback addresses on one port); the exporter
    # dials what it picks, through a real channel.
    if form == "one name":
        if len(ports) > 1:
            pytest.skip("the two collectors did not get the same port")
        target = f"collectors.test:{ports.pop()}"
    else:
        target = ",".join(addrs)

    def lookup(host: str, port: int) -> list[str]:
        assert host == "collectors.test"
        return ["127.0.0.1", "127.0.0.2"]

    exporters = _agents(tmp_path, target, lookup)
    try:
        wait_until(lambda: sum(store.count() for _, store in two) == AGENTS)
        assert all(store.count() > 0 for _, store in two), [s.count() for _, s in two]
    finally:
        for ex in exporters:
            ex.stop()


def test_a_connection_past_its_maximum_age_is_closed_and_the_agent_comes_back(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "c.db")
    srv, port, _ = create_server(
        "127.0.0.1:0", store, max_connection_age_s=0.5, max_connection_age_grace_s=0.2
    )
    srv.start()
    spool = Spool(tmp_path / "spool")
    ex = Exporter(spool, f"127.0.0.1:{port}", min_backoff_s=0.05, max_backoff_s=0.2)
    ex.start()
    try:
        sent = [make_event() for _ in range(6)]
        for ev in sent[:3]:
            spool.put(ev)
        wait_until(lambda: len(spool) == 0)
        first = ex.failed_sessions
        wait_until(lambda: ex.failed_sessions >= first + 2)  # closed at its age, twice
        for ev in sent[3:]:
            spool.put(ev)
        wait_until(lambda: len(spool) == 0)
        assert sorted(store.ids_with_prefix("", 100)) == sorted(ev.id for ev in sent)
    finally:
        ex.stop()
        srv.stop(0.1).wait(timeout=5)
        store.close()
