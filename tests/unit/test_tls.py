"""Mutual TLS and roles on a real collector, tried as an attacker would: no
certificate, another CA's, an expired one, an agent reading history, a
reader ingesting, a node forging another's records; a renewed certificate
served without a restart; plaintext refused where it is not local."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from oomtrace import logs, tls
from oomtrace.cli import main
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.unit.events import make_event
from tests.unit.test_collector_service import ingest

HOST = "localhost"


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main would bind structlog to this test's captured stderr, which is
    closed after it (as in test_cli)."""
    monkeypatch.setattr(logs, "configure", lambda level: None)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    tls.make_set(
        d,
        nodes=("node-a", "node-b"),
        shared_agents=True,
        readers=("alice",),
        collector_hosts=(HOST,),
    )
    return d


@pytest.fixture
def collector(tmp_path: Path, pki: Path) -> Iterator[tuple[str, SqliteStore]]:
    store = SqliteStore(tmp_path / "c.db")
    creds = tls.server_credentials(pki / "collector.crt", pki / "collector.key", pki / "ca.crt")
    srv, port, _ = create_server("127.0.0.1:0", store, credentials=creds)
    srv.start()
    yield f"{HOST}:{port}", store
    srv.stop(grace=0.1).wait(timeout=5)
    store.close()


def as_(pki: Path, name: str | None, target: str, ca: Path | None = None) -> grpc.Channel:
    return tls.channel(
        target,
        ca=ca or pki / "ca.crt",
        cert=pki / f"{name}.crt" if name else None,
        key=pki / f"{name}.key" if name else None,
    )


def history(channel: grpc.Channel) -> collector_pb2.ListEventsResponse:
    stub = collector_pb2_grpc.HistoryServiceStub(channel)
    return stub.ListEvents(collector_pb2.ListEventsRequest(), timeout=5)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = err.value.code()
    return code


def test_a_reader_queries_and_an_agent_ingests(
    pki: Path, collector: tuple[str, SqliteStore]
) -> None:
    target, _store = collector
    with as_(pki, "node-a", target) as ch:
        (ack,) = ingest(ch, [make_event(node="node-a")])
    assert ack.stored
    with as_(pki, "alice", target) as ch:
        assert len(history(ch).events) == 1


def test_no_certificate_another_ca_or_an_expired_one_cannot_connect(
    pki: Path, collector: tuple[str, SqliteStore], tmp_path: Path
) -> None:
    target, _store = collector
    with as_(pki, None, target) as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.UNAVAILABLE
    other = tmp_path / "other"
    tls.make_set(other, readers=("mallory",), collector_hosts=(HOST,))
    with tls.channel(
        target, ca=pki / "ca.crt", cert=other / "mallory.crt", key=other / "mallory.key"
    ) as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.UNAVAILABLE
    ca = tls._load_ca(pki)
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    tls.issue(pki, "expired", ca=ca, roles=(tls.QUERY,), days=1, not_before=long_ago)
    with as_(pki, "expired", target) as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the collector's CA does not talk to it.
    with as_(pki, "alice", target, ca=other / "ca.crt") as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.UNAVAILABLE


def test_an_agent_cannot_read_and_a_reader_cannot_ingest(
    pki: Path, collector: tuple[str, SqliteStore]
) -> None:
    target, store = collector
    with as_(pki, "node-a", target) as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.PERMISSION_DENIED
    with as_(pki, "agents", target) as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.PERMISSION_DENIED
    with as_(pki, "alice", target) as ch:
        assert code_of(lambda: ingest(ch, [make_event()])) == grpc.StatusCode.PERMISSION_DENIED
    assert store.count() == 0


def test_a_node_cannot_send_another_nodes_records(
    pki: Path, collector: tuple[str, SqliteStore]
) -> None:
    """Rejected one by one: the forged record, not the stream."""
    target, store = collector
    forged, own = make_event(node="node-b"), make_event(node="node-a")
    with as_(pki, "node-a", target) as ch:
        acks = ingest(ch, [forged, own])
    assert [a.id for a in acks if a.stored] == [own.id]
    (rejected,) = [a for a in acks if a.rejected]
    assert rejected.id == forged.id
    assert "node-b" in rejected.rejected
    # The DaemonSet's shared identity may speak for any node.
    with as_(pki, "agents", target) as ch:
        (ack,) = ingest(ch, [forged])
    assert ack.stored
    assert store.count() == 2


def test_a_renewed_certificate_is_served_without_a_restart(
    pki: Path, collector: tuple[str, SqliteStore], tmp_path: Path
) -> None:
    """The collector's pair is replaced by one from a new CA: new connections
    get it (clients trusting only the new CA connect), no restart."""
    target, _store = collector
    new = tmp_path / "renewed"
    tls.make_set(new, readers=("alice",), collector_hosts=(HOST,))
    with as_(pki, "alice", target, ca=new / "ca.crt") as ch:
        assert code_of(lambda: history(ch)) == grpc.StatusCode.UNAVAILABLE
    for name in ("collector.crt", "collector.key"):
        tmp = pki / f"{name}.new"
        tmp.write_bytes((new / name).read_bytes())
        os.replace(tmp, pki / name)
    with tls.channel(
        target, ca=new / "ca.crt", cert=pki / "alice.crt", key=pki / "alice.key"
    ) as ch:
        history(ch)  # the client CA is unchanged: alice's old certificate still counts


def test_plaintext_only_where_it_is_local(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tls.is_local("127.0.0.1:50051")
    assert tls.is_local("[::1]:1")
    assert tls.is_local("unix:/x")
    assert not tls.is_local("0.0.0.0:50051")
    assert not tls.is_local("collector.oomtrace.svc:50051")
    rc = main(["collector", "--insecure", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "c.db")])
    assert rc == 2
    assert "loopback" in capsys.readouterr().err
    rc = main(["collector", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db")])
    assert rc == 2
    assert "--client-ca" in capsys.readouterr().err
    with pytest.raises(tls.TlsError, match="not local"):
        tls.channel("collector.example:50051")
    # A client that asks for it may send in plaintext anywhere.
    tls.channel("collector.example:50051", insecure=True).close()


def test_a_query_client_says_what_is_missing(
    pki: Path, collector: tuple[str, SqliteStore], capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = collector
    rc = main(["history", "--collector", target, "--tls-ca", str(pki / "ca.crt")])
    assert rc == 1
    assert "unreachable" in capsys.readouterr().err  # no certificate: the handshake fails
    rc = main(
        [
            "history",
            "--collector",
            target,
            "--tls-ca",
            str(pki / "ca.crt"),
            "--tls-cert",
            str(pki / "alice.crt"),
            "--tls-key",
            str(pki / "alice.key"),
        ]
    )
    assert rc == 0, capsys.readouterr().err


def test_a_unix_socket_for_local_use(tmp_path: Path) -> None:
    """Plaintext on a socket only this machine's users (by its mode) reach."""
    store = SqliteStore(tmp_path / "c.db")
    sock = f"unix:{tmp_path}/collector.sock"
    srv, _port, _ = create_server(sock, store)
    srv.start()
    try:
        with tls.channel(sock) as ch:
            (ack,) = ingest(ch, [make_event()])
            assert ack.stored
            assert len(history(ch).events) == 1
    finally:
        srv.stop(grace=0.1).wait(timeout=5)
        store.close()
