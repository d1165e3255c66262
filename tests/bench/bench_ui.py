"""The ui's page loads, in Debian's Chromium (Playwright), against a real
collector process on SQLite: a Go kill's post-mortem (the heaviest page:
timeline, three flame graphs, the kernel's report), and the kill list
showing 10,000 kills (?limit=10000) over a store of that many, and its
first page (100 rows, the default) over the same store. Each figure
is the browser's own, from navigation start to its load event, the median
of --runs after one warm-up. Goals: a kill under 200 ms, the list of
10,000 under 500 ms. The store's records are copies of a real kill's
record (tests/fixtures/ui-records-*.jsonl) with their own ids and times.
Prints figures; asserts nothing.

    .venv/bin/python tests/bench/bench_ui.py [--kills 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.integration.harness import CollectorProcess, free_port
from tests.integration.test_ui import CHROMIUM, Ui, fixture_records, ingest


def load_ms(page: object, url: str) -> float:
    page.goto(url)  # type: ignore[attr-defined]
    t = page.evaluate(  # type: ignore[attr-defined]
        "(() => { const n = performance.getEntriesByType('navigation')[0]; "
        "return n.loadEventEnd - n.startTime; })()"
    )
    return float(t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    kills, pressure = fixture_records()
    go = next(k for k in kills if k.go.heap_profile.pprof)
    plain = next(k for k in kills if not k.HasField("go"))
    work = Path(tempfile.mkdtemp(prefix="oomtrace-bench-ui-"))
    collector = CollectorProcess(work / "c.db", free_port())
    ui = None
    try:
        ingest(collector.addr, kills, pressure)
        started = time.monotonic()
        now_ns = time.time_ns()
        batch = []
        for i in range(args.kills - len(kills)):
            ev = event_pb2.OomEvent()
            ev.CopyFrom(plain)
            ev.id = f"{i:032x}"
            ev.victim.pid = 10_000 + i
            ev.killed_at.FromNanoseconds(now_ns - (i + 1) * 1_000_000_000)
            batch.append(collector_pb2.IngestRequest(event=ev))
        with grpc.insecure_channel(collector.addr) as ch:
            for _ in collector_pb2_grpc.IngestServiceStub(ch).Ingest(iter(batch)):
                pass
        print(f"stored {args.kills} kills in {time.monotonic() - started:.1f} s")
        ui = Ui(collector.addr)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = b.new_page(viewport={"width": 1280, "height": 900})
            for name, url, goal in (
                ("kill page (Go, flame graphs)", f"{ui.url}/kill/{go.id}", 200),
                ("kill page (plain)", f"{ui.url}/kill/{plain.id}", 200),
                (f"list of {args.kills} kills", f"{ui.url}/?since=30d&limit={args.kills}", 500),
                ("list, first page (100)", f"{ui.url}/?since=30d", 500),
            ):
                load_ms(page, url)  # warm-up
                times = [load_ms(page, url) for _ in range(args.runs)]
                rows = page.locator("#kills tr").count() if "list" in name else 0
                if "list" in name and not rows:
                    print(f"{name}: no rows: {page.locator('main').inner_text()[:300]}")
                print(
                    f"{name:32} median {statistics.median(times):7.1f} ms, max {max(times):7.1f} ms"
                    f" (goal < {goal} ms)" + (f", {rows} rows" if rows else "")
                )
            b.close()
    finally:
        if ui is not None:
            ui.stop()
        collector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
