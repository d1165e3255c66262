"""The `oomtrace` command: one entry point, a sub-command per job."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from oomtrace import logs
from oomtrace.client import add_filter_args


def _agent(args: argparse.Namespace) -> int:
    from oomtrace.agent.errors import AgentError
    from oomtrace.agent.main import run_agent

    try:
        if not args.stdout and not args.collector:
            print("oomtrace agent: give --stdout, --collector HOST:PORT, or both", file=sys.stderr)
            return 2
        from oomtrace.agent.runtimes import RuntimeRoots

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
            node=args.node,
        )
    except AgentError as exc:
        import structlog

        structlog.get_logger("oomtrace.agent").error("agent.cannot_run", reason=str(exc))
        print(f"oomtrace agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from oomtrace.agent.doctor import run_doctor

    return run_doctor(load=not args.no_load, as_json=args.json, status_file=args.status_file)


def _collector(args: argparse.Namespace) -> int:
    from oomtrace.collector.errors import CollectorError
    from oomtrace.collector.main import parse_duration, run_collector

    try:
        retention = parse_duration(args.retention)
    except ValueError as exc:
        print(f"oomtrace collector: --retention: {exc}", file=sys.stderr)
        return 2
    try:
        run_collector(args.listen, args.db, retention)
    except (CollectorError, RuntimeError) as exc:
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


def build_parser() -> argparse.ArgumentParser:
    from oomtrace.agent.doctor import DEFAULT_STATUS_FILE

    p = argparse.ArgumentParser(prog="oomtrace", description="Explain every OOM kill on this node.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="record OOM kills on this node (root)")
    a.add_argument(
        "--stdout", action="store_true", help="print each record as one JSON line on stdout"
    )
    a.add_argument(
        "--collector",
        default=os.environ.get("OOMTRACE_COLLECTOR"),
        metavar="HOST:PORT",
        help="stream records to this collector (default: $OOMTRACE_COLLECTOR)",
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
        help="records wait here, on disk, until the collector acknowledges them (default STATE_DIR/spool)",
    )
    a.add_argument(
        "--no-backfill",
        dest="backfill",
        action="store_false",
        help="do not record kills that happened before this agent started",
    )
    a.add_argument("--node", help="node name in records (default: $NODE_NAME or the hostname)")
    a.add_argument(
        "--hold",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="wait at most this long for a victim to exit before recording it (default 3)",
    )
    a.add_argument(
        "--status-file",
        type=Path,
        default=DEFAULT_STATUS_FILE,
        help="where the agent writes its counters for `doctor`",
    )
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

    d = sub.add_parser("doctor", help="what this host supports, and what the agent will record")
    d.add_argument("--json", action="store_true", help="machine-readable report")
    d.add_argument(
        "--no-load", action="store_true", help="do not compile and attach the BPF programs"
    )
    d.add_argument("--status-file", type=Path, default=DEFAULT_STATUS_FILE)
    d.set_defaults(func=_doctor)

    c = sub.add_parser("collector", help="store records from agents and answer queries")
    c.add_argument("--listen", default="127.0.0.1:50051", metavar="ADDR")
    c.add_argument(
        "--db", type=Path, default=Path("/var/lib/oomtrace/collector.db"), help="SQLite file"
    )
    c.add_argument("--retention", default="30d", help="drop records older than this (30d, 12h)")
    c.set_defaults(func=_collector)

    collector_default = os.environ.get("OOMTRACE_COLLECTOR", "127.0.0.1:50051")

    h = sub.add_parser("history", help="OOM kills, newest first")
    h.add_argument("--collector", default=collector_default, metavar="HOST:PORT")
    add_filter_args(h, default_since="7d")
    h.add_argument("--limit", type=int, default=50)
    h.add_argument("--json", action="store_true", help="records as protobuf JSON, one per line")
    h.add_argument(
        "--incidents",
        action="store_true",
        help="one row per OOM-killer invocation (group kills folded)",
    )
    h.set_defaults(func=_query("history"))

    s = sub.add_parser("show", help="the full report of one kill")
    s.add_argument("id")
    s.add_argument("--collector", default=collector_default, metavar="HOST:PORT")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_query("show"))

    t = sub.add_parser("top", help="who gets OOM-killed most")
    t.add_argument("--collector", default=collector_default, metavar="HOST:PORT")
    t.add_argument(
        "--by",
        default="cgroup",
        choices=["cgroup", "container", "pod", "namespace", "node", "image", "comm"],
    )
    add_filter_args(t, default_since="7d")
    t.add_argument("--limit", type=int, default=10)
    t.set_defaults(func=_query("top"))

    pr = sub.add_parser("pressure", help="memory pressure records, newest first")
    pr.add_argument("--collector", default=collector_default, metavar="HOST:PORT")
    add_filter_args(pr, default_since="1h")
    pr.add_argument("--limit", type=int, default=50)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_query("pressure"))

    w = sub.add_parser("watch", help="OOM kills as the collector records them")
    w.add_argument("--collector", default=collector_default, metavar="HOST:PORT")
    add_filter_args(w, default_since=None)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=_query("watch"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
