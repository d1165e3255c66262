"""Dumps the raw BPF events of the next OOM kills to a JSON fixture, named by
kernel release, for the unit tests of decoding and record building.

    sudo .venv/bin/python tools/capture_fixture.py COUNT OUT.json

Provoke the kills yourself (in scratch cgroups) while it waits."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from oomtrace.agent.kernel.bcc_loader import BpfSession
from oomtrace.agent.kernel.btf import Btf
from oomtrace.agent.kernel.layout import resolve


def as_dict(ev: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, _type in ev._fields_:
        value = getattr(ev, name)
        if isinstance(value, bytes):
            out[name] = value.hex()
        elif hasattr(value, "__len__"):
            items = list(value)
            out[name] = bytes(items).hex() if name in ("cmdline", "memcg_names") else items
        else:
            out[name] = value
    return out


def main() -> None:
    count, path = int(sys.argv[1]), sys.argv[2]
    session = BpfSession(resolve(Btf.load()), with_exec=False)
    kills: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    session.open_buffers(lambda e: kills.append(as_dict(e)), lambda e: notes.append(as_dict(e)))
    print("ready", flush=True)
    while len(kills) < count or len(notes) < count:
        session.poll(100)
    with open(path, "w") as f:
        json.dump({"kernel": os.uname().release, "kills": kills, "notes": notes}, f, indent=1)


if __name__ == "__main__":
    main()
