"""Heap-profile benchmark (root): Go victims with more and more allocation
stacks are OOM-killed, and for each size it prints the time BPF spent in the
victim's context copying the buckets (p50/p99, from the walk's own clock),
the agent's CPU for the whole kill record (symbolising and building the
pprof file included, from /proc/PID/stat), and the record's size. Prints
medians; asserts nothing.

    sudo .venv/bin/python tests/bench/bench_heap_profile.py [--runs 5] [--stacks 10,100,1000,6000]

Every allocation is sampled (MemProfileRate=1) and each of the N buckets
gets one allocation per round (leakgo many N: stack depth N mod 200, size
1 KiB plus 16 bytes per N). The runtime keeps a bucket per stack and size
class, so N asks for up to N buckets (fewer where sizes share a class); the
walk's bound is 4224. The victim's cgroup is 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.containers import LEAKGO_SRC, build_oomgo
from tests.integration.harness import MIB, AgentProcess, scratch_cgroup

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process and its waited-for children (the parser
    process is a child of the agent but not waited for: counted apart)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def agent_cpu(agent: AgentProcess) -> float:
    pid = agent.proc.pid
    return cpu_s(pid) + sum(cpu_s(c) for c in children(pid))


def victim_is(pid: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: bool(r["victim"]["pid"] == pid)


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.99 * len(values)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stacks", default="10,100,1000,6000")
    args = ap.parse_args()
    binary = build_oomgo(Path(tempfile.mkdtemp()), "newest", "normal", LEAKGO_SRC)
    agent = AgentProcess()
    try:
        agent.wait_ready()
        print(
            f"{'N':>7} {'buckets':>8} {'walk p50':>10} {'walk p99':>10} "
            f"{'agent CPU':>10} {'pprof':>9} {'JSON':>9} {'before p50':>10}"
        )
        for stacks in (int(s) for s in args.stacks.split(",")):
            walks: list[float] = []
            cpus: list[float] = []
            sizes: list[int] = []
            records: list[int] = []
            buckets: list[int] = []
            befores: list[float] = []
            for _ in range(args.runs):
                before = agent_cpu(agent)
                with scratch_cgroup(256 * MIB) as cg, open(os.devnull, "wb") as null:
                    p = cg.spawn_argv(
                        [str(binary), "many", str(stacks)],
                        env={"LEAKGO_RATE": "1", "LEAKGO_CHUNK": "1024", "LEAKGO_WAIT_MS": "1000"},
                        stdout=null,
                    )
                    p.wait(120)
                    (rec,) = agent.take(1, timeout=60, where=victim_is(p.pid))
                cpus.append(agent_cpu(agent) - before)
                hp = rec.get("go", {}).get("heap_profile")
                if not hp:
                    print(f"  no profile: {rec.get('go', {}).get('heap_profile_missing')}")
                    continue
                walks.append(int(hp["walk_ns"]) / 1e6)
                before = rec["go"].get("heap_profile_before")
                if before:
                    befores.append(int(before["walk_ns"]) / 1e6)
                buckets.append(int(hp["buckets"]))
                sizes.append(len(hp.get("pprof", "")) * 3 // 4)  # base64 in the JSON
                records.append(len(json.dumps(rec)))
            if not walks:
                continue
            print(
                f"{stacks:>7} {statistics.median(buckets):>8.0f} "
                f"{statistics.median(walks):>8.2f}ms {p99(walks):>8.2f}ms "
                f"{statistics.median(cpus) * 1000:>8.0f}ms "
                f"{statistics.median(sizes) / 1024:>7.1f}KiB {statistics.median(records) / 1024:>7.1f}KiB "
                + (
                    f"{statistics.median(befores):>8.2f}ms ({len(befores)})"
                    if befores
                    else f"{'-':>10}"
                )
            )
        print("(agent CPU: the whole kill record, symbolising and building the profiles included;")
        print(" before: the walk at a GC past 80 % of the limit, in the process's own context,")
        print(" with the world stopped; in brackets, the kills that had one)")
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
