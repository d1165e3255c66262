"""Real kills of each shape the ui draws, made with the harness (scratch
cgroups, small limits): a plain allocator, a Go service leaking in known
functions with a heap profile before the kill, a BestEffort-style sidecar
chosen by its oom_score_adj, a userspace OOM killer's kill, a slow growth
that leaves pressure windows and a full timeline, and a cgroup whose name
is markup. Each returns the victim's pid; the records come from the
agent that saw them. tools/capture-ui-records.py keeps a set as a fixture
so the browser tests need only one live kill."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from tempfile import TemporaryFile

from tests.integration.harness import ALLOCATE_FOREVER, MIB, ScratchCgroup, scratch_cgroup
from tests.integration.test_kills import HOLD_THROUGH_TERM, send_as
from tests.integration.test_pressure import SLOW_GROWTH

# A child cgroup named as markup: the ui must show it as text.
HOSTILE_NAME = '<script>alert("oomtrace")<'


def _wait_usage(cg: ScratchCgroup, nbytes: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while cg.usage_and_limit()[0] < nbytes:
        assert time.monotonic() < deadline, "the process never reached its size"
        time.sleep(0.02)


def plain_kill() -> int:
    with scratch_cgroup(48 * MIB) as cg:
        p = cg.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        return p.pid


def hostile_name_kill() -> int:
    with scratch_cgroup(48 * MIB) as cg:
        child = cg.child(HOSTILE_NAME)
        p = child.spawn(ALLOCATE_FOREVER)
        assert p.wait(30) == -9
        return p.pid


def go_leak_kill(binary: Path) -> int:
    """leakgo's phases: leakAlpha keeps 24 MiB, then only leakBeta grows;
    GOGC=10 makes the GC past 80 % of the limit take the profile before."""
    env = {"LEAKGO_WAIT_MS": "1000", "LEAKGO_RATE": "16384", "GOGC": "10"}
    with scratch_cgroup(64 * MIB) as cg, TemporaryFile() as out:
        p = cg.spawn_argv([str(binary), "phases", "24"], env=env, stdout=out)
        assert p.wait(60) == -9
        return p.pid


def adj_kill() -> int:
    hold = "import time\nb = bytearray({} << 20)\nprint(flush=True)\ntime.sleep(600)"
    with scratch_cgroup(96 * MIB) as cg:
        app = cg.spawn(hold.format(40))
        _wait_usage(cg, 40 * MIB)
        sidecar = cg.spawn(hold.format(8), oom_score_adj=1000)
        _wait_usage(cg, 48 * MIB)
        grower = cg.spawn(ALLOCATE_FOREVER)
        assert sidecar.wait(30) == -9
        for p in (grower, app):
            p.kill()
            p.wait()
        return sidecar.pid


def userspace_kill() -> int:
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(HOLD_THROUGH_TERM)
        _wait_usage(cg, 24 * MIB)
        send_as("earlyoom", signal.SIGTERM, p.pid, f"sending SIGTERM to process {p.pid}")
        send_as("earlyoom", signal.SIGKILL, p.pid)
        assert p.wait(30) == -9
        return p.pid


def slow_growth_kill() -> int:
    with scratch_cgroup(64 * MIB) as cg:
        p = cg.spawn(SLOW_GROWTH)
        assert p.wait(60) == -9
        return p.pid
