"""Both stores side by side in one run: SQLite (one collector) and PostgreSQL
(several collectors on one database, a real server this starts). Prints
figures; asserts nothing.

  - ingest: 50 simulated agents streaming, over 3 collector replicas on
    PostgreSQL against one collector on SQLite: records/s, ack latency;
  - `history` (namespace + last 7 days) and `top --by pod` over --rows
    stored records on each backend: p50/p99;
  - (as root) kill to visible in `history` through a second replica.

    .venv/bin/python tests/bench/bench_stores.py [--rows 1000000] [--agents 50] [--per-agent 400]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace.collector.postgres import PostgresStore
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.collector.store import Store
from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.bench.bench_collector import (
    fill,
    last_week,
    percentile,
    realistic,
    time_history,
    time_kills_to_history,
)
from tests.integration.harness import CollectorProcess, free_port
from tests.postgres_server import PostgresServer


def collectors(backend: str, where: str, n: int, d: Path) -> list[CollectorProcess]:
    if backend == "sqlite":
        return [CollectorProcess(Path(where), free_port())]
    return [CollectorProcess(d / f"unused-{i}.db", free_port(), "--store", where) for i in range(n)]


WINDOW = 16  # records an agent has in flight, waiting for their ack


def bench_ingest(name: str, cols: list[CollectorProcess], agents: int, per_agent: int) -> None:
    now = time.time_ns()
    lat: list[float] = []
    lock = threading.Lock()

    def agent(k: int) -> None:
        col = cols[k % len(cols)]
        sent: queue.Queue[float] = queue.Queue()
        window = threading.Semaphore(WINDOW)

        def requests() -> Iterator[collector_pb2.IngestRequest]:
            for i in range(per_agent):
                window.acquire()
                sent.put(time.perf_counter())
                yield collector_pb2.IngestRequest(
                    event=realistic(k * per_agent + i, now - 86400 * 10**9, 86400)
                )

        mine = []
        with grpc.insecure_channel(col.addr) as ch:
            for resp in collector_pb2_grpc.IngestServiceStub(ch).Ingest(requests()):
                t = time.perf_counter()
                for _ack in resp.acks:
                    mine.append((t - sent.get_nowait()) * 1000)
                    window.release()
        with lock:
            lat.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=agent, args=(k,)) for k in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    print(
        f"ingest {name:28s} {len(lat) / dt:8,.0f} records/s, ack p50 {percentile(lat, 50):6.1f} ms "
        f"p99 {percentile(lat, 99):6.1f} ms ({agents} agents, {WINDOW} records in flight each, "
        f"{len(lat):,} records)"
    )


def bench_queries(name: str, addr: str, rows: int, n: int) -> None:
    with grpc.insecure_channel(addr) as ch:
        stub = collector_pb2_grpc.HistoryServiceStub(ch)
        hist = time_history(stub, n)
        top = []
        for q in range(n):
            t = time.perf_counter()
            stub.Top(
                collector_pb2.TopRequest(
                    filter=last_week(q), group_by=collector_pb2.TopRequest.POD, limit=10
                )
            )
            top.append((time.perf_counter() - t) * 1000)
    print(
        f"{name:10s} history p50 {percentile(hist, 50):6.1f} ms p99 {percentile(hist, 99):6.1f} ms; "
        f"top --by pod p50 {percentile(top, 50):6.1f} ms p99 {percentile(top, 99):6.1f} ms "
        f"(namespace + last 7 days, n={n}, over {rows:,} records; goal p99 < 50 ms)"
    )


def bench_kill_through_second_replica(url: str, d: Path, kills: int) -> None:
    from tests.integration.harness import AgentProcess

    a, b = collectors("postgresql", url, 2, d)
    agent = AgentProcess("--collector", a.addr, "--spool", f"{d}/spool")
    try:
        agent.wait_ready()
        with grpc.insecure_channel(b.addr) as ch:
            lat = time_kills_to_history(collector_pb2_grpc.HistoryServiceStub(ch), kills)
        print(
            f"kill to history through a second replica: p50 {percentile(lat, 50):.1f} ms "
            f"p99 {percentile(lat, 99):.1f} ms (n={kills}; goal p99 < 1 s)"
        )
    finally:
        agent.stop()
        a.stop()
        b.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--per-agent", type=int, default=400)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    random.seed(7)
    server = PostgresServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            # Ingest, on empty stores.
            for backend, where, n, label in (
                ("sqlite", str(d / "ingest.db"), 1, "1 collector on SQLite"),
                ("postgresql", server.database(), 3, "3 collectors on PostgreSQL"),
            ):
                cols = collectors(backend, where, n, d)
                try:
                    bench_ingest(label, cols, args.agents, args.per_agent)
                finally:
                    for c in cols:
                        c.stop()
            # Queries over a large store.
            for backend in ("sqlite", "postgresql"):
                where = str(d / "big.db") if backend == "sqlite" else server.database()
                store: Store = (
                    SqliteStore(Path(where)) if backend == "sqlite" else PostgresStore(where)
                )
                took = fill(store, args.rows)
                size = store.size_bytes()
                store.close()
                print(
                    f"{backend:10s} filled {args.rows:,} records in {took:.0f} s "
                    f"({size / 2**20:.0f} MiB)"
                )
                (col,) = collectors(backend, where, 1, d)
                try:
                    bench_queries(backend, col.addr, args.rows, args.queries)
                finally:
                    col.stop()
            if os.geteuid() == 0 and args.kills:
                bench_kill_through_second_replica(server.database(), d, args.kills)
            else:
                print(
                    "kill to history: skipped (--kills 0, or not root: it OOM-kills in a scratch cgroup)"
                )
    finally:
        server.close()


if __name__ == "__main__":
    main()
