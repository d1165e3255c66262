"""`oomtrace ui`: the web page of the kills (oomtrace/ui/), with the query
commands' own --collector and TLS flags."""

from __future__ import annotations

from oomtrace.cli import AddCommand
from oomtrace.cli.parsing import CommandParser


def register(add: AddCommand) -> None:
    from oomtrace.cli.queries import _query
    from oomtrace.ui.cli import add_ui_command

    def query(name: str, help_: str, *examples: str) -> CommandParser:
        return _query(add, name, help_, *examples)

    add_ui_command(query)
