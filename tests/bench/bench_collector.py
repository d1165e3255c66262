"""Collector benchmark: ingest rate into SQLite, `history` query latency over
a large store, and (as root) kill-to-visible-in-history end to end. Prints
figures; asserts nothing. The collector runs as its own process, as deployed.

    .venv/bin/python tests/bench/bench_collector.py [--ingest 50000] [--rows 1000000] [--kills 20]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace.collector.store import SqliteStore
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.integration.harness import CollectorProcess, free_port
from tests.unit.events import make_event

NAMESPACES = [f"team-{i}" for i in range(50)]


def realistic(i: int, base_ns: int, spread_s: int) -> event_pb2.OomEvent:
    ns = NAMESPACES[i % len(NAMESPACES)]
    ev = make_event(
        killed_at_ns=base_ns + random.randrange(spread_s) * 10**9,
        node=f"node-{i % 200}",
        namespace=ns,
        pod=f"api-{i % 997}-7d9f8b6c5-x{i % 31}",
        container="api",
        image=f"registry.example/{ns}/api:1.{i % 40}",
        cgroup=f"/kubepods/burstable/pod{i:08x}-aaaa-bbbb-cccc-0123456789ab/{i:064x}",
        event_id=f"{i:032x}",
    )
    ev.container.runtime, ev.container.id = "containerd", f"{i:064x}"
    ev.pod.uid, ev.pod.qos_class = f"{i:08x}-aaaa-bbbb-cccc-0123456789ab", "Burstable"
    return ev


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def bench_ingest(n: int, streams: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        col = CollectorProcess(Path(d) / "c.db", free_port())
        try:
            now = time.time_ns()
            events = [realistic(i, now - 86400 * 10**9, 86400) for i in range(n)]
            size = statistics.mean(len(e.SerializeToString()) for e in events[:1000])
            per = n // streams
            acked = [0] * streams

            def run(k: int) -> None:
                with grpc.insecure_channel(col.addr) as ch:
                    stub = collector_pb2_grpc.IngestServiceStub(ch)
                    reqs = (
                        collector_pb2.IngestRequest(event=e)
                        for e in events[k * per : (k + 1) * per]
                    )
                    for resp in stub.Ingest(reqs):
                        acked[k] += len(resp.acks)

            t0 = time.monotonic()
            threads = [threading.Thread(target=run, args=(k,)) for k in range(streams)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.monotonic() - t0
            print(
                f"ingest           {sum(acked) / dt:,.0f} records/s acked ({sum(acked)} records of "
                f"~{size:.0f} B over {streams} stream(s) in {dt:.1f} s; goal >= 5,000/s)"
            )
        finally:
            col.stop()


def bench_query(rows: int, queries: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "c.db"
        store = SqliteStore(db)
        now = time.time_ns()
        t0 = time.monotonic()
        batch = 5000
        for start in range(0, rows, batch):
            store.put_many(
                [
                    realistic(i, now - 30 * 86400 * 10**9, 30 * 86400)
                    for i in range(start, min(rows, start + batch))
                ]
            )
        store.close()
        print(
            f"                 (filled {rows:,} records in {time.monotonic() - t0:.0f} s, {db.stat().st_size / 2**20:.0f} MiB)"
        )
        col = CollectorProcess(db, free_port())
        try:
            with grpc.insecure_channel(col.addr) as ch:
                stub = collector_pb2_grpc.HistoryServiceStub(ch)
                lat = []
                for q in range(queries):
                    f = collector_pb2.EventFilter(namespace=NAMESPACES[q % len(NAMESPACES)])
                    f.since.FromNanoseconds(now - 7 * 86400 * 10**9)
                    t = time.perf_counter()
                    resp = stub.ListEvents(collector_pb2.ListEventsRequest(filter=f, page_size=50))
                    lat.append((time.perf_counter() - t) * 1000)
                    assert len(resp.events) == 50
            print(
                f"history query    p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms "
                f"(namespace + last 7 days, 50 per page, n={queries}, over {rows:,} records; goal p99 < 50 ms)"
            )
        finally:
            col.stop()


def bench_kill_to_history(kills: int) -> None:
    from tests.integration.harness import ALLOCATE_FOREVER, MIB, AgentProcess, scratch_cgroup

    with tempfile.TemporaryDirectory() as d:
        col = CollectorProcess(Path(d) / "c.db", free_port())
        agent = AgentProcess("--collector", col.addr, "--spool", f"{d}/spool")
        try:
            agent.wait_ready()
            lat = []
            with scratch_cgroup(32 * MIB) as cg, grpc.insecure_channel(col.addr) as ch:
                stub = collector_pb2_grpc.HistoryServiceStub(ch)
                for _ in range(kills):
                    p = cg.spawn(ALLOCATE_FOREVER)
                    deadline = time.monotonic() + 30
                    found = None
                    while found is None and time.monotonic() < deadline:
                        resp = stub.ListEvents(collector_pb2.ListEventsRequest(page_size=5))
                        found = next((e for e in resp.events if e.victim.pid == p.pid), None)
                        if found is None:
                            time.sleep(0.002)
                    seen = time.time_ns()
                    p.wait()
                    assert found is not None, f"kill of {p.pid} never reached the collector"
                    lat.append((seen - found.killed_at.ToNanoseconds()) / 1e6)
            print(
                f"kill-to-history  p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms "
                f"(n={kills}; goal p99 < 1 s)"
            )
        finally:
            agent.stop()
            col.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingest", type=int, default=50_000)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    random.seed(7)
    bench_ingest(args.ingest, args.streams)
    if args.rows:
        bench_query(args.rows, args.queries)
    if os.geteuid() == 0 and args.kills:
        bench_kill_to_history(args.kills)
    else:
        print("kill-to-history  skipped: needs root to OOM-kill in a scratch cgroup")


if __name__ == "__main__":
    main()
