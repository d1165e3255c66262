"""What every sub-command's parser shares: the help layout, the examples
block, argparse types that name what is wrong, and how a sub-command
reports a bad flag (its own usage, exit 2)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oomtrace import addresses, records


class Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help where it has one, and examples kept
    as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, "", False, argparse.SUPPRESS, [])
            or "default" in text
            or action.option_strings == []
            or not isinstance(default, (str, int, float, Path))
        ):
            return text
        return f"{text} (default: {default})"


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: a word it does not know is its error, with
    its usage, not the top-level parser's `unrecognized arguments`."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None:
            args = _glue_negative_times(list(args))
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


# Options whose value may start with a dash: journalctl's `--since -1h`.
DASHED_VALUES = ("--since", "--until", "-S", "-U")


def _glue_negative_times(args: list[str]) -> list[str]:
    """`--since -1h` as `--since=-1h`: argparse would take -1h for an option."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a in DASHED_VALUES and re.fullmatch(r"-\d.*", nxt):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def examples(*lines: str) -> str:
    """The epilog: two or three commands as a person would type them, each
    with what it does after a #."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _type(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    """A whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def duration_s(text: str) -> int:
    """Seconds in 30d, 12h, 90m, 45s, 2w."""
    n: int = _type(records.parse_duration_s, text)
    return n


def regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None


def address(text: str) -> str:
    """HOST:PORT, [IPv6]:PORT or unix:PATH to dial."""
    a: str = _type(addresses.check, text)
    return a


def listen_address(text: str) -> str:
    """The same, to serve on: port 0 is any free one."""
    a: str = _type(addresses.check, text, any_port=True)
    return a


def address_list(text: str) -> str:
    a: str = _type(addresses.check_list, text)
    return a


def client_tls_arguments(p: argparse.ArgumentParser) -> None:
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
