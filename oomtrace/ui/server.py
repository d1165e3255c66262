"""`oomtrace ui`: a local web server over the collector's HistoryService,
with the user's own --collector and TLS flags (so their certificate's role
decides what they see). stdlib http.server, a thread per request: the pages
are a few gRPC calls each and the live list is one WatchEvents stream per
open tab, so a thread each is simple and enough for one person's browser;
nothing to install. Serves 127.0.0.1 by default; another address only with
TLS of its own (--ui-tls-cert/--ui-tls-key). Requests whose Host is not the
address served are refused (a web page elsewhere cannot rebind a name to
127.0.0.1 and read the kills)."""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import grpc
import structlog

from oomtrace import client, rpc, tls
from oomtrace.ui import filters, pages
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

log = structlog.get_logger(__name__)

PAGE_SIZE = 100  # kills a list page shows, unless ?limit= says (at most MAX_LIMIT)
MAX_LIMIT = 10_000
LIST_CHUNK = 250
# A GetEvent answer can carry two heap profiles of up to 384 KiB and the
# kernel's report: well under this, and a list chunk too.
MAX_RECEIVE_BYTES = 32 << 20
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
# A live list replays from this long before the page was rendered: a kill
# stored between the page's query and the stream's start is not missed
# (rows already shown are skipped by id).
LIVE_REPLAY_S = 60.0
HEARTBEAT_S = 10.0


class UiError(Exception):
    """The ui cannot start (a bind refused, TLS files unreadable): the
    message says what to give instead."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 403,
}


@dataclass
class Collector:
    """One channel to the collector for the server's life (gRPC reconnects
    it by itself when the collector restarts)."""

    target: str
    channel: grpc.Channel

    @property
    def stub(self) -> collector_pb2_grpc.HistoryServiceStub:
        return collector_pb2_grpc.HistoryServiceStub(self.channel)

    def call(self, fn: Callable[[collector_pb2_grpc.HistoryServiceStub], Any]) -> Any:
        try:
            return fn(self.stub)
        except grpc.RpcError as exc:
            code, detail = rpc.status(exc)
            status = _STATUS.get(code, 502) if code else 502
            if code == grpc.StatusCode.UNAVAILABLE:
                detail = f"collector unreachable at {self.target}: {detail}"
            raise HttpError(status, detail or "the collector's call failed") from None

    def incident(self, ev: event_pb2.OomEvent) -> list[event_pb2.OomEvent]:
        return self.call(lambda s: incident_of(s, ev))  # type: ignore[no-any-return]


def incident_of(
    stub: collector_pb2_grpc.HistoryServiceStub, ev: event_pb2.OomEvent
) -> list[event_pb2.OomEvent]:
    """The kills of ev's incident: one OOM-killer invocation, on one node,
    within seconds (the API has no incident filter)."""
    if not ev.incident_id:
        return []
    f = collector_pb2.EventFilter(node=ev.node)
    t = ev.killed_at.ToNanoseconds()
    f.since.FromNanoseconds(t - 30_000_000_000)
    f.until.FromNanoseconds(t + 30_000_000_000)
    req = collector_pb2.ListEventsRequest(filter=f, page_size=1000)
    resp = stub.ListEvents(req, timeout=10)
    return [o for o in resp.events if (o.incident_id or o.id) == ev.incident_id]


def _list_events(
    req: collector_pb2.ListEventsRequest, stub: collector_pb2_grpc.HistoryServiceStub
) -> collector_pb2.ListEventsResponse:
    return stub.ListEvents(req, timeout=30)


def _params(query: str) -> dict[str, str]:
    return {k: v[:500] for k, v in parse_qsl(query, keep_blank_values=False)}


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", " ")


class Handler(BaseHTTPRequestHandler):
    server_version = "oomtrace-ui"
    sys_version = ""
    collector: Collector
    allowed_hosts: frozenset[str] | None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ui.request", line=format % args)

    def _headers(self, status: int, ctype: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(
        self, status: int, body: str | bytes, ctype: str = "text/html; charset=utf-8"
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self._headers(status, ctype, len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if (
            self.allowed_hosts is not None
            and self.headers.get("Host", "") not in self.allowed_hosts
        ):
            self._send(421, pages.error_page("this server answers only to its own address", 421))
            return
        url = urlsplit(self.path)
        params = _params(url.query)
        try:
            route = self._route(url.path)
            if route is None:
                raise HttpError(404, f"no page at {url.path}")
            route(params)
        except HttpError as exc:
            self._send(exc.status, pages.error_page(str(exc), exc.status))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.exception("ui.page_failed", path=url.path)
            self._send(500, pages.error_page(f"this page failed: {type(exc).__name__}", 500))

    def _route(self, path: str) -> Callable[[dict[str, str]], None] | None:
        if path == "/":
            return self._list
        if path == "/top":
            return self._top
        if path == "/pressure":
            return self._pressure
        if path == "/events":
            return self._events
        if path == "/healthz":
            return lambda _p: self._send(200, "ok\n", "text/plain; charset=utf-8")
        if path.startswith("/kill/"):
            ev_id = path[len("/kill/") :]
            return lambda _p: self._kill(ev_id)
        if path.startswith("/static/") and path[len("/static/") :] in STATIC:
            name = path[len("/static/") :]
            return lambda _p: self._send(200, pages.asset(name), STATIC[name])
        return None

    def _filter(
        self, params: dict[str, str], kills: bool = True
    ) -> tuple[collector_pb2.EventFilter, str]:
        try:
            return filters.build(params, kills=kills), ""
        except filters.FilterError as exc:
            return collector_pb2.EventFilter(), str(exc)

    def _list(self, params: dict[str, str]) -> None:
        params.setdefault("since", "7d")
        f, error = self._filter(params)
        if error:
            self._send(400, pages.list_page([], params, "", error))
            return
        try:
            limit = min(MAX_LIMIT, max(1, int(params.get("limit") or PAGE_SIZE)))
        except ValueError:
            raise HttpError(400, f"limit={params['limit']!r} is not a number") from None
        events: list[event_pb2.OomEvent] = []
        token = params.get("page", "")
        while True:  # pages small enough for gRPC's 4 MiB (a record with its report: ~5 KiB)
            req = collector_pb2.ListEventsRequest(
                filter=f, page_size=min(LIST_CHUNK, limit - len(events)), page_token=token
            )
            resp = self.collector.call(partial(_list_events, req))
            events += resp.events
            token = resp.next_page_token
            if not token or len(events) >= limit:
                break
        params["from"] = f"{time.time() - LIVE_REPLAY_S:.0f}"
        self._send(200, pages.list_page(events, params, token))

    def _kill(self, ev_id: str) -> None:
        try:
            req = collector_pb2.GetEventRequest(id=client.check_id(ev_id))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        ev = self.collector.call(lambda s: s.GetEvent(req, timeout=30))
        self._send(200, pages.kill_page(ev, self.collector.incident(ev)))

    def _top(self, params: dict[str, str]) -> None:
        params.setdefault("since", "7d")
        by = params.get("by", "workload")
        group = collector_pb2.TopRequest.GroupBy.keys()
        if by.upper() not in group or by.upper() == "GROUP_BY_UNSPECIFIED":
            raise HttpError(400, f"cannot count kills by {by!r}")
        f, error = self._filter(params)
        resp = collector_pb2.TopResponse()
        if not error:
            req = collector_pb2.TopRequest(
                group_by=collector_pb2.TopRequest.GroupBy.Value(by.upper()), filter=f, limit=25
            )
            resp = self.collector.call(lambda s: s.Top(req, timeout=30))
        self._send(400 if error else 200, pages.top_page(resp, by, params, error))

    def _pressure(self, params: dict[str, str]) -> None:
        params.setdefault("since", "1h")
        f, error = self._filter(params, kills=False)
        recs: list[event_pb2.PressureRecord] = []
        if not error:
            req = collector_pb2.ListPressureRequest(filter=f, page_size=200)
            recs = list(self.collector.call(lambda s: s.ListPressure(req, timeout=30)).records)
        self._send(400 if error else 200, pages.pressure_page(recs, params, error))

    def _events(self, params: dict[str, str]) -> None:
        """Server-sent events: each new kill as a list row (event `kill`),
        and the collector's state (event `status`: live, or reconnecting)."""
        since = params.pop("from", "")
        params.pop("since", None)  # a live list shows what is new
        f, error = self._filter(params)
        if error:
            raise HttpError(400, error)
        try:
            f.since.FromNanoseconds(int(float(since) * 1e9) if since else time.time_ns())
        except ValueError:
            raise HttpError(400, f"from={since!r} is not a time in seconds") from None
        self._headers(200, "text/event-stream; charset=utf-8")
        self.wfile.write(b"retry: 2000\n\n")
        self.wfile.flush()
        out: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=1000)
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(f, out, stop), daemon=True, name="ui-watch"
        )
        watcher.start()
        try:
            while True:
                try:
                    kind, data = out.get(timeout=HEARTBEAT_S)
                    msg = f"event: {kind}\ndata: {_one_line(data)}\n\n"
                except queue.Empty:
                    msg = ": keep-alive\n\n"  # also finds a closed tab
                self.wfile.write(msg.encode())
                self.wfile.flush()
        except OSError:
            pass
        finally:
            stop.set()
            self.close_connection = True

    def _watch(
        self, f: collector_pb2.EventFilter, out: queue.Queue[tuple[str, str]], stop: threading.Event
    ) -> None:
        """The WatchEvents stream, again and again: when the collector goes
        away the page says so, and on reconnecting the stream asks again
        from shortly before the last kill it sent (rows shown are skipped)."""
        last_s = f.since.ToNanoseconds() / 1e9
        backoff = 0.5
        # The stream open now, cancelled when the page goes away (its
        # iterator would otherwise block until the next kill).
        current: list[Any] = []

        def cancel_on_stop() -> None:
            stop.wait()
            for c in current:
                c.cancel()

        threading.Thread(target=cancel_on_stop, daemon=True, name="ui-watch-stop").start()
        while not stop.is_set():
            try:
                grpc.channel_ready_future(self.collector.channel).result(timeout=5)
                out.put(("status", "live"))
                backoff = 0.5
                req = collector_pb2.WatchEventsRequest(filter=f)
                call = self.collector.stub.WatchEvents(req)
                current[:] = [call]
                for ev in call:
                    last_s = max(last_s, ev.killed_at.ToNanoseconds() / 1e9)
                    out.put(("kill", pages.kill_row(ev)))
                why = "the collector ended the stream"
            except grpc.FutureTimeoutError:
                why = "unreachable"
            except grpc.RpcError as exc:
                code, detail = rpc.status(exc)
                if code == grpc.StatusCode.CANCELLED or stop.is_set():
                    return
                why = detail or (code.name if code else "failed")
            if stop.is_set():
                return
            out.put(("status", f"collector {why}: reconnecting"))
            f.since.FromNanoseconds(int((last_s - client.WATCH_REPLAY_SLACK_S) * 1e9))
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def _hosts(host: str, port: int) -> frozenset[str]:
    names = {host, "localhost", "127.0.0.1", "[::1]"} if tls.is_local(f"{host}:{port}") else {host}
    return frozenset(f"{n}:{port}" for n in names)


def create_server(
    listen: str,
    collector: Collector,
    cert: Path | None = None,
    key: Path | None = None,
) -> tuple[ThreadingHTTPServer, int]:
    """The server bound (port 0: any); refuses a non-loopback address without
    TLS. Returns (server, port)."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit():
        raise UiError(f"--listen {listen!r} is not HOST:PORT")
    if bool(cert) != bool(key):
        raise UiError("give --ui-tls-cert and --ui-tls-key together")
    if not tls.is_local(f"{host}:{port_text}") and not cert:
        raise UiError(
            f"--listen {listen} is not a loopback address: anyone who reaches it would read "
            "the kills with your credentials; give --ui-tls-cert and --ui-tls-key to serve it "
            "over TLS, or listen on 127.0.0.1 (ssh -L / kubectl port-forward to reach it)"
        )

    class Bound(Handler):
        pass

    Bound.collector = collector
    server = ThreadingHTTPServer((host, int(port_text)), Bound)
    server.daemon_threads = True
    port = server.server_address[1]
    Bound.allowed_hosts = None if cert else _hosts(host if ":" not in host else f"[{host}]", port)
    if cert and key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise UiError(f"cannot load {cert} and {key}: {exc}") from None
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server, port


def run(args: Any) -> int:
    """From the CLI: connect (the query commands' flags), bind, serve."""
    try:
        channel = tls.ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.insecure).channel(
            args.collector, options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        )
    except tls.TlsError as exc:
        raise client.ClientError(str(exc)) from None
    try:
        server, port = create_server(
            args.listen, Collector(args.collector, channel), args.ui_tls_cert, args.ui_tls_key
        )
    except (UiError, OSError) as exc:
        raise client.ClientError(str(exc)) from None
    scheme = "https" if args.ui_tls_cert else "http"
    host = str(server.server_address[0])
    print(
        f"oomtrace ui on {scheme}://{host}:{port}/ (collector {args.collector}; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        channel.close()
    return 0
