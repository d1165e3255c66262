"""Agent benchmark (root): start-to-ready time, kill-to-stdout latency, and
the agent's RSS and idle CPU; the RSS beside a minimal BCC program's (one
raw tracepoint and a ring buffer: the floor any BCC agent sits on). Prints
figures; asserts nothing.

    sudo .venv/bin/python tests/bench/bench_agent.py [--kills 40] [--idle 60] [--starts 5]

Latency is from the kernel's mark_victim time (the record's killed_at) to the
moment the record's line is read from the agent's stdout; it includes the
wait for the victim to exit, which the record reports as exit_ns."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    scratch_cgroup,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The floor: BCC (its LLVM), one program compiled and attached, and nothing else.
MINIMAL_BCC = """
import sys, time
from bcc import BPF
b = BPF(text="BPF_RINGBUF_OUTPUT(ev, 8); int f(struct bpf_raw_tracepoint_args *ctx)"
             "{ u32 x = 1; ev.ringbuf_output(&x, sizeof(x), 0); return 0; }")
b.attach_raw_tracepoint(tp=b"sched_process_exec", fn_name=b"f")
print("ready", flush=True)
sys.stdin.read()
"""


def minimal_bcc_rss_kib() -> int:
    p = subprocess.Popen(
        ["/usr/bin/python3", "-c", MINIMAL_BCC],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("the minimal BCC program did not start")
        return rss_kib(p.pid)
    finally:
        p.kill()
        p.wait()


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def start_times(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        a = AgentProcess()
        a.wait_ready()
        out.append(time.monotonic() - t0)
        a.stop()
    return out


def victim_is(pid: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: bool(r["victim"]["pid"] == pid)


def kill_latencies(agent: AgentProcess, kills: int) -> list[float]:
    latencies = []
    with scratch_cgroup(32 * MIB) as cg:
        for _ in range(kills):
            p = cg.spawn(ALLOCATE_FOREVER)
            (rec,) = agent.take(1, timeout=30, where=victim_is(p.pid))
            seen = time.time()
            p.wait()
            killed = datetime.fromisoformat(rec["killed_at"].replace("Z", "+00:00")).timestamp()
            latencies.append((seen - killed) * 1000)
    return latencies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--starts", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_agent: run as root (loads BPF, OOM-kills processes in scratch cgroups)")

    starts = start_times(args.starts)
    print(
        f"start-to-ready   median {statistics.median(starts):.2f} s  (n={len(starts)}, max {max(starts):.2f} s; goal < 3 s)"
    )

    agent = AgentProcess()
    agent.wait_ready()
    try:
        lat = kill_latencies(agent, args.kills)
        print(
            f"kill-to-stdout   p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms  "
            f"max {max(lat):.1f} ms  (n={len(lat)}; goal p99 < 50 ms)"
        )
        pid = agent.proc.pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        print(
            f"idle CPU         {100 * (c1 - c0) / (t1 - t0):.3f} % of one core over {t1 - t0:.0f} s (goal < 0.5 %)"
        )
        agent_rss = rss_kib(pid)
        floor = minimal_bcc_rss_kib()
        print(
            f"agent RSS        {agent_rss / 1024:.1f} MiB against a minimal BCC program's "
            f"{floor / 1024:.1f} MiB: {agent_rss / floor:.2f}x (goal <= 1.3x)"
        )
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
