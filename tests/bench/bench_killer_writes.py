"""What watching userspace OOM killers' log writes costs everyone else (root):
the time of a syscall-heavy command (dd copying one byte at a time: a read
and a write per byte) with no agent, with an agent that watches no killers
(--userspace-killers ''), and with one that does (--killer-writes
tracepoint: kprobe on ksys_write, or the sys_enter_write tracepoint where
kprobes are not compiled in, which sends every syscall of every task through
the tracing path).
Prints medians of interleaved runs and the ratios; asserts nothing.

    sudo .venv/bin/python tests/bench/bench_killer_writes.py [--runs 7] [--bytes 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.harness import AgentProcess


def dd(n: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--bytes", type=int, default=1_000_000)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"no agent": [], "agent, no killers": [], "agent": []}
    agents = {
        "agent, no killers": ("--userspace-killers", ""),
        "agent": ("--killer-writes", "tracepoint"),
    }
    hooks: dict[str, list[str]] = {}
    for _ in range(args.runs):
        times["no agent"].append(dd(args.bytes))
        for name, extra in agents.items():
            a = AgentProcess(*extra)
            try:
                a.wait_ready(600)
                hooks[name] = [e["hook"] for e in a.logs if e.get("event") == "bpf.hook_attached"]
                times[name].append(dd(args.bytes))
            finally:
                a.stop()
    base = statistics.median(times["no agent"])
    syscalls = 2 * args.bytes
    print(f"dd bs=1 count={args.bytes} ({syscalls} syscalls), {args.runs} runs, medians:")
    for name, ts in times.items():
        m = statistics.median(ts)
        per = (m - base) / syscalls * 1e9
        print(f"  {name:18} {m:7.3f} s  x{m / base:5.3f}  (+{per:5.1f} ns a syscall)")
    watch = [h for h in hooks.get("agent", []) if "write" in h]
    print(f"  killers' writes watched by: {', '.join(watch) or 'nothing'}")


if __name__ == "__main__":
    main()
