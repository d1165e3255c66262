#!/usr/bin/env python3
"""Makes one real kill of each shape the ui draws (tests/integration/ui_kills.py)
under a real agent and collector, and writes their records and the
collector's pressure records to tests/fixtures/ui-records-<kernel>.jsonl, one
{"kind": "kill"|"pressure", "record": ...} a line. The browser tests store
these into a real collector (and make one live kill of their own), so CI
does not spend a minute re-making them. Root; run from the repository:
    .venv/bin/python tools/capture-ui-records.py"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from google.protobuf import json_format

from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.integration import ui_kills
from tests.integration.containers import LEAKGO_SRC, build_oomgo
from tests.integration.harness import AgentProcess, CollectorProcess, free_port


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="oomtrace-capture-"))
    collector = CollectorProcess(work / "c.db", free_port())
    agent = AgentProcess("--collector", collector.addr, "--killer-writes", "tracepoint")
    out = (
        Path(__file__).resolve().parents[1]
        / f"tests/fixtures/ui-records-{os.uname().release}.jsonl"
    )
    try:
        agent.wait_ready()
        leakgo = build_oomgo(work, "newest", "normal", LEAKGO_SRC)
        pids = [
            ui_kills.plain_kill(),
            ui_kills.hostile_name_kill(),
            ui_kills.adj_kill(),
            ui_kills.userspace_kill(),
            ui_kills.go_leak_kill(leakgo),
            ui_kills.slow_growth_kill(),
        ]
        recs = agent.take(len(pids), timeout=60, where=lambda r: r["victim"]["pid"] in pids)
        with grpc.insecure_channel(collector.addr) as ch:
            stub = collector_pb2_grpc.HistoryServiceStub(ch)
            whole = [stub.GetEvent(collector_pb2.GetEventRequest(id=r["id"])) for r in recs]
            pressure = stub.ListPressure(collector_pb2.ListPressureRequest(page_size=1000)).records
        with out.open("w") as f:
            for ev in whole:
                f.write(
                    json.dumps(
                        {
                            "kind": "kill",
                            "record": json_format.MessageToDict(
                                ev, preserving_proto_field_name=True
                            ),
                        }
                    )
                    + "\n"
                )
            for pr in pressure:
                f.write(
                    json.dumps(
                        {
                            "kind": "pressure",
                            "record": json_format.MessageToDict(
                                pr, preserving_proto_field_name=True
                            ),
                        }
                    )
                    + "\n"
                )
        print(f"{out}: {len(whole)} kills, {len(pressure)} pressure records")
    finally:
        agent.stop()
        collector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
