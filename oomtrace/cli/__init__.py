"""The `oomtrace` command: one entry point, a sub-command per job.

Where things go (each is the one place for its kind):
- a sub-command: a module here with `register(add)`, named in COMMANDS; it
  makes its parser with add(name, help, *examples), sets `run=` to a
  function of the parsed Namespace, and imports its heavy code inside that
  function, so `oomtrace history` does not load the agent;
- a filter flag of the query commands: cli/filters.py, FILTERS;
- an output format (-o): cli/output.py, FORMATS and its two printers.

Every exit is one of: 0; 1 (the command failed, a sentence on stderr); 2
(a bad flag: the sub-command's usage and `argument FLAG: ...`, as
argparse); 130 (Ctrl-C); 141 (stdout closed under us, as a program killed
by SIGPIPE, which is what kubectl and other Go programs report to a shell
then). Never a traceback for the last two."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Protocol

from oomtrace import __version__, logs
from oomtrace.cli.filters import FlagError
from oomtrace.cli.parsing import CommandParser, Help, examples

# The sub-command modules, in the order `oomtrace --help` lists them.
COMMANDS = ("agent", "collector", "certs", "doctor", "queries", "ui", "completion")
LOG_LEVELS = ["debug", "info", "warning", "error"]
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


class AddCommand(Protocol):
    def __call__(self, name: str, help_: str, *examples: str) -> CommandParser: ...


def build_parser() -> argparse.ArgumentParser:
    # --log-level is taken before or after the sub-command.
    common = CommandParser(add_help=False)
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
        formatter_class=Help,
        epilog=examples(
            "oomtrace agent --stdout                   # record kills on this node",
            "oomtrace history -n shop --since yesterday",
            "oomtrace show 3f2a9c1b77e0                # any unique prefix of an id",
            "oomtrace SUBCOMMAND --help                # each one's options and examples",
        ),
    )
    p.add_argument("--version", action="version", version=f"oomtrace {__version__}")
    p.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=LOG_LEVELS,
        help="how much to log on stderr (default: info; doctor: warning)",
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="SUBCOMMAND", parser_class=CommandParser
    )

    def add(name: str, help_: str, *lines: str) -> CommandParser:
        q: CommandParser = sub.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            parents=[common],
            formatter_class=Help,
            epilog=examples(*lines),
        )
        q.set_defaults(command_parser=q)
        return q

    for module in COMMANDS:
        importlib.import_module(f"oomtrace.cli.{module}").register(add)
    return p


def log_level(args: argparse.Namespace) -> str:
    """--log-level where given (before or after the sub-command), else the
    sub-command's own default_log_level, else info."""
    level = getattr(args, "log_level", None) or getattr(args, "default_log_level", "info")
    return str(level)


def _stdout_gone() -> None:
    """Python's recipe for a closed stdout (the signal module's notes on
    SIGPIPE): what is still buffered goes to /dev/null, so the flush at
    exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file (a test's capture): nothing to flush into a pipe


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logs.configure(log_level(args))
        try:
            rc: int = args.run(args)
        except FlagError as exc:
            parser: Any = args.command_parser
            parser.error(str(exc))  # exits 2
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
