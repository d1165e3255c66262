"""`make run`'s line when its agent loses or regains its collector: follows
the agent's JSON log (var/agent.log, from its end; stdin when no path is
given) and says each change once, where the person running `make run`
looks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

LOST = {"export.reconnecting", "export.collector_unreachable", "export.tls_unreadable"}
BACK = "export.connected"


def changes(lines: Iterable[str]) -> Iterator[str]:
    """One sentence per change of the agent's link to its collector."""
    up: bool | None = None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line that is not the agent's JSON (a compiler warning)
        if not isinstance(entry, dict):
            continue
        event = entry.get("event")
        pending = entry.get("pending", "?")
        if event in LOST and up is not False:
            why = entry.get("detail") or entry.get("status") or entry.get("error") or "unreachable"
            yield (
                f"oomtrace: the agent lost its collector {entry.get('collector', '')} ({why}); "
                f"it keeps recording, {pending} record(s) wait in its spool"
            )
            up = False
        elif event == BACK:
            if up is False:
                yield (
                    f"oomtrace: the agent is back on its collector {entry.get('collector', '')}; "
                    f"sending the {pending} record(s) its spool held"
                )
            up = True


def follow(path: Path) -> Iterator[str]:
    """New lines of a file as they are written, from its end now."""
    with open(path, errors="replace") as f:
        f.seek(0, 2)
        part = ""
        while True:
            chunk = f.readline()
            if not chunk:
                time.sleep(0.2)
                continue
            part += chunk
            if part.endswith("\n"):
                yield part
                part = ""


def main() -> int:
    lines = follow(Path(sys.argv[1])) if len(sys.argv) > 1 else sys.stdin
    try:
        for sentence in changes(lines):
            print(sentence, flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
