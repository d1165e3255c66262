"""Raw kernel events dumped from real runs (tools/capture_fixture.py), as
objects shaped like BCC's decoded structs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KILLS_6_18 = FIXTURES / "kills-6.18.44-fc-v657.json"

_BYTES_FIELDS = {"victim_comm", "trigger_comm", "exe_name", "cmdline", "memcg_names"}


def raw_event(fields: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        **{k: bytes.fromhex(v) if k in _BYTES_FIELDS else v for k, v in fields.items()}
    )


def load(path: Path = KILLS_6_18) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def kernel_lines(data: dict[str, Any]) -> dict[int, dict[str, str]]:
    """The kernel's own report lines of the fixture's kills, by victim pid."""
    out: dict[int, dict[str, str]] = {}
    for line in data["kernel_report"]:
        if m := re.search(
            r"Killed process (\d+) .*total-vm:(\d+)kB, anon-rss:(\d+)kB, file-rss:(\d+)kB, shmem-rss:(\d+)kB, UID:(\d+) pgtables:(\d+)kB oom_score_adj:(-?\d+)",
            line,
        ):
            keys = ("total_vm", "anon", "file", "shmem", "uid", "pgtables", "adj")
            out.setdefault(int(m.group(1)), {}).update(zip(keys, m.groups()[1:], strict=True))
        elif m := re.search(r"oom_memcg=([^,]*),task_memcg=([^,]*),.*pid=(\d+),", line):
            out.setdefault(int(m.group(3)), {}).update(oom_memcg=m.group(1), task_memcg=m.group(2))
    return out
