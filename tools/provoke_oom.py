"""`make oom`: one real OOM kill in a scratch memory cgroup (64 MiB), then
the collector's report of it. Needs `make run` (or any agent and collector)
running. Touches nothing but the cgroup it makes and the process it starts."""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time

import grpc

from oomtrace import render
from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.v1 import collector_pb2, collector_pb2_grpc

LIMIT = 64 * 1024 * 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--collector", default="127.0.0.1:50051")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("make oom: making a memory cgroup needs root")
    # Ask first: a kill no collector records is a process killed for nothing.
    with grpc.insecure_channel(args.collector) as ch:
        try:
            collector_pb2_grpc.HistoryServiceStub(ch).ListEvents(
                collector_pb2.ListEventsRequest(page_size=1), timeout=5
            )
        except grpc.RpcError:
            sys.exit(
                f"make oom: no collector at {args.collector}: start `make run` first "
                "(nothing was killed)"
            )
    h = cgroups.memory_hierarchy()
    if h.mount is None:
        sys.exit("make oom: no memory cgroup hierarchy on this host")
    cg = h.mount / f"oomtrace-demo-{secrets.token_hex(3)}"
    cg.mkdir()
    try:
        if h.version == 1:
            (cg / "memory.limit_in_bytes").write_text(str(LIMIT))
            (cg / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
        else:
            (cg / "memory.max").write_text(str(LIMIT))
            (cg / "memory.swap.max").write_text("0")
        procs = cg / "cgroup.procs"
        p = subprocess.Popen(
            ["/usr/bin/python3", "-c", "a=[]\nwhile True: a.append(bytearray(1 << 20))"],
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
        )
        print(f"started pid {p.pid} in {cg} (limit 64 MiB); it allocates until the kernel kills it")
        p.wait(60)
        print(f"pid {p.pid} ended with signal {-p.returncode}")
    finally:
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)
    with grpc.insecure_channel(args.collector) as ch:
        stub = collector_pb2_grpc.HistoryServiceStub(ch)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                resp = stub.ListEvents(collector_pb2.ListEventsRequest(page_size=50), timeout=5)
            except grpc.RpcError:
                sys.exit(f"make oom: no collector at {args.collector}: start `make run` first")
            for ev in resp.events:
                if ev.victim.pid == p.pid:
                    print(f"\n$ oomtrace show {ev.id}\n")
                    print(render.report(ev, now=time.time()))
                    return 0
            time.sleep(0.2)
    print("make oom: the kill was not recorded within 15 s; is the agent running (make run)?")
    return 1


if __name__ == "__main__":
    sys.exit(main())
