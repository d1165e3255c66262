"""Transport security and identity, with gRPC's own credential APIs.

Who may do what (SECURITY.md says why):
  - The collector serves TLS unless told `--insecure`, which it takes only on
    a loopback address or a unix socket.
  - Every TLS client presents a certificate the collector's client CA signed
    (mutual TLS). It names a role in its subject's organizational unit (OU): `ingest` (an agent: its CN is its node, and every record it sends
    must name that node), `ingest-any-node` (one identity shared by a
    DaemonSet's agents: records may name any node), `query` (reads history).
    A certificate may carry several.
  - Health is open to all (a probe has no certificate).

Certificates and keys are read again when their files change: a renewed
certificate is served from the next connection, without a restart."""

from __future__ import annotations

import datetime
import ipaddress
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc

INGEST = "ingest"
INGEST_ANY_NODE = "ingest-any-node"
QUERY = "query"
ROLES = (INGEST, INGEST_ANY_NODE, QUERY)
# Method prefixes and the roles that may call them; what is not listed here
# (health, reflection) is open.
METHOD_ROLES = {
    "/oomtrace.v1.IngestService/": (INGEST, INGEST_ANY_NODE),
    "/oomtrace.v1.HistoryService/": (QUERY,),
}


class TlsError(Exception):
    """A TLS setting that cannot work; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, from the client certificate."""

    roles: frozenset[str]
    node: str  # the node an `ingest` certificate speaks for ("" otherwise)
    subject: str  # for logs and errors

    def may(self, roles: tuple[str, ...]) -> bool:
        return bool(self.roles & set(roles))

    def node_allowed(self, node: str) -> bool:
        """Whether a record naming this node may come from this identity."""
        if INGEST_ANY_NODE in self.roles:
            return True
        return INGEST in self.roles and node == self.node


def is_local(address: str) -> bool:
    """A unix socket or a loopback address: where plaintext is allowed."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def _identity_of_pem(pem: bytes) -> Identity:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    subject = cert.subject
    roles = frozenset(
        str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ) & set(ROLES)
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Identity(roles, str(cns[0].value) if cns else "", subject.rfc4514_string())


def identity_of(
    context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
) -> Identity | None:
    """The caller's identity, or None on a plaintext (local) server."""
    pems = cast("list[bytes] | None", context.auth_context().get("x509_pem_cert"))
    return _identity_of_pem(pems[0]) if pems else None


# grpc-stubs make the interceptor generic; grpc's own class is not subscriptable.
if TYPE_CHECKING:
    AioServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    AioServerInterceptor = grpc.aio.ServerInterceptor


class Authorizer(AioServerInterceptor):
    """Enforces METHOD_ROLES on every call, before the method runs (the
    collector's asyncio server). Only installed on a TLS server: a plaintext
    one is local use, for one user."""

    async def intercept_service(  # type: ignore[override]  # None: no such method
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        roles = next((r for p, r in METHOD_ROLES.items() if details.method.startswith(p)), None)
        if handler is None or roles is None:
            return handler

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            who = identity_of(context)
            if who is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required"
                )
            elif not who.may(roles):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{who.subject} has roles {sorted(who.roles) or 'none'}; "
                    f"{details.method} needs one of {list(roles)}",
                )

        return _guarded(handler, check)


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any],
    check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same (asyncio) handler, awaiting check(context) first."""

    def wrap_unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await fn(request, context)

        return guarded

    def wrap_stream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check(context)
            async for response in fn(request, context):
                yield response

        return guarded

    kinds: dict[str, tuple[Callable[..., grpc.RpcMethodHandler[Any, Any]], Callable[..., Any]]] = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, wrap_unary),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, wrap_unary),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, wrap_stream),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, wrap_stream),
    }
    for kind, (make, wrap) in kinds.items():
        fn = getattr(handler, kind)
        if fn is not None:
            return make(
                wrap(fn),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise AssertionError("a handler with no method")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} {path}: {exc.strerror}") from None


class _Reloading:
    """The server's certificate, key and client CA, read again on the next
    handshake after any of the files changed (gRPC asks at each one)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path) -> None:
        self.files = (cert, key, client_ca)
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self.initial = self._config()

    def _stamp(self) -> tuple[tuple[int, int] | None, ...]:
        out: list[tuple[int, int] | None] = []
        for f in self.files:
            try:
                st = os.stat(f)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = self.files
        return grpc.ssl_server_certificate_configuration(
            [(_read(key, "key"), _read(cert, "certificate"))],
            root_certificates=_read(ca, "client CA"),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = self._stamp()
            if stamp == self._seen:
                return None  # unchanged: gRPC keeps what it has
            try:
                config = self._config()
            except TlsError:
                return None  # mid-rotation: keep serving the old pair
            self._seen = stamp
            return config


def server_credentials(cert: Path, key: Path, client_ca: Path) -> grpc.ServerCredentials:
    """Mutual TLS for the collector: every client presents a certificate
    client_ca signed (gRPC hands the certificate to the methods only when it
    requires one); what each may call is the Authorizer's."""
    reloading = _Reloading(cert, key, client_ca)
    # gRPC's stub says the fetcher returns a configuration; None (keep the
    # current one) is what its documentation asks for when nothing changed.
    return grpc.dynamic_ssl_server_credentials(
        reloading.initial,
        reloading.fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a client (agent, CLI) reaches the collector: the collector's CA,
    this client's certificate and key, or plaintext where allowed."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    def check(self, target: str) -> None:
        """Raises TlsError now for what would fail at every connection."""
        self.channel(target).close()

    def channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        return channel(
            target,
            ca=self.ca,
            cert=self.cert,
            key=self.key,
            insecure=self.insecure,
            options=options,
        )


def channel(
    target: str,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    insecure: bool = False,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """A channel to the collector: TLS when a CA is given (with the client
    certificate the collector asks for); plaintext only to a local address
    or when asked with insecure."""
    if ca is None:
        if not (insecure or is_local(target)):
            raise TlsError(
                f"{target} is not local: give the collector's CA (--tls-ca) for TLS, or "
                "--insecure to send in plaintext"
            )
        return grpc.insecure_channel(target, options=options)
    if (cert is None) != (key is None):
        raise TlsError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.secure_channel(target, client_credentials(ca, cert, key), options=options)


def client_credentials(
    ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials:
    """TLS to a server: its CA (None: the system's roots) and, when it asks
    for one, our certificate and key. TlsError names a file that cannot be read."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA") if ca else None,
        private_key=_read(key, "key") if key else None,
        certificate_chain=_read(cert, "certificate") if cert else None,
    )


# -- throwaway certificates: make run, the tests, and `oomtrace certs` ---------------


def issue(
    directory: Path,
    name: str,
    *,
    ca: tuple[Any, Any] | None = None,
    roles: tuple[str, ...] = (),
    hosts: tuple[str, ...] = (),
    days: float = 365,
    not_before: datetime.datetime | None = None,
) -> tuple[Any, Any]:
    """Writes NAME.crt and NAME.key (0600) in directory: a CA when ca is None,
    else a certificate it signs, with CN=name, an OU per role and the hosts as
    subject alternative names. Returns (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r) for r in roles]
    subject = x509.Name(attrs)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[0].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
    cert = builder.sign(ca[1] if ca else key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{name}.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def _load_ca(directory: Path) -> tuple[Any, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert, key = directory / "ca.crt", directory / "ca.key"
    if not (cert.exists() and key.exists()):
        return None
    return (
        x509.load_pem_x509_certificate(cert.read_bytes()),
        serialization.load_pem_private_key(key.read_bytes(), password=None),
    )


def make_set(
    directory: Path,
    *,
    collector_hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    nodes: tuple[str, ...] = (),
    shared_agents: bool = False,
    readers: tuple[str, ...] = (),
    days: float = 365,
) -> list[Path]:
    """A CA (reused when directory has one) and, signed by it: collector.crt
    for the collector's names, one ingest certificate per node, agents.crt
    for any node, one query certificate per reader. The certificates written."""
    ca = _load_ca(directory) or issue(directory, "ca", days=days * 2)
    made = [directory / "ca.crt"]
    issue(directory, "collector", ca=ca, hosts=collector_hosts, days=days)
    made.append(directory / "collector.crt")
    for node in nodes:
        issue(directory, node, ca=ca, roles=(INGEST,), days=days)
        made.append(directory / f"{node}.crt")
    if shared_agents:
        issue(directory, "agents", ca=ca, roles=(INGEST_ANY_NODE,), days=days)
        made.append(directory / "agents.crt")
    for reader in readers:
        issue(directory, reader, ca=ca, roles=(QUERY,), days=days)
        made.append(directory / f"{reader}.crt")
    return made


def write_secrets(directory: Path, *, agents: bool, namespace: str = "oomtrace") -> Path:
    """DIR/secrets.yaml: the Secrets the manifests mount, from a make_set
    directory (the collector's pair and the CA; the agents' pair and the CA)."""
    import base64

    import yaml

    def secret(name: str, files: tuple[str, ...]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "data": {f: base64.b64encode((directory / f).read_bytes()).decode() for f in files},
        }

    docs = [secret("oomtrace-collector-tls", ("collector.crt", "collector.key", "ca.crt"))]
    if agents:
        docs.append(secret("oomtrace-agent-tls", ("agents.crt", "agents.key", "ca.crt")))
    out = directory / "secrets.yaml"
    out.touch(mode=0o600)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out
