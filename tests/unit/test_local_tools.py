"""`make run` and `make oom` as a newcomer meets them: the agent's lost
and regained collector said where they look, and no kill provoked when no
collector would record it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_says_when_its_agent_loses_and_regains_its_collector() -> None:
    def line(event: str, **kw: object) -> str:
        return json.dumps({"event": event, "level": "info", **kw})

    log = "\n".join(
        [
            line("agent.ready"),
            line("export.connected", collector="127.0.0.1:50051", pending=0),
            "warning: a compiler's line, not JSON",
            line(
                "export.reconnecting",
                collector="127.0.0.1:50051",
                status="UNAVAILABLE",
                detail="Socket closed",
                pending=1,
            ),
            line("export.collector_unreachable", collector="127.0.0.1:50051", pending=2),
            line("export.connected", collector="127.0.0.1:50051", pending=2),
            line("export.connected", collector="127.0.0.1:50051", pending=0),
        ]
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/agent_link.py")],
        input=log + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "oomtrace: the agent lost its collector 127.0.0.1:50051 (Socket closed); it keeps "
        "recording, 1 record(s) wait in its spool",
        "oomtrace: the agent is back on its collector 127.0.0.1:50051; sending the 2 record(s) "
        "its spool held",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="make oom needs root (it makes a memory cgroup)")
def test_make_oom_asks_for_the_collector_before_it_kills_anything() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/provoke_oom.py"), "--collector", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode != 0
    assert "no collector at 127.0.0.1:1" in done.stderr
    assert "started pid" not in done.stdout  # nothing was started, nothing killed
