"""`oomtrace collector`: store records from agents and answer queries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from oomtrace.cli import AddCommand
from oomtrace.cli.parsing import duration_s, listen_address
from oomtrace.records import DEFAULT_COLLECTOR

if TYPE_CHECKING:
    from oomtrace.collector.otlp import OtlpTarget


def run(args: argparse.Namespace) -> int:
    from oomtrace.collector.errors import CollectorError
    from oomtrace.collector.kube_events import ApiServer
    from oomtrace.collector.main import run_collector

    kube_api = None
    if args.kube_api:
        kube_api = ApiServer(args.kube_api, args.kube_token_file, args.kube_ca_file)
    elif args.kube_events:
        try:
            kube_api = ApiServer.in_cluster()
        except KeyError:
            print(
                "oomtrace collector: --kube-events needs KUBERNETES_SERVICE_HOST (set in a "
                "pod); elsewhere give --kube-api",
                file=sys.stderr,
            )
            return 2
    from oomtrace import tls

    tls_files = (args.tls_cert, args.tls_key, args.client_ca)
    if args.insecure:
        if any(tls_files):
            print("oomtrace collector: --insecure and TLS files together", file=sys.stderr)
            return 2
        if not tls.is_local(args.listen):
            print(
                f"oomtrace collector: --insecure serves plaintext, which is only taken on a "
                f"loopback address or unix socket, not {args.listen}",
                file=sys.stderr,
            )
            return 2
    elif not all(tls_files):
        print(
            "oomtrace collector: give --tls-cert, --tls-key and --client-ca (mutual TLS), or "
            "--insecure on a loopback address or unix socket",
            file=sys.stderr,
        )
        return 2
    otlp = otlp_target(args)
    if isinstance(otlp, str):
        print(f"oomtrace collector: {otlp}", file=sys.stderr)
        return 2
    try:
        store_url = None
        password = None
        if args.store:
            store_url = args.store
            if args.store_password_file:
                password = args.store_password_file.read_text().strip()
        run_collector(
            args.listen,
            store_url or args.db,
            args.retention,
            metrics_listen=args.metrics_listen,
            kube_api=kube_api,
            tls_files=None if args.insecure else tls_files,
            store_password=password,
            otlp=otlp,
        )
    except (CollectorError, RuntimeError, tls.TlsError, OSError) as exc:
        print(f"oomtrace collector: {exc}", file=sys.stderr)
        return 1
    return 0


def otlp_target(args: argparse.Namespace) -> OtlpTarget | str | None:
    """The OTLP receiver to export to (None: no export), or what is wrong
    with the flags. --otlp-endpoint wins over $OTEL_EXPORTER_OTLP_ENDPOINT."""
    from oomtrace.collector.otlp import OtlpTarget, endpoint_from_env

    endpoint, insecure = args.otlp_endpoint, args.otlp_insecure
    if not endpoint:
        from_env = endpoint_from_env()
        if from_env is None:
            return None
        endpoint, insecure = from_env[0], insecure or from_env[1]
    if insecure:
        if args.otlp_ca or args.otlp_cert:
            return "--otlp-insecure and --otlp-ca/--otlp-cert together"
        return OtlpTarget(endpoint, None, args.otlp_cluster, args.otlp_queue)
    if bool(args.otlp_cert) != bool(args.otlp_key):
        return "give --otlp-cert and --otlp-key together"
    from oomtrace import tls

    try:
        credentials = tls.client_credentials(args.otlp_ca, args.otlp_cert, args.otlp_key)
    except tls.TlsError as exc:
        return f"cannot read an --otlp TLS file: {exc}"
    return OtlpTarget(endpoint, credentials, args.otlp_cluster, args.otlp_queue)


def register(add: AddCommand) -> None:
    c = add(
        "collector",
        "store records from agents and answer queries",
        "oomtrace collector --listen 0.0.0.0:50051 --db /var/lib/oomtrace/collector.db",
        "oomtrace collector --retention 90d",
        "oomtrace collector --kube-events --metrics-listen 0.0.0.0:9602   # in a cluster",
    )
    c.add_argument(
        "--listen",
        default=DEFAULT_COLLECTOR,
        type=listen_address,
        metavar="ADDR",
        help="host:port, or unix:PATH, to serve on",
    )
    mtls = c.add_argument_group(
        "mutual TLS (required unless --insecure; `oomtrace certs` makes a throwaway set)"
    )
    mtls.add_argument("--tls-cert", type=Path, help="the collector's certificate")
    mtls.add_argument("--tls-key", type=Path, help="its key")
    mtls.add_argument(
        "--client-ca",
        type=Path,
        help="the CA whose certificates clients must present; their OU names their role",
    )
    mtls.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, with no roles: only on a loopback address or a unix socket",
    )
    c.add_argument(
        "--db",
        type=Path,
        default=Path("/var/lib/oomtrace/collector.db"),
        help="the SQLite file that keeps the history",
    )
    c.add_argument(
        "--store",
        metavar="URL",
        help="keep the history in PostgreSQL instead (postgresql://USER@HOST:PORT/DB); "
        "several collectors may share one. Not with --db",
    )
    c.add_argument(
        "--store-password-file",
        type=Path,
        help="the database password (never in the URL, which shows in the process list); "
        "libpq's $PGPASSWORD and ~/.pgpass work too",
    )
    c.add_argument(
        "--retention",
        type=duration_s,
        default="30d",
        help="drop records older than this (30d, 12h, 2w)",
    )
    c.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on /metrics here, e.g. 0.0.0.0:9602 (default: none)",
    )
    k = c.add_argument_group("Kubernetes Events: a Warning Event on the victim's pod per kill")
    k.add_argument(
        "--kube-events",
        action="store_true",
        help="post Events to this cluster's API server, as the pod's service account",
    )
    k.add_argument("--kube-api", metavar="URL", help="post Events to this API server instead")
    k.add_argument(
        "--kube-token-file",
        type=Path,
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        help="the bearer token, with --kube-api",
    )
    k.add_argument(
        "--kube-ca-file",
        type=Path,
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
        help="the API server's CA, with --kube-api",
    )
    o = c.add_argument_group(
        "OpenTelemetry: each stored kill as an OTLP log record, and the oomtrace.kills "
        "counter as an OTLP metric, sent over OTLP/gRPC to an OpenTelemetry Collector"
    )
    o.add_argument(
        "--otlp-endpoint",
        metavar="HOST:PORT",
        help="the OTLP/gRPC receiver (default: $OTEL_EXPORTER_OTLP_ENDPOINT, "
        "http:// there meaning plaintext; unset: no export)",
    )
    o.add_argument("--otlp-insecure", action="store_true", help="plaintext to the receiver")
    o.add_argument("--otlp-ca", type=Path, help="the receiver's CA (default: the system's roots)")
    o.add_argument("--otlp-cert", type=Path, help="a client certificate, if it asks for one")
    o.add_argument("--otlp-key", type=Path, help="its key")
    o.add_argument(
        "--otlp-cluster",
        default="",
        metavar="NAME",
        help="k8s.cluster.name for records whose agent named no cluster",
    )
    o.add_argument(
        "--otlp-queue",
        type=int,
        default=10_000,
        metavar="N",
        help="records waiting to be sent at most; past it they are dropped and counted "
        "(oomtrace_collector_otlp_dropped_total)",
    )
    c.set_defaults(run=run)
