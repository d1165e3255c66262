"""The `oomtrace` command: one entry point, a sub-command per job. Only the
chosen sub-command's code is imported: a query does not load the agent."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from oomtrace import __version__, logs
from oomtrace.records import (
    DEFAULT_COLLECTOR,
    DEFAULT_STATUS_FILE,
    HIGH_STALL_S,
    KILLER_WRITES,
    USERSPACE_KILLERS,
    parse_duration_s,
)

LOG_LEVELS = ["debug", "info", "warning", "error"]


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help where it has one, and examples kept
    as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, "", False, argparse.SUPPRESS)
            or "default" in text
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: {default})"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _agent(args: argparse.Namespace) -> int:
    from oomtrace.agent.errors import AgentError
    from oomtrace.agent.main import run_agent
    from oomtrace.agent.privacy import CmdlinePolicy, Privacy
    from oomtrace.agent.runtimes import RuntimeRoots
    from oomtrace.tls import ClientTls

    if not args.stdout and not args.collector:
        print("oomtrace agent: give --stdout, --collector HOST:PORT, or both", file=sys.stderr)
        return 2
    try:
        roots = RuntimeRoots()
        if args.host_root:
            roots = roots.under(args.host_root)
        if args.containerd_state:
            roots = replace(roots, containerd_tasks=tuple(args.containerd_state))
        if args.docker_root:
            roots = replace(
                roots, docker_containers=tuple(d / "containers" for d in args.docker_root)
            )
        if args.runc_root:
            roots = replace(roots, runc_state=tuple(args.runc_root))
        if args.crio_containers:
            roots = replace(roots, crio_containers=tuple(args.crio_containers))
        run_agent(
            runtime_roots=roots,
            stdout=args.stdout,
            collector=args.collector,
            state_dir=args.state_dir,
            spool_dir=args.spool,
            backfill=args.backfill,
            status_file=args.status_file,
            hold_s=args.hold,
            profile_before=(args.profile_before_percent, args.profile_before_window),
            high_stall_s=args.high_stall_seconds,
            userspace_killers=tuple(c for c in args.userspace_killers.split(",") if c),
            killer_writes=args.killer_writes,
            node=args.node,
            metrics_listen=args.metrics_listen,
            privacy=Privacy(CmdlinePolicy(args.cmdline), tuple(args.redact_pattern)),
            client_tls=ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.insecure),
        )
    except AgentError as exc:
        import structlog

        structlog.get_logger("oomtrace.agent").error("agent.cannot_run", reason=str(exc))
        print(f"oomtrace agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _certs(args: argparse.Namespace) -> int:
    from oomtrace import tls

    made = tls.make_set(
        args.dir,
        # localhost too: a port-forward, or a query from inside the pod.
        collector_hosts=tuple(dict.fromkeys([*args.collector_host, "localhost", "127.0.0.1"])),
        nodes=tuple(args.node),
        shared_agents=args.agents,
        readers=tuple(args.reader),
        days=args.days,
    )
    for path in made:
        print(path)
    if args.secrets:
        print(tls.write_secrets(args.dir, agents=args.agents))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from oomtrace.agent.doctor import run_doctor

    return run_doctor(load=not args.no_load, as_json=args.json, status_file=args.status_file)


def _collector(args: argparse.Namespace) -> int:
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
        )
    except (CollectorError, RuntimeError, tls.TlsError, OSError) as exc:
        print(f"oomtrace collector: {exc}", file=sys.stderr)
        return 1
    return 0


def _query(command: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from oomtrace import client

        try:
            rc: int = getattr(client, command)(args)
        except client.ClientError as exc:
            print(f"oomtrace {command}: {exc}", file=sys.stderr)
            return 1
        return rc

    return run


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None


def duration_s(text: str) -> int:
    """An argparse type: seconds in 30d, 12h, 90m, 45s, 2w."""
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client_tls_args(p: argparse.ArgumentParser) -> None:
    """How a client reaches the collector: mutual TLS, or plaintext locally."""
    g = p.add_argument_group(
        "TLS to the collector (plaintext only to a loopback address or unix socket, "
        "or with --insecure)"
    )
    env = os.environ.get
    g.add_argument(
        "--tls-ca",
        type=Path,
        default=env("OOMTRACE_TLS_CA"),
        help="the CA that signed the collector's certificate ($OOMTRACE_TLS_CA)",
    )
    g.add_argument(
        "--tls-cert",
        type=Path,
        default=env("OOMTRACE_TLS_CERT"),
        help="this client's certificate, with its role ($OOMTRACE_TLS_CERT)",
    )
    g.add_argument(
        "--tls-key", type=Path, default=env("OOMTRACE_TLS_KEY"), help="its key ($OOMTRACE_TLS_KEY)"
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext to a collector that is not local (it must have been started --insecure)",
    )


def build_parser() -> argparse.ArgumentParser:
    from oomtrace.client import OUTPUTS, add_filter_args, positive

    # --log-level is taken before or after the sub-command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=LOG_LEVELS,
        help="how much to log on stderr (default: info)",
    )
    p = argparse.ArgumentParser(
        prog="oomtrace",
        description="Explain every OOM kill on a node: which process died, against which "
        "limit, why, and what the memory looked like before.",
        formatter_class=_Help,
        epilog=_examples(
            "oomtrace agent --stdout                   # record kills on this node",
            "oomtrace history --namespace shop --since 1d",
            "oomtrace show 3f2a9c1b77e0                # any unique prefix of an id",
            "oomtrace SUBCOMMAND --help                # each one's options and examples",
        ),
    )
    p.add_argument("--version", action="version", version=f"oomtrace {__version__}")
    p.add_argument(
        "--log-level", default="info", choices=LOG_LEVELS, help="how much to log on stderr"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def command(name: str, help_: str, *examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            parents=[common],
            formatter_class=_Help,
            epilog=_examples(*examples),
        )

    collector_env = os.environ.get("OOMTRACE_COLLECTOR")
    a = command(
        "agent",
        "record OOM kills on this node (root)",
        "oomtrace agent --stdout",
        "oomtrace agent --collector collector.oomtrace:50051 --node $NODE_NAME",
        "oomtrace agent --collector 127.0.0.1:50051 --host-root /host   # in a container",
    )
    a.add_argument(
        "--stdout", action="store_true", help="print each record as one JSON line on stdout"
    )
    a.add_argument(
        "--collector",
        default=collector_env,
        metavar="HOST:PORT",
        help="stream records to this collector, or to the first of several that answers "
        "(a:50051,b:50051) ($OOMTRACE_COLLECTOR when set)",
    )
    a.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/oomtrace"),
        help="the agent's durable state: the spool and the kernel-log checkpoint",
    )
    a.add_argument(
        "--spool",
        type=Path,
        help="records wait here, on disk, until the collector acknowledges them "
        "(default: STATE_DIR/spool)",
    )
    a.add_argument(
        "--no-backfill",
        dest="backfill",
        action="store_false",
        help="do not record kills that happened before this agent started",
    )
    a.add_argument("--node", help="node name in records (default: $NODE_NAME, else the hostname)")
    a.add_argument(
        "--hold",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="wait at most this long for a victim to exit before recording it",
    )
    a.add_argument(
        "--userspace-killers",
        default=",".join(USERSPACE_KILLERS),
        metavar="COMM,...",
        help="processes (by name, as the kernel keeps it: 15 bytes) whose SIGKILL or SIGTERM "
        "is an OOM kill, recorded like the kernel's; empty: none",
    )
    a.add_argument(
        "--killer-writes",
        choices=KILLER_WRITES,
        default="kprobe",
        help="how a userspace killer's log line before its kill (its reason) is caught: "
        "kprobe on ksys_write where kprobes exist; tracepoint: else the sys_enter_write "
        "tracepoint too, which every syscall on the node then pays for; off",
    )
    a.add_argument(
        "--profile-before-percent",
        type=int,
        choices=range(1, 101),
        default=80,
        metavar="PERCENT",
        help="take a Go process's heap profile at the end of a GC when its memory cgroup "
        "(or a near ancestor) is at this share of its limit, so a kill's record shows what "
        "grew since (100: only at 100 %%)",
    )
    a.add_argument(
        "--profile-before-window",
        type=int,
        default=60,
        metavar="SECONDS",
        help="at most one such profile per process in this many seconds",
    )
    a.add_argument(
        "--high-stall-seconds",
        type=int,
        default=HIGH_STALL_S,
        metavar="SECONDS",
        help="a cgroup held throttled above its memory.high this long, with no OOM kill, "
        "gets pressure records with the reason memory_high_stall and a verdict (cgroup v2)",
    )
    a.add_argument(
        "--status-file",
        type=Path,
        default=DEFAULT_STATUS_FILE,
        help="where the agent writes its counters for `doctor`",
    )
    a.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on /metrics here, e.g. 0.0.0.0:9601 (default: none)",
    )
    a.add_argument(
        "--cmdline",
        choices=["redact", "drop", "keep"],
        default="redact",
        help="victims' command lines in records: secrets redacted, none at all, or as written",
    )
    a.add_argument(
        "--redact-pattern",
        type=_regex,
        action="append",
        default=[],
        metavar="REGEX",
        help="also redact what this matches in command lines (its first group, if it has "
        "one); repeatable",
    )
    _client_tls_args(a)
    roots = a.add_argument_group("container runtime state (read-only)")
    roots.add_argument(
        "--host-root",
        type=Path,
        help="the host's / as mounted in the agent's container, e.g. /host",
    )
    roots.add_argument(
        "--containerd-state",
        type=Path,
        action="append",
        help="containerd's io.containerd.runtime.v2.task directory (repeatable)",
    )
    roots.add_argument(
        "--docker-root", type=Path, action="append", help="a dockerd --data-root (repeatable)"
    )
    roots.add_argument("--runc-root", type=Path, action="append", help="a runc --root (repeatable)")
    roots.add_argument(
        "--crio-containers",
        type=Path,
        action="append",
        help="CRI-O's overlay-containers directory (repeatable)",
    )
    a.set_defaults(func=_agent)

    cs = command(
        "certs",
        "make a CA and the certificates mutual TLS needs (kept in DIR; an existing CA is reused)",
        "oomtrace certs ./pki --node node-a --node node-b --reader alice",
        "oomtrace certs ./pki --collector-host oomtrace-collector.oomtrace.svc --agents --reader ops",
    )
    cs.add_argument("dir", type=Path, help="where ca.crt, ca.key and the others go")
    cs.add_argument(
        "--collector-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or address clients reach the collector at (repeatable; localhost and "
        "127.0.0.1 are always in)",
    )
    cs.add_argument(
        "--node",
        action="append",
        default=[],
        help="an agent certificate for this node (role ingest: its records must name it); "
        "repeatable",
    )
    cs.add_argument(
        "--agents",
        action="store_true",
        help="one agent certificate for any node (role ingest-any-node), e.g. a DaemonSet's Secret",
    )
    cs.add_argument(
        "--reader",
        action="append",
        default=[],
        help="a query certificate for this person or tool (role query); repeatable",
    )
    cs.add_argument("--days", type=float, default=365, help="how long the certificates hold")
    cs.add_argument(
        "--secrets",
        action="store_true",
        help="also write DIR/secrets.yaml: the Secrets deploy/kubernetes mounts "
        "(oomtrace-collector-tls, and oomtrace-agent-tls with --agents), for kubectl apply -f",
    )
    cs.set_defaults(func=_certs)

    d = command(
        "doctor",
        "what this host supports, and what the agent will record",
        "oomtrace doctor",
        "oomtrace doctor --json --no-load",
    )
    d.add_argument("--json", action="store_true", help="a machine-readable report")
    d.add_argument(
        "--no-load", action="store_true", help="do not compile and attach the BPF programs"
    )
    d.add_argument(
        "--status-file",
        type=Path,
        default=DEFAULT_STATUS_FILE,
        help="the running agent's counters, to report",
    )
    d.set_defaults(func=_doctor)

    c = command(
        "collector",
        "store records from agents and answer queries",
        "oomtrace collector --listen 0.0.0.0:50051 --db /var/lib/oomtrace/collector.db",
        "oomtrace collector --retention 90d",
        "oomtrace collector --kube-events --metrics-listen 0.0.0.0:9602   # in a cluster",
    )
    c.add_argument(
        "--listen",
        default=DEFAULT_COLLECTOR,
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
    c.set_defaults(func=_collector)

    query_collector = collector_env or DEFAULT_COLLECTOR

    def query(name: str, help_: str, *examples: str) -> argparse.ArgumentParser:
        q = command(name, help_, *examples)
        q.add_argument(
            "--collector",
            default=query_collector,
            metavar="HOST:PORT",
            help="the collector to ask ($OOMTRACE_COLLECTOR when set)",
        )
        _client_tls_args(q)
        return q

    said = {
        "table": "table for people",
        "wide": "wide adds columns",
        "json": "json is one object a line",
        "yaml": "yaml one document",
        "html": "html the post-mortem page as one file, for a ticket",
    }

    def output(q: argparse.ArgumentParser, formats: tuple[str, ...] = OUTPUTS) -> None:
        q.add_argument(
            "-o",
            "--output",
            choices=formats,
            default="table",
            help="; ".join(said[f] for f in formats),
        )
        q.add_argument("--json", action="store_true", help="the same as -o json")

    times = "times are shown in the local zone, named; TZ=UTC oomtrace ... for UTC"
    h = query(
        "history",
        "OOM kills, newest first",
        "oomtrace history",
        "oomtrace history --namespace shop --since 1d -o wide",
        "oomtrace history --constraint global --since 2026-11-27T09:00:00Z -o json",
        "oomtrace history --incidents      # a group kill is one row",
        times,
    )
    add_filter_args(h, default_since="7d")
    h.add_argument("--limit", type=positive, default=50, help="at most this many records")
    output(h)
    h.add_argument(
        "--incidents",
        action="store_true",
        help="one row per OOM-killer invocation (a group kill's victims folded)",
    )
    h.set_defaults(func=_query("history"))

    s = query(
        "show",
        "the full report of one kill",
        "oomtrace show 3f2a9c1b77e0          # any unique prefix of the id",
        "oomtrace show 3f2a9c1b77e0 -o yaml",
    )
    s.add_argument("id", help="a record id, or any prefix of one that only one record has")
    output(s, ("table", "json", "yaml", "html"))
    s.set_defaults(func=_query("show"))

    pp = query(
        "pprof",
        "a Go victim's heap profile at the kill, for go tool pprof",
        "oomtrace pprof 3f2a9c1b77e0 > heap.pb.gz && go tool pprof -top heap.pb.gz",
        "oomtrace pprof --before 3f2a9c1b77e0 > before.pb.gz   # then: go tool pprof "
        "-diff_base before.pb.gz heap.pb.gz",
    )
    pp.add_argument("id", help="a record id, or any prefix of one that only one record has")
    pp.add_argument(
        "--before",
        action="store_true",
        help="the profile taken at a GC before the kill, when the memory cgroup neared its limit",
    )
    pp.set_defaults(func=_query("pprof"))

    t = query(
        "top",
        "who gets OOM-killed most",
        "oomtrace top --by workload --since 30d",
        "oomtrace top --by pod --namespace shop -o json",
    )
    from oomtrace.client import GROUPS

    t.add_argument(
        "--by",
        default="cgroup",
        choices=list(GROUPS),
        help="what to count kills by: pod is namespace/pod; workload is the Deployment, "
        "StatefulSet, ... owning the pod, the same across rollouts",
    )
    add_filter_args(t, default_since="7d")
    t.add_argument("--limit", type=positive, default=10, help="at most this many rows")
    output(t)
    t.set_defaults(func=_query("top"))

    pr = query(
        "pressure",
        "memory pressure records (10 s windows with pressure), newest first",
        "oomtrace pressure --cgroup /kubepods --since 1h",
        "oomtrace pressure --namespace shop -o wide",
    )
    add_filter_args(pr, default_since="1h", kills=False)
    pr.add_argument("--limit", type=positive, default=50, help="at most this many records")
    output(pr)
    pr.set_defaults(func=_query("pressure"))

    w = query(
        "watch",
        "OOM kills as the collector records them; reconnects when it restarts",
        "oomtrace watch",
        "oomtrace watch --namespace shop --since 10m   # what was recorded since, first",
    )
    add_filter_args(w, default_since=None)
    output(w, ("table", "json"))
    w.set_defaults(func=_query("watch"))

    from oomtrace.ui.cli import add_ui_command

    add_ui_command(query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
