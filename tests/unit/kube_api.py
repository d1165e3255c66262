"""A stand-in for the Kubernetes API server's Events endpoints, over HTTPS on
loopback: no API server can run here. Every request is checked as the real
one would: the in-cluster bearer token, the path, the content type, and the
body against the Kubernetes OpenAPI schema (events.k8s.io/v1 Event, strict,
from the schemas kubernetes-validate bundles). Creating a name twice is 409,
as there. Requests that fail a check are kept with the reason and answered
422 or 401, so a test sees what was wrong."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KUBERNETES_VERSION = "1.30"
EVENTS = "/apis/events.k8s.io/v1/namespaces/"


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oomtrace test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class Seen:
    method: str
    path: str
    body: dict[str, Any]
    status: int
    problem: str = ""


@dataclass
class FakeApiServer:
    directory: Path
    token: str = "oomtrace-test-token"
    requests: list[Seen] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # by namespace/name

    def __post_init__(self) -> None:
        self.ca, cert, key = make_tls(self.directory)
        self.token_file = self.directory / "token"
        self.token_file.write_text(self.token + "\n")
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length", "0"))
        raw = h.rfile.read(length)
        status, problem, body = 200, "", {}
        try:
            body = json.loads(raw)
        except ValueError:
            status, problem = 400, "body is not JSON"
        if not status >= 400:
            status, problem = self._check(h, method, body)
        with self._lock:
            self.requests.append(Seen(method, h.path, body, status, problem))
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        h.wfile.write(
            json.dumps({"kind": "Status", "message": problem} if problem else body).encode()
        )

    def _check(
        self, h: BaseHTTPRequestHandler, method: str, body: dict[str, Any]
    ) -> tuple[int, str]:
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, "Unauthorized: no or a wrong bearer token"
        if not h.path.startswith(EVENTS):
            return 404, f"no such path {h.path}"
        parts = h.path[len(EVENTS) :].split("/")
        if method == "POST":
            if len(parts) != 2 or parts[1] != "events":
                return 404, f"no such path {h.path}"
            if h.headers.get("Content-Type") != "application/json":
                return 415, "POST takes application/json"
            try:
                kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return 422, f"schema: {exc.message}"
            if body["metadata"].get("namespace") != parts[0]:
                return 400, "the namespace in the body differs from the path's"
            key = f"{parts[0]}/{body['metadata']['name']}"
            with self._lock:
                if key in self.events:
                    return 409, f"events {key} already exists"
                self.events[key] = body
            return 201, ""
        # PATCH .../events/NAME with a JSON merge patch
        if len(parts) != 3 or parts[1] != "events":
            return 404, f"no such path {h.path}"
        if h.headers.get("Content-Type") != "application/merge-patch+json":
            return 415, "PATCH takes application/merge-patch+json here"
        key = f"{parts[0]}/{parts[2]}"
        with self._lock:
            current = self.events.get(key)
            if current is None:
                return 404, f"events {key} not found"
            merged = {**current, **body}
            try:
                kubernetes_validate.validate(merged, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return 422, f"schema: {exc.message}"
            self.events[key] = merged
        return 200, ""
