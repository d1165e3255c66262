"""`oomtrace doctor`: what this host supports, and what the running agent
has recorded."""

from __future__ import annotations

import argparse
from pathlib import Path

from oomtrace.cli import AddCommand


def run(args: argparse.Namespace) -> int:
    from oomtrace.agent.doctor import run_doctor

    fmt = "json" if args.json else args.output
    return run_doctor(load=not args.no_load, fmt=fmt, status_file=args.status_file)


def register(add: AddCommand) -> None:
    d = add(
        "doctor",
        "what this host supports, what the agent will record, and the running agent's counters",
        "oomtrace doctor                       # compiles and attaches the BPF programs once",
        "oomtrace doctor --no-load -o json     # checks only: inside the agent's pod, this",
        "oomtrace doctor --no-load --status-file var/agent-status.json   # make run's agent",
    )
    d.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table for people; json or yaml, one document",
    )
    d.add_argument("--json", action="store_true", help="the same as -o json")
    d.add_argument(
        "--no-load",
        action="store_true",
        help="do not compile and attach the BPF programs (compiling takes ~110 MiB, which "
        "counts against the memory limit of the pod it runs in)",
    )
    d.add_argument(
        "--status-file",
        type=Path,
        help="the status file of the agent to report on (default: that of the `oomtrace "
        "agent` running here, from its command line; else the agent's default, "
        "/run/oomtrace/agent-status.json)",
    )
    # Its own logs (hooks attached...) would come before the report: only
    # warnings and errors, unless --log-level says otherwise.
    d.set_defaults(run=run, default_log_level="warning")
