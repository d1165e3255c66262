"""The `oomtrace` command: one entry point, a sub-command per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oomtrace import logs


def _agent(args: argparse.Namespace) -> int:
    from oomtrace.agent.errors import AgentError
    from oomtrace.agent.main import run_agent

    try:
        run_agent(
            stdout=args.stdout,
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


def build_parser() -> argparse.ArgumentParser:
    from oomtrace.agent.doctor import DEFAULT_STATUS_FILE

    p = argparse.ArgumentParser(prog="oomtrace", description="Explain every OOM kill on this node.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="record OOM kills on this node (root)")
    a.add_argument(
        "--stdout", action="store_true", help="print each record as one JSON line on stdout"
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
    a.set_defaults(func=_agent)

    d = sub.add_parser("doctor", help="what this host supports, and what the agent will record")
    d.add_argument("--json", action="store_true", help="machine-readable report")
    d.add_argument(
        "--no-load", action="store_true", help="do not compile and attach the BPF programs"
    )
    d.add_argument("--status-file", type=Path, default=DEFAULT_STATUS_FILE)
    d.set_defaults(func=_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
