"""Go benchmark (root): a GC-heavy Go program's run time with and without
the agent attached (its uprobes fire once or twice per GC), and the agent's
cost of discovering a Go process (reading /proc, build info, pclntab).
Prints medians; asserts nothing.

    sudo .venv/bin/python tests/bench/bench_go.py [--runs 7] [--allocs 30000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace.agent.goprobes import GoProbes
from oomtrace.agent.procinfo import ProcessCache
from tests.integration.containers import build_oomgo
from tests.integration.harness import AgentProcess


def churn(oomgo: Path, allocs: int, live_mib: int = 0) -> tuple[float, int]:
    out = subprocess.run(
        [str(oomgo), "churn", str(allocs), str(live_mib)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, gcs = out.stdout.split()
    return float(seconds), int(gcs)


class NoAttach:
    def attach_go(self, path: str, gc_done: int, start_cycle: int | None) -> list[str]:
        return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--allocs", type=int, default=30_000_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_go: run as root")
    with tempfile.TemporaryDirectory() as d:
        oomgo = build_oomgo(Path(d))
        churn(oomgo, args.allocs // 10)  # warm the page cache
        # Interleaved (one run without, then one with the agent) so drift on
        # this noisy machine hits both sides alike. Two GC regimes: a small
        # heap (hundreds of GCs a second) and 64 MiB live (tens a second).
        for live in (0, 64):
            without, with_agent, gcs, attached = [], [], 0, False
            for _ in range(args.runs):
                without.append(churn(oomgo, args.allocs, live)[0])
                agent = AgentProcess()
                agent.wait_ready()
                try:
                    t, gcs = churn(oomgo, args.allocs, live)
                    with_agent.append(t)
                    attached = attached or any(
                        e.get("event") == "go.probes_attached" for e in agent.logs
                    )
                finally:
                    agent.stop()
            a, b = statistics.median(without), statistics.median(with_agent)
            print(
                f"GC-heavy Go run  {live:>2} MiB live: median {a:.3f} s without the agent, {b:.3f} s "
                f"with it ({100 * (b - a) / a:+.2f} %; {gcs} GCs a run = {gcs / a:.0f}/s; n={args.runs} "
                f"each; goal <= +1 %); uprobes attached: {attached}"
            )

        # Discovery: what the agent does at a Go process's exec.
        cold, warm = [], []
        for _ in range(args.runs):
            p = subprocess.Popen([str(oomgo), "sleep"])
            time.sleep(0.05)
            cache = ProcessCache()  # a fresh cache: nothing known yet
            t0 = time.perf_counter()
            info = cache.remember(p.pid)
            assert info is not None
            assert info.go is not None
            GoProbes(NoAttach()).ensure(p.pid, info.go)
            cold.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            cache.remember(p.pid)  # the binary's build info is cached now
            warm.append((time.perf_counter() - t0) * 1000)
            p.kill()
            p.wait()
        print(
            f"discovery        median {statistics.median(cold):.2f} ms for a new Go binary "
            f"(/proc, build info, pclntab), {statistics.median(warm):.2f} ms for a known one "
            f"(n={args.runs}; goal < 20 ms)"
        )


if __name__ == "__main__":
    main()
