"""Fleet simulator: N agents, each the agent's own export path (a Spool on
disk and an Exporter streaming it), against real collector processes with
mutual TLS, then a storm: some of the agents spool records at once and the
store is counted against what was sent, record by record.

Agents run in worker processes (this file, `worker`), a thousand to a
process on one event loop, each with its own spool and its own TLS
connection; they share the `ingest-any-node` identity, each naming its own
node. Collectors listen on loopback addresses 127.0.0.1..n;
several collectors share one PostgreSQL (tests/postgres_server.py).

    .venv/bin/python tests/bench/fleet.py [--agents 10000] [--storm-agents 1000]
        [--records 50] [--collectors 1] [--store sqlite|postgresql]

Prints: agents connected, the collector's threads and RSS before and after
(RSS per idle stream), `history` p99 while they are connected and during the
storm, the storm's ingest rate, what pushback the agents met, and the lost and
duplicated counts. tests/integration/test_fleet.py runs it smaller in CI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace import tls
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2

REPO = Path(__file__).resolve().parents[2]
OOMTRACE = REPO / ".venv" / "bin" / "oomtrace"
FIXTURES = REPO / "tests" / "fixtures"
# A real kernel report (this machine's kernel), for real record sizes.
KMSG = FIXTURES / "kmsg-oom-memcg-6.18.44-fc-v657.txt"
# A Go victim's record carries two gzipped heap profiles (at the kill and
# before it); sizes as runtime/pprof writes them for a service of ~50 MiB.
PPROF_BYTES = 24 << 10


def raise_nofile() -> int:
    """Open files: one socket per agent (both ends here on loopback)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- records ------------------------------------------------------------------------


def kernel_report() -> event_pb2.KernelReport:
    """The kernel report of a real kill: its text and its task table."""
    from oomtrace.agent.kernel_log.reports import ReportParser, parse_record

    parser = ReportParser()
    report = None
    for line in KMSG.read_bytes().splitlines():
        rec = parse_record(line)
        if rec is not None:
            report = parser.feed(rec) or report
    assert report is not None, f"no report in {KMSG}"
    kr = event_pb2.KernelReport(
        invoker_comm=report.invoker_comm,
        gfp_mask=report.gfp_mask,
        order=report.order,
        stats_cgroup=report.stats_cgroup,
        constraint=report.constraint,
        raw="\n".join(report.lines),
    )
    for k, v in report.stats.items():
        kr.memcg_stats[k] = v
    for t in report.tasks:
        kr.tasks.add(pid=t.pid, name=t.name, rss_bytes=t.values.get("rss", 0) * 4096)
    return kr


def record(node: str, n: int, go: bool, kr: event_pb2.KernelReport) -> event_pb2.OomEvent:
    from tests.unit.events import make_event

    ev = make_event(
        node=node,
        namespace=f"team-{n % 50}",
        pod=f"api-{n % 97}-7d9f8b6c5-x{n % 31}",
        container="api",
        image=f"registry.example/team-{n % 50}/api:1.{n % 40}",
        event_id=f"{node}-{n:08d}-{random.getrandbits(64):016x}",
        killed_at_ns=time.time_ns(),
    )
    ev.kernel_report.CopyFrom(kr)
    if go:
        for prof in (ev.go.heap_profile, ev.go.heap_profile_before):
            prof.pprof = b"\x1f\x8b" + os.urandom(PPROF_BYTES)  # gzip does not shrink it
            prof.sample_rate = 512 * 1024
            for i in range(20):
                prof.top.add(function=f"main.handler{i}", inuse_bytes=(20 - i) << 20)
    return ev


# -- a worker: many agents in one process -------------------------------------------


class Agent:
    """One node's agent as the collector sees it: its own Spool on disk and
    its own connection, one Ingest stream sending what the spool holds (at
    most WINDOW unacknowledged) and deleting each record from the spool when
    its ack comes, reconnecting with backoff and jitter when the stream
    fails. This is oomtrace/agent/delivery/export.py's Exporter session on asyncio, so
    that a process carries a thousand agents (the Exporter spends two threads
    on each); the spool, the messages and the rules are the agent's own."""

    WINDOW = 256

    def __init__(self, node: str, spool: Any, targets: list[str], creds: Any) -> None:
        self.node = node
        self.spool = spool
        self.targets = targets
        self.target = random.choice(targets)
        self.creds = creds
        self.more = asyncio.Event()
        self.connected = False
        self.acked = 0
        self.rejected = 0
        self.failed_sessions = 0
        self.exhausted = 0  # sessions refused or ended with RESOURCE_EXHAUSTED

    async def run(self) -> None:
        import grpc

        backoff = 0.5
        while True:
            try:
                await self._session()
                backoff = 0.5
            except (TimeoutError, grpc.RpcError) as exc:
                self.failed_sessions += 1
                if (
                    isinstance(exc, grpc.aio.AioRpcError)
                    and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                ):
                    self.exhausted += 1
            self.connected = False
            i = self.targets.index(self.target)
            self.target = self.targets[(i + 1) % len(self.targets)]
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 10.0)

    async def _session(self) -> None:
        import grpc

        from oomtrace.agent.record.parts import fit_to_wire

        options = [("grpc.use_local_subchannel_pool", 1)]
        if self.creds is None:
            channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            channel = grpc.aio.secure_channel(self.target, self.creds, options=options)
        async with channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub = collector_pb2_grpc.IngestServiceStub(channel)
            in_flight: set[str] = set()
            room = asyncio.Event()
            room.set()

            async def requests() -> Any:
                sent_seq = 0
                while True:
                    self.more.clear()
                    batch = self.spool.pending_after(sent_seq)
                    if not batch:
                        await self.more.wait()
                        continue
                    for entry in batch:
                        while len(in_flight) >= self.WINDOW:
                            room.clear()
                            await room.wait()
                        in_flight.add(entry.id)
                        sent_seq = entry.seq
                        if entry.request.HasField("event"):
                            fit_to_wire(entry.request.event)
                        yield entry.request

            call = stub.Ingest(requests())
            self.connected = True
            async for resp in call:
                for ack in resp.acks:
                    if ack.rejected:
                        self.rejected += 1
                    self.spool.ack(ack.id)
                    self.acked += 1
                    in_flight.discard(ack.id)
                room.set()


def worker(args: argparse.Namespace) -> None:
    """Reads commands (JSON lines) on stdin, answers on stdout."""
    # Answers on the original stdout; the agents' logs go nowhere.
    answers = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    raise_nofile()
    asyncio.run(_worker(args, answers))


async def _worker(args: argparse.Namespace, answers: IO[str]) -> None:
    import concurrent.futures

    import grpc

    from oomtrace.agent.delivery.spool import Spool

    creds = None
    if args.pki:
        p = Path(args.pki)
        creds = grpc.ssl_channel_credentials(
            root_certificates=(p / "ca.crt").read_bytes(),
            private_key=(p / "agents.key").read_bytes(),
            certificate_chain=(p / "agents.crt").read_bytes(),
        )
    targets = [t for t in args.target.split(",") if t]
    nodes = [f"node-{i:05d}" for i in range(args.first, args.first + args.count)]
    agents = [Agent(n, Spool(Path(args.spools) / n), targets, creds) for n in nodes]
    kr = kernel_report()
    loop = asyncio.get_running_loop()
    # Spool writes fsync: off the loop, as the agent's runner does them.
    pool = concurrent.futures.ThreadPoolExecutor(8)
    tasks: list[asyncio.Task[None]] = []

    def reply(**kw: Any) -> None:
        answers.write(json.dumps(kw) + "\n")
        answers.flush()

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "start":
            for a in agents:
                tasks.append(asyncio.ensure_future(a.run()))
                await asyncio.sleep(cmd.get("pace_s", 0.0))
            reply(started=len(agents))
        elif cmd["cmd"] == "status":
            reply(
                connected=sum(a.connected for a in agents),
                pending=sum(len(a.spool) for a in agents),
                acked=sum(a.acked for a in agents),
                rejected=sum(a.rejected for a in agents),
                failed_sessions=sum(a.failed_sessions for a in agents),
                exhausted=sum(a.exhausted for a in agents),
            )
        elif cmd["cmd"] == "storm":
            # Each chosen agent spools its records as the kills come, all in
            # the same second or so (a bad rollout), and sends as they land.
            def kills(a: Agent, records: int, go_share: float) -> list[str]:
                mine = []
                for n in range(records):
                    ev = record(a.node, n, random.random() < go_share, kr)
                    a.spool.put(ev)
                    loop.call_soon_threadsafe(a.more.set)
                    mine.append(f"{ev.node}/{ev.id}")
                return mine

            done = await asyncio.gather(
                *(
                    loop.run_in_executor(pool, kills, agents[i], cmd["records"], cmd["go_share"])
                    for i in cmd["agents"]
                )
            )
            ids = [k for mine in done for k in mine]
            Path(cmd["sent_file"]).write_text("\n".join(ids) + "\n")
            reply(sent=len(ids))
        elif cmd["cmd"] == "stop":
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for a in agents:
                a.spool.close()
            reply(stopped=True)
            return


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    count: int

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


# -- collectors ---------------------------------------------------------------------


@dataclass
class Collector:
    proc: subprocess.Popen[bytes]
    addr: str
    metrics: str
    logs: list[str] = field(default_factory=list)

    def status(self) -> dict[str, int]:
        """Threads and resident set of the process (from /proc)."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                out[key] = int(value.split()[0])
        return out

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def start_collector(host: str, db: str, pki: Path | None) -> Collector:
    port = free_port(host)
    mport = free_port(host)
    secure = (
        [
            f"--tls-cert={pki}/collector.crt",
            f"--tls-key={pki}/collector.key",
            f"--client-ca={pki}/ca.crt",
        ]
        if pki
        else ["--insecure"]
    )
    proc = subprocess.Popen(
        [
            str(OOMTRACE),
            "collector",
            "--listen",
            f"{host}:{port}",
            *(["--store", db] if db.startswith("postgresql://") else ["--db", db]),
            "--metrics-listen",
            f"{host}:{mport}",
            *secure,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd="/",
        preexec_fn=raise_nofile,
    )
    col = Collector(proc, f"{host}:{port}", f"{host}:{mport}")
    ready = threading.Event()

    def read(stream: IO[bytes]) -> None:
        for line in stream:
            text = line.decode(errors="replace")
            if len(col.logs) < 2000:
                col.logs.append(text)
            if "collector.ready" in text:
                ready.set()

    assert proc.stderr is not None
    threading.Thread(target=read, args=(proc.stderr,), daemon=True).start()
    if not ready.wait(60):
        col.stop()
        raise RuntimeError(f"collector not ready: {col.logs[-20:]}")
    return col


# -- the run ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Queries:
    """`history` (a page of 50, one namespace, the last day) in a loop."""

    def __init__(self, addr: str, pki: Path | None) -> None:
        self.addr, self.pki = addr, pki
        self.lat: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        p = self.pki
        client = (
            tls.ClientTls(ca=p / "ca.crt", cert=p / "reader.crt", key=p / "reader.key")
            if p
            else tls.ClientTls(insecure=True)
        )
        import grpc

        with client.channel(self.addr) as ch:
            stub = collector_pb2_grpc.HistoryServiceStub(ch)
            q = 0
            while not self._stop.is_set():
                f = collector_pb2.EventFilter(namespace=f"team-{q % 50}")
                f.since.FromNanoseconds(time.time_ns() - 86400 * 10**9)
                t = time.perf_counter()
                try:
                    stub.ListEvents(
                        collector_pb2.ListEventsRequest(filter=f, page_size=50), timeout=10
                    )
                    self.lat.append((time.perf_counter() - t) * 1000)
                except grpc.RpcError:
                    self.errors += 1
                q += 1
                self._stop.wait(0.05)

    def __enter__(self) -> Queries:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(15)


@dataclass
class Result:
    agents: int
    connected: int
    threads_before: int
    threads_after: int
    rss_before_kib: int
    rss_after_kib: int
    idle_p50_ms: float
    idle_p99_ms: float
    sent: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    storm_s: float = 0.0
    storm_rate: float = 0.0
    storm_p50_ms: float = 0.0
    storm_p99_ms: float = 0.0
    storm_query_errors: int = 0
    failed_sessions: int = 0
    max_queued_bytes: float = 0.0
    max_rss_kib: int = 0

    def rss_per_stream_kib(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(1, self.connected)


def stored_keys(db: str) -> list[str]:
    """node/id of every stored record, one per row (a duplicate shows twice)."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as pg:
            return [f"{n}/{i}" for n, i in pg.execute("SELECT node, id FROM events")]
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [f"{n}/{i}" for n, i in conn.execute("SELECT node, id FROM events")]
    finally:
        conn.close()


def run(
    *,
    agents: int,
    storm_agents: int,
    records: int,
    go_share: float = 0.25,
    collectors: int = 1,
    store: str = "sqlite",
    per_worker: int = 1000,
    secure: bool = True,
    connect_timeout_s: float = 600,
    storm_timeout_s: float = 900,
    settle_s: float = 5,
    idle_query_s: float = 15,
    log: IO[str] = sys.stdout,
) -> Result:
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="oomtrace-fleet-", dir="/tmp"))
    pg = None
    cols: list[Collector] = []
    workers: list[Worker] = []
    try:
        hosts = [f"127.0.0.{i + 1}" for i in range(collectors)]
        pki = work / "pki" if secure else None
        if pki:
            tls.make_set(
                pki,
                collector_hosts=("localhost", *hosts),
                shared_agents=True,
                readers=("reader",),
            )
        if store == "postgresql":
            from tests.postgres_server import PostgresServer

            pg = PostgresServer()
            db = pg.database()
        else:
            db = str(work / "collector.db")
        cols = [start_collector(h, db, pki) for h in hosts]
        before = cols[0].status()
        target = ",".join(c.addr for c in cols)
        spools = work / "spools"
        for first in range(0, agents, per_worker):
            count = min(per_worker, agents - first)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "worker",
                    f"--first={first}",
                    f"--count={count}",
                    f"--target={target}",
                    f"--spools={spools}",
                    f"--pki={pki or ''}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            workers.append(Worker(proc, count))
        t0 = time.monotonic()
        for w in workers:
            w.ask(cmd="start", pace_s=0.002)
        connected = 0
        deadline = time.monotonic() + connect_timeout_s
        while time.monotonic() < deadline:
            connected = sum(w.ask(cmd="status")["connected"] for w in workers)
            if connected >= agents:
                break
            time.sleep(1)
        print(
            f"agents connected: {connected}/{agents} in {time.monotonic() - t0:.0f} s "
            f"({len(workers)} worker processes, mutual TLS {'on' if secure else 'off'})",
            file=log,
        )
        time.sleep(settle_s)
        after = [c.status() for c in cols]
        with Queries(cols[0].addr, pki) as idle:
            time.sleep(idle_query_s)
        res = Result(
            agents=agents,
            connected=connected,
            threads_before=before["Threads"],
            threads_after=after[0]["Threads"],
            rss_before_kib=before["VmRSS"],
            rss_after_kib=after[0]["VmRSS"],
            idle_p50_ms=percentile(idle.lat, 50),
            idle_p99_ms=percentile(idle.lat, 99),
        )
        per_col = [a["VmRSS"] for a in after]
        print(
            f"collector 1: threads {res.threads_before} -> {res.threads_after}, RSS "
            f"{res.rss_before_kib // 1024} -> {res.rss_after_kib // 1024} MiB "
            f"(all collectors: {[r // 1024 for r in per_col]} MiB): "
            f"{res.rss_per_stream_kib():.1f} KiB per idle stream",
            file=log,
        )
        print(
            f"history while connected: p50 {res.idle_p50_ms:.1f} ms, p99 "
            f"{res.idle_p99_ms:.1f} ms ({len(idle.lat)} queries, {idle.errors} errors)",
            file=log,
        )
        if storm_agents:
            storm(
                res,
                workers,
                cols,
                db,
                work,
                storm_agents,
                records,
                go_share,
                pki,
                storm_timeout_s,
                log,
            )
        return res
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.ask(cmd="stop")
            with contextlib.suppress(Exception):
                w.proc.wait(30)
            if w.proc.poll() is None:
                w.proc.kill()
        for c in cols:
            c.stop()
        if pg is not None:
            pg.close()
        shutil.rmtree(work, ignore_errors=True)


def storm(
    res: Result,
    workers: list[Worker],
    cols: list[Collector],
    db: str,
    work: Path,
    storm_agents: int,
    records: int,
    go_share: float,
    pki: Path | None,
    timeout_s: float,
    log: IO[str],
) -> None:
    # The storm's agents spread over every worker (a Deployment on every node).
    chosen = sorted(random.sample(range(res.agents), min(storm_agents, res.agents)))
    firsts = []
    acc = 0
    for w in workers:
        firsts.append(acc)
        acc += w.count
    failed_before = sum(w.ask(cmd="status")["failed_sessions"] for w in workers)
    sent_files = []
    expected_total = len(chosen) * records
    peaks = {"queued": 0.0, "rss": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):
                peaks["queued"] = max(
                    peaks["queued"],
                    sum(c.metric("oomtrace_collector_ingest_queued_bytes") for c in cols),
                )
                peaks["rss"] = max(peaks["rss"], max(c.status()["VmRSS"] for c in cols))
            done.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with Queries(cols[0].addr, pki) as during:
        t0 = time.monotonic()
        asks = []
        for k, w in enumerate(workers):
            mine = [i - firsts[k] for i in chosen if firsts[k] <= i < firsts[k] + w.count]
            f = work / f"sent-{k}.txt"
            sent_files.append(f)
            asks.append((w, mine, f))
        # All workers spool at once.
        threads = [
            threading.Thread(
                target=w.ask,
                kwargs={
                    "cmd": "storm",
                    "agents": mine,
                    "records": records,
                    "go_share": go_share,
                    "sent_file": str(f),
                },
            )
            for w, mine, f in asks
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spooled_s = time.monotonic() - t0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pending = sum(w.ask(cmd="status")["pending"] for w in workers)
            if pending == 0:
                break
            time.sleep(0.5)
        res.storm_s = time.monotonic() - t0
    done.set()
    sent = [k for f in sent_files if f.exists() for k in f.read_text().split()]
    keys = stored_keys(db)
    stored = set(keys)
    res.sent = len(sent)
    res.stored = len(keys)
    res.lost = len(set(sent) - stored)
    res.duplicated = len(keys) - len(stored)
    res.extra = len(stored - set(sent))
    res.storm_rate = len(sent) / res.storm_s if res.storm_s else 0.0
    res.storm_p50_ms = percentile(during.lat, 50)
    res.storm_p99_ms = percentile(during.lat, 99)
    res.storm_query_errors = during.errors
    res.failed_sessions = (
        sum(w.ask(cmd="status")["failed_sessions"] for w in workers) - failed_before
    )
    res.max_queued_bytes = peaks["queued"]
    res.max_rss_kib = int(peaks["rss"])
    assert expected_total == len(sent), (expected_total, len(sent))
    print(
        f"storm: {len(chosen)} agents x {records} records ({go_share:.0%} with Go heap "
        f"profiles) = {len(sent)} sent; spooled in {spooled_s:.1f} s, all acknowledged "
        f"in {res.storm_s:.1f} s: {res.storm_rate:.0f} records/s over {len(cols)} "
        f"collector(s)",
        file=log,
    )
    print(
        f"store: {res.stored} rows; lost {res.lost}, duplicated {res.duplicated}, "
        f"not sent {res.extra}",
        file=log,
    )
    print(
        f"history during the storm: p50 {res.storm_p50_ms:.1f} ms, p99 "
        f"{res.storm_p99_ms:.1f} ms ({len(during.lat)} queries, {during.errors} errors)",
        file=log,
    )
    print(
        f"pushback: peak bytes queued for the writer {res.max_queued_bytes / 2**20:.1f} MiB "
        f"(bound 256 MiB a collector), peak collector RSS {res.max_rss_kib // 1024} MiB, "
        f"{res.failed_sessions} agent sessions failed and retried",
        file=log,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    w.add_argument("--first", type=int, required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--target", required=True)
    w.add_argument("--spools", required=True)
    w.add_argument("--pki", default="")
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--storm-agents", type=int, default=1000)
    ap.add_argument("--records", type=int, default=50)
    ap.add_argument("--go-share", type=float, default=0.25)
    ap.add_argument("--collectors", type=int, default=1)
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--per-worker", type=int, default=1000)
    ap.add_argument("--plaintext", action="store_true", help="mutual TLS off")
    args = ap.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    res = run(
        agents=args.agents,
        storm_agents=args.storm_agents,
        records=args.records,
        go_share=args.go_share,
        collectors=args.collectors,
        store=args.store,
        per_worker=args.per_worker,
        secure=not args.plaintext,
    )
    print(json.dumps(res.__dict__), file=sys.stdout)


if __name__ == "__main__":
    main()
