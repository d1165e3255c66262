"""Go benchmark (root): a GC-heavy Go program's run time with and without
the agent attached (its uprobe fires once per GC), and the agent's cost of
discovering a Go process (reading /proc, build info, pclntab, and locating the
runtime's globals in gcStart's code).
Prints medians; asserts nothing.

    sudo .venv/bin/python tests/bench/bench_go.py [--runs 7] [--allocs 30000000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oomtrace.agent.runtimes.go.probes import GC_DONE, GoProbes
from oomtrace.agent.runtimes.go.symbols import entries_in, probe_address, read_binary
from oomtrace.agent.runtimes.go.worker import ParserWorker
from oomtrace.agent.runtimes.processes import ProcessCache
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
    """Discovery's own cost, without BCC: attaching is paid once per binary."""

    def attach_go(self, path: str, gc_done: int) -> list[str]:
        return []

    def detach_go(self, path: str, gc_done: int) -> None:
        pass

    def locate_go(
        self,
        tgid: int,
        controller: int,
        gomaxprocs: int,
        offsets: dict[str, int],
        profile: tuple[int, int] | None = None,
        profile_layout: dict[str, int] | None = None,
    ) -> None:
        pass


@contextlib.contextmanager
def bare_uprobe(oomgo: Path) -> Iterator[None]:
    from bcc import BPF  # type: ignore[import-not-found,unused-ignore]

    data = read_binary(oomgo)
    entry = probe_address(data, entries_in(data, {GC_DONE})[GC_DONE], GC_DONE)
    bpf = BPF(text="int probe(void *ctx) { return 0; }")
    bpf.attach_uprobe(name=str(oomgo).encode(), addr=entry, fn_name=b"probe")
    try:
        yield
    finally:
        bpf.cleanup()


@contextlib.contextmanager
def running_agent(attached: list[bool]) -> Iterator[None]:
    """The agent, started and ready; whether it attached the Go probe goes
    into `attached` when it stops."""
    agent = AgentProcess()
    agent.wait_ready()
    try:
        yield
    finally:
        attached.append(any(e.get("event") == "go.probes_attached" for e in agent.logs))
        agent.stop()


def interleaved(
    runs: int,
    attach: Callable[[], contextlib.AbstractContextManager[None]],
    run: Callable[[], tuple[float, int]],
) -> tuple[float, float, int]:
    """Median run time without and with `attach`, one run of each in turn so
    drift on this noisy machine hits both sides alike; and the GCs of a run."""
    without: list[float] = []
    with_it: list[float] = []
    gcs = 0
    for _ in range(runs):
        without.append(run()[0])
        with attach():
            t, gcs = run()
            with_it.append(t)
    return statistics.median(without), statistics.median(with_it), gcs


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
        # Two GC regimes: a small heap (hundreds of GCs a second) and 64 MiB
        # live (tens a second).
        for live in (0, 64):
            attached: list[bool] = []
            a, b, gcs = interleaved(
                args.runs,
                partial(running_agent, attached),
                partial(churn, oomgo, args.allocs, live),
            )
            print(
                f"GC-heavy Go run  {live:>2} MiB live: median {a:.3f} s without the agent, {b:.3f} s "
                f"with it ({100 * (b - a) / a:+.2f} %; {gcs} GCs a run = {gcs / a:.0f}/s; n={args.runs} "
                f"each; goal <= +1 %); uprobes attached: {any(attached)}"
            )

        # The floor: a uprobe whose BPF program does nothing, at the same
        # place. What the agent adds beyond this is its own work; this part
        # is the kernel's trap, paid once per GC.
        a, b, gcs = interleaved(
            args.runs, partial(bare_uprobe, oomgo), partial(churn, oomgo, args.allocs)
        )
        print(
            f"bare uprobe       0 MiB live: median {a:.3f} s without, {b:.3f} s with an empty "
            f"BPF program on runtime.gcMarkTermination ({100 * (b - a) / a:+.2f} %; "
            f"{1e6 * (b - a) / gcs:.0f} µs a GC)"
        )

        # Discovery: what the agent does at a Go process's exec.
        cold, parsed, warm = [], [], []
        # The parser process is started once, as in the agent.
        t0 = time.perf_counter()
        parser = ParserWorker()
        warmup = GoProbes(NoAttach(), parser=parser)
        p = subprocess.Popen([str(oomgo), "sleep"])
        time.sleep(0.05)
        info0 = ProcessCache().remember(p.pid)
        assert info0 is not None
        assert info0.go is not None
        warmup.ensure(p.pid, info0.go)
        warmup.poll(wait_s=60)
        first = (time.perf_counter() - t0) * 1000
        p.kill()
        p.wait()
        for _ in range(args.runs):
            p = subprocess.Popen([str(oomgo), "sleep"])
            time.sleep(0.05)
            cache = ProcessCache()  # a fresh cache: nothing known yet
            t0 = time.perf_counter()
            info = cache.remember(p.pid)
            assert info is not None
            assert info.go is not None
            probes = GoProbes(NoAttach(), parser=parser)
            probes.ensure(p.pid, info.go)
            cold.append((time.perf_counter() - t0) * 1000)
            probes.poll(wait_s=60)
            parsed.append((time.perf_counter() - t0) * 1000)
            assert probes.located == 1, "the runtime's globals were not found"
            t0 = time.perf_counter()
            info = cache.remember(p.pid)  # the binary is known now
            assert info is not None
            assert info.go is not None
            probes.ensure(p.pid, info.go)
            warm.append((time.perf_counter() - t0) * 1000)
            p.kill()
            p.wait()
            probes.sweep()  # the process is gone: the binary's probe goes too
        parser.close()
        print(
            f"discovery        median {statistics.median(cold):.2f} ms on the event loop for a new "
            f"Go binary (/proc, build info; the parse is handed to the parser process), "
            f"{statistics.median(parsed):.2f} ms until probed (pclntab, gcStart's code, in the "
            f"parser process), {statistics.median(warm):.2f} ms for a known one "
            f"(n={args.runs}; goal < 20 ms); the parser's first binary, with its start: "
            f"{first:.0f} ms"
        )


if __name__ == "__main__":
    main()
