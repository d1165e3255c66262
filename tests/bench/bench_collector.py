"""Collector benchmark: ingest rate into SQLite, `history` query latency over
a large store, `history` while 200 agent streams are connected, and (as
root) kill-to-visible-in-history end to end; ingest, kill-to-history and
the 200-stream query each without TLS and with mutual TLS. Prints figures;
asserts nothing. The collector runs as its own process, as deployed.

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
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace import tls
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.collector.store import Store
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


class Mode:
    """Plaintext on loopback, or mutual TLS with a throwaway CA."""

    def __init__(self, pki: Path | None) -> None:
        self.pki = pki
        self.name = "mTLS " if pki else "plain"
        if pki:
            tls.make_set(pki, shared_agents=True, readers=("reader",))

    def collector(self, db: Path) -> CollectorProcess:
        if self.pki is None:
            return CollectorProcess(db, free_port())
        p = self.pki
        return CollectorProcess(
            db,
            free_port(),
            f"--tls-cert={p}/collector.crt",
            f"--tls-key={p}/collector.key",
            f"--client-ca={p}/ca.crt",
        )

    def channel(self, addr: str, who: str) -> grpc.Channel:
        if self.pki is None:
            return grpc.insecure_channel(addr)
        p = self.pki
        return tls.channel(addr, ca=p / "ca.crt", cert=p / f"{who}.crt", key=p / f"{who}.key")

    def agent_args(self) -> list[str]:
        if self.pki is None:
            return []
        p = self.pki
        return [f"--tls-ca={p}/ca.crt", f"--tls-cert={p}/agents.crt", f"--tls-key={p}/agents.key"]


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def fill(store: Store, rows: int) -> float:
    """Stores `rows` realistic records over the last 30 days; the seconds."""
    now = time.time_ns()
    t0 = time.monotonic()
    for start in range(0, rows, 5000):
        store.put_many(
            [
                realistic(i, now - 30 * 86400 * 10**9, 30 * 86400)
                for i in range(start, min(rows, start + 5000))
            ]
        )
    return time.monotonic() - t0


def last_week(q: int) -> collector_pb2.EventFilter:
    """The q-th query people run: one namespace, the last 7 days."""
    f = collector_pb2.EventFilter(namespace=NAMESPACES[q % len(NAMESPACES)])
    f.since.FromNanoseconds(time.time_ns() - 7 * 86400 * 10**9)
    return f


def time_history(
    stub: collector_pb2_grpc.HistoryServiceStub, queries: int, expect: int | None = None
) -> list[float]:
    """ms for each of `queries` history queries (a page of 50); expect: how
    many records each must return, when the store is large enough to know."""
    lat = []
    for q in range(queries):
        f = last_week(q)
        t = time.perf_counter()
        resp = stub.ListEvents(collector_pb2.ListEventsRequest(filter=f, page_size=50))
        lat.append((time.perf_counter() - t) * 1000)
        if expect is not None:
            assert len(resp.events) == expect
    return lat


def bench_ingest(n: int, streams: int, mode: Mode) -> None:
    with tempfile.TemporaryDirectory() as d:
        col = mode.collector(Path(d) / "c.db")
        try:
            now = time.time_ns()
            events = [realistic(i, now - 86400 * 10**9, 86400) for i in range(n)]
            size = statistics.mean(len(e.SerializeToString()) for e in events[:1000])
            per = n // streams
            acked = [0] * streams

            def run(k: int) -> None:
                with mode.channel(col.addr, "agents") as ch:
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
                f"ingest {mode.name}     {sum(acked) / dt:,.0f} records/s acked ({sum(acked)} records of "
                f"~{size:.0f} B over {streams} stream(s) in {dt:.1f} s; goal >= 5,000/s)"
            )
        finally:
            col.stop()


def bench_query(rows: int, queries: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "c.db"
        store = SqliteStore(db)
        took = fill(store, rows)
        store.close()
        print(
            f"                 (filled {rows:,} records in {took:.0f} s, {db.stat().st_size / 2**20:.0f} MiB)"
        )
        col = CollectorProcess(db, free_port())
        try:
            with grpc.insecure_channel(col.addr) as ch:
                lat = time_history(collector_pb2_grpc.HistoryServiceStub(ch), queries, expect=50)
            print(
                f"history query    p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms "
                f"(namespace + last 7 days, 50 per page, n={queries}, over {rows:,} records; goal p99 < 50 ms)"
            )
        finally:
            col.stop()


def bench_query_with_streams(rows: int, queries: int, streams: int, mode: Mode) -> None:
    """history while `streams` agents are connected (idle, as most are)."""
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "c.db"
        store = SqliteStore(db)
        fill(store, rows)
        store.close()
        col = mode.collector(db)
        release = threading.Event()

        def idle() -> Iterator[collector_pb2.IngestRequest]:
            release.wait(600)
            yield from ()

        agents = [mode.channel(col.addr, "agents") for _ in range(streams)]
        calls = []
        try:
            for ch in agents:
                calls.append(collector_pb2_grpc.IngestServiceStub(ch).Ingest(idle()))
            for ch in agents:
                grpc.channel_ready_future(ch).result(timeout=30)
            with mode.channel(col.addr, "reader") as ch:
                lat = time_history(collector_pb2_grpc.HistoryServiceStub(ch), queries)
            print(
                f"history {mode.name}    p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms "
                f"with {streams} agent streams connected (n={queries}, over {rows:,} records; "
                "goal p99 < 100 ms)"
            )
        finally:
            release.set()
            for c in calls:
                c.cancel()  # type: ignore[no-untyped-call]
            for ch in agents:
                ch.close()
            col.stop()


def time_kills_to_history(stub: collector_pb2_grpc.HistoryServiceStub, kills: int) -> list[float]:
    """ms from each kill (its record's killed_at) to its record in history
    as `stub` answers, for `kills` real kills in a scratch cgroup (root)."""
    from tests.integration.harness import ALLOCATE_FOREVER, MIB, scratch_cgroup

    lat = []
    with scratch_cgroup(32 * MIB) as cg:
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
    return lat


def bench_kill_to_history(kills: int, mode: Mode) -> None:
    from tests.integration.harness import AgentProcess

    with tempfile.TemporaryDirectory() as d:
        col = mode.collector(Path(d) / "c.db")
        agent = AgentProcess("--collector", col.addr, "--spool", f"{d}/spool", *mode.agent_args())
        try:
            agent.wait_ready()
            with mode.channel(col.addr, "reader") as ch:
                lat = time_kills_to_history(collector_pb2_grpc.HistoryServiceStub(ch), kills)
            print(
                f"kill-to-history {mode.name} p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms "
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
    ap.add_argument("--idle-streams", type=int, default=200)
    args = ap.parse_args()
    random.seed(7)
    with tempfile.TemporaryDirectory() as pki:
        modes = [Mode(None), Mode(Path(pki))]
        for mode in modes:
            bench_ingest(args.ingest, args.streams, mode)
        if args.rows:
            bench_query(args.rows, args.queries)
        for mode in modes:
            bench_query_with_streams(100_000, args.queries, args.idle_streams, mode)
        if os.geteuid() == 0 and args.kills:
            for mode in modes:
                bench_kill_to_history(args.kills, mode)
    if os.geteuid() != 0:
        print("kill-to-history  skipped: needs root to OOM-kill in a scratch cgroup")


if __name__ == "__main__":
    main()
