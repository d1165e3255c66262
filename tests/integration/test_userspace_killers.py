"""A real userspace OOM killer: Debian's earlyoom, run in the guest kernel
(it acts on the machine's own available memory, which only a VM's may run
out), kills a leaking Go service before the kernel would. The record is an
OOM record of source USERSPACE naming earlyoom, with the same victim,
cgroup, Go and heap-profile parts as a kernel kill.

make test-kernels unpacks earlyoom under var/earlyoom (never installed, so
no daemon of it runs on the host) and sets OOMTRACE_GUEST in the guest."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from tempfile import TemporaryFile

import pytest

from tests.integration.containers import LEAKGO_SRC, REPO, build_oomgo
from tests.integration.harness import AgentProcess, scratch_cgroup

EARLYOOM = REPO / "var/earlyoom/usr/bin/earlyoom"

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("OOMTRACE_GUEST") != "1",
        reason="runs the machine's own memory low: only in a guest kernel (make test-kernels)",
    ),
    pytest.mark.skipif(not EARLYOOM.exists(), reason="make test-kernels unpacks earlyoom"),
]


def test_earlyoom_killing_a_go_service_is_an_oom_record_with_its_profile(
    agent: AgentProcess, tmp_path: Path
) -> None:
    leakgo = build_oomgo(tmp_path, "newest", "normal", LEAKGO_SRC)
    # SIGTERM below 40 % available, SIGKILL below 20 %; swap ignored (the
    # guest has none); only the leaking service is a candidate.
    killer = subprocess.Popen(
        [
            str(EARLYOOM),
            "-m",
            "40,20",
            "-s",
            "100,100",
            "-r",
            "0",
            "--prefer",
            "^leakgo",
            "--avoid",
            "^(oomtrace|python|pytest)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with scratch_cgroup(None) as cg, TemporaryFile() as out:
            time.sleep(0.5)  # earlyoom's first reading; it polls from then on
            env = {"LEAKGO_WAIT_MS": "1000", "LEAKGO_RATE": "65536", "LEAKGO_ROUND_SLEEP_MS": "2"}
            p = cg.spawn_argv([str(leakgo), "sites"], env=env, stdout=out)
            assert p.wait(600) in (-9, -15), "the leak was not stopped by a signal"
            (rec,) = agent.take(1, timeout=120, where=lambda r: r["victim"]["pid"] == p.pid)
    finally:
        killer.kill()
        _, err = killer.communicate(timeout=30)
    assert rec["source"] == "USERSPACE", (rec["source"], err.decode()[-2000:])
    assert rec["killer"]["comm"] == "earlyoom"
    assert rec["killer"]["signal"] in ("SIGTERM", "SIGKILL")
    # Its own reason, as it printed it to stderr just before the signal.
    # (Its words change between versions; each names the pid.)
    assert str(p.pid) in rec["killer"]["said"], (rec["killer"], err.decode()[-2000:])
    assert rec["cgroup"]["path"] == cg.rel
    assert int(rec["victim"]["anon_rss_bytes"]) > 256 << 20
    assert rec["go"]["heap_profile"]["top"][0]["function"] == "main.leakAlpha", rec["go"]
    assert "USERSPACE_OOM_KILL" in [v["code"] for v in rec["verdicts"]]
