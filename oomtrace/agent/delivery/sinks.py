"""Where finished records go, beside the spool: stdout for `--stdout`."""

from __future__ import annotations

import sys
from typing import TextIO

from oomtrace.records import to_json
from oomtrace.v1 import event_pb2


class StdoutSink:
    """One JSON object per line, flushed at once so a pipe sees each kill."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, event: event_pb2.OomEvent) -> None:
        self.stream.write(to_json(event) + "\n")
        self.stream.flush()
