"""The `oomtrace ui` sub-command's flags, registered by oomtrace/cli/ui.py
with the query commands' own --collector and TLS flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:9603"


def _run(args: argparse.Namespace) -> int:
    import sys

    from oomtrace import client
    from oomtrace.ui import server

    try:
        return server.run(args)
    except client.ClientError as exc:
        print(f"oomtrace ui: {exc}", file=sys.stderr)
        return 1


def add_ui_command(query: Callable[..., argparse.ArgumentParser]) -> None:
    u = query(
        "ui",
        "a local web page of the kills: the list, each kill's post-mortem, top, pressure",
        "oomtrace ui                                 # then open http://127.0.0.1:9603/",
        "oomtrace ui --collector collector.oomtrace:50051 --tls-ca ca.crt --tls-cert me.crt "
        "--tls-key me.key",
        "oomtrace ui --listen 0.0.0.0:9603 --ui-tls-cert ui.crt --ui-tls-key ui.key",
    )
    u.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="where to serve; an address other than loopback only with --ui-tls-cert/--ui-tls-key",
    )
    u.add_argument("--ui-tls-cert", type=Path, help="the ui's own certificate, to serve HTTPS")
    u.add_argument("--ui-tls-key", type=Path, help="its key")
    u.set_defaults(run=_run)
