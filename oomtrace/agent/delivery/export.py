"""Streams spooled records to the collector and deletes each one from the
spool when the collector acknowledges it. At-least-once: a record whose ack
was lost is sent again on the next connection, and the collector stores it
once (records have stable ids). Reconnects with capped exponential backoff
and jitter, so that agents a collector dropped together do not come back
together.

Spread over collectors: given several addresses, an agent starts at a random
one; given a DNS name with several addresses, it resolves the name at each
connection and dials one of them at random (the certificate still checked
against the name). Collectors close connections
past a maximum age, so agents spread again over the collectors there are."""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
from collections.abc import Callable, Iterator

import grpc
import structlog

from oomtrace import rpc, tls
from oomtrace.agent.delivery.spool import Spool
from oomtrace.agent.record.parts import fit_to_wire
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

log = structlog.get_logger(__name__)


def resolve(host: str, port: int) -> list[str]:
    """The addresses a name has now (none when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


def pick_address(
    target: str, lookup: Callable[[str, int], list[str]] = resolve
) -> tuple[str, list[tuple[str, str]]]:
    """What to dial for target: one of its name's addresses at random, with
    the channel options that keep the name for TLS and the authority; the
    target as it is when it is an address, a URI, or a name with one address
    (gRPC resolves it again then)."""
    if "://" in target or target.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
        return target, []
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return target, []
    try:
        ipaddress.ip_address(host)
        return target, []
    except ValueError:
        pass
    addresses = lookup(host, int(port))
    if len(addresses) < 2:
        return target, []
    address = random.choice(addresses)
    dial = f"ipv6:[{address}]:{port}" if ":" in address else f"ipv4:{address}:{port}"
    return dial, [("grpc.ssl_target_name_override", host), ("grpc.default_authority", target)]


class SpoolSink:
    """The runner's first sink: a record is on disk before anything else."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def emit(self, event: event_pb2.OomEvent) -> None:
        self.spool.put(event)

    def emit_pressure(self, record: event_pb2.PressureRecord) -> None:
        self.spool.put_pressure(record)


class Exporter:
    def __init__(
        self,
        spool: Spool,
        target: str,
        *,
        window: int = 256,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        client_tls: tls.ClientTls | None = None,
        lookup: Callable[[str, int], list[str]] = resolve,
    ) -> None:
        """lookup: a name's addresses (DNS, by default)."""
        self.spool = spool
        self.lookup = lookup
        # Several collectors (a,b,c): one at a time, the next after a failed
        # or broken session. Each stores a record once by (node, id), so a
        # record resent through another is acknowledged as a duplicate.
        self.targets = [t.strip() for t in target.split(",") if t.strip()]
        if not self.targets:
            raise ValueError("no collector address")
        # A random start: a thousand agents given the same list do not all
        # go to its first collector.
        self.target = random.choice(self.targets)
        # Checked once here (files readable, plaintext only where allowed);
        # read again at each connection, so a renewed certificate is used.
        self.tls = client_tls or tls.ClientTls()
        for t in self.targets:
            self.tls.check(t)
        self.window = window
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.acked = 0
        self.rejected = 0
        self.failed_sessions = 0  # connections that failed or broke
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="exporter")
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            try:
                self._session()
                backoff = self.min_backoff_s
            except grpc.RpcError as exc:
                self.failed_sessions += 1
                code, detail = rpc.status(exc)
                log.warning(
                    "export.reconnecting",
                    collector=self.target,
                    status=code.name if code else "UNKNOWN",
                    detail=detail,
                    pending=len(self.spool),
                    retry_in_s=round(backoff, 2),
                )
            except tls.TlsError as exc:  # a certificate file mid-rotation
                self.failed_sessions += 1
                log.warning("export.tls_unreadable", error=str(exc), retry_in_s=round(backoff, 2))
            except grpc.FutureTimeoutError:
                self.failed_sessions += 1
                log.warning(
                    "export.collector_unreachable",
                    collector=self.target,
                    pending=len(self.spool),
                    retry_in_s=round(backoff, 2),
                )
            self.connected.clear()
            self.target = self.targets[(self.targets.index(self.target) + 1) % len(self.targets)]
            self._stop.wait(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, self.max_backoff_s)

    def _session(self) -> None:
        # Our own backoff paces reconnects: keep gRPC's inside a channel short
        # and its subchannel private, so a collector that is back is seen at once.
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        dial, named = pick_address(self.target, self.lookup)
        with self.tls.channel(dial, options=options + named) as channel:
            grpc.channel_ready_future(channel).result(timeout=2)
            stub = collector_pb2_grpc.IngestServiceStub(channel)
            in_flight: set[str] = set()
            cond = threading.Condition()
            done = threading.Event()

            def requests() -> Iterator[collector_pb2.IngestRequest]:
                sent_seq = 0
                while not (self._stop.is_set() or done.is_set()):
                    batch = self.spool.pending_after(sent_seq)
                    if not batch:
                        self.spool.wait_for_more(sent_seq, 0.5)
                        continue
                    for entry in batch:
                        with cond:
                            cond.wait_for(
                                lambda: len(in_flight) < self.window or done.is_set(), 1.0
                            )
                            if done.is_set():
                                return
                            in_flight.add(entry.id)
                        sent_seq = entry.seq
                        # Spooled by an agent that did not fit its records:
                        # one over the limit would fail the stream, again and
                        # again, with every record behind it.
                        if entry.request.HasField("event"):
                            fit_to_wire(entry.request.event)
                        yield entry.request

            responses = stub.Ingest(requests())
            self.connected.set()
            log.info("export.connected", collector=self.target, pending=len(self.spool))
            try:
                for resp in responses:
                    for ack in resp.acks:
                        if ack.rejected:
                            self.rejected += 1
                            log.error("export.rejected", id=ack.id, reason=ack.rejected)
                        self.spool.ack(ack.id)
                        self.acked += 1
                    with cond:
                        in_flight.difference_update(a.id for a in resp.acks)
                        cond.notify_all()
                    if self._stop.is_set():
                        responses.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
                        return
            finally:
                done.set()
                with cond:
                    cond.notify_all()
