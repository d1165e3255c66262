"""Pressure benchmark (root): the agent's CPU while one cgroup is under
sustained memcg reclaim, and the pressure records per minute that cgroup
produces at the collector. Prints figures; asserts nothing.

    sudo .venv/bin/python tests/bench/bench_pressure.py [--seconds 60]

The load: a process in a 64 MiB cgroup reads a 256 MiB file over and over,
so its page cache is reclaimed continuously (no OOM kill)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace.v1 import collector_pb2, collector_pb2_grpc
from tests.bench.bench_agent import cpu_seconds
from tests.integration.harness import MIB, AgentProcess, CollectorProcess, free_port, scratch_cgroup

# The file's pages are first dropped from the page cache (they were charged
# to whoever wrote them), so reading them charges this cgroup.
THRASH = (
    "import os, sys\n"
    "buf = bytearray(1 << 20)\n"
    "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)\n"
    "    while True:\n"
    "        f.seek(0)\n"
    "        while f.readinto(buf): pass\n"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_pressure: run as root")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        data = Path(d) / "big"
        with open(data, "wb") as out:
            for _ in range(256):
                out.write(os.urandom(MIB))
        col = CollectorProcess(Path(d) / "c.db", free_port())
        agent = AgentProcess("--collector", col.addr, "--spool", f"{d}/spool")
        try:
            agent.wait_ready()
            with scratch_cgroup(64 * MIB) as cg:
                p = cg.spawn(THRASH, str(data))
                time.sleep(3)  # let the cache fill and reclaim begin
                pid = agent.proc.pid
                c0, t0 = cpu_seconds(pid), time.monotonic()
                start_ns = time.time_ns()
                time.sleep(args.seconds)
                c1, t1 = cpu_seconds(pid), time.monotonic()
                end_ns = time.time_ns()
                path = cg.rel
                p.kill()
                p.wait()
            time.sleep(2)
            with grpc.insecure_channel(col.addr) as ch:
                stub = collector_pb2_grpc.HistoryServiceStub(ch)
                f = collector_pb2.EventFilter(cgroup_prefix=path)
                f.since.FromNanoseconds(start_ns)
                f.until.FromNanoseconds(end_ns)
                records = stub.ListPressure(
                    collector_pb2.ListPressureRequest(filter=f, page_size=1000)
                ).records
            reclaims = sum(r.reclaims for r in records)
            stall_ms = sum(r.reclaim_stall_ns for r in records) / 1e6
            minutes = (end_ns - start_ns) / 60e9
            print(
                f"agent CPU        {100 * (c1 - c0) / (t1 - t0):.2f} % of one core over {t1 - t0:.0f} s "
                f"of sustained reclaim (goal < 2 %)"
            )
            print(
                f"pressure records {len(records)} in {minutes * 60:.0f} s for the cgroup = "
                f"{len(records) / minutes:.1f}/min (bound: one per window of >= 10 s, so 6/min on "
                f"average and at most 7 window ends in any 60 s); {reclaims} reclaims, {stall_ms:.0f} ms stalled"
            )
        finally:
            agent.stop()
            col.stop()


if __name__ == "__main__":
    main()
