from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oomtrace.agent.kernel.bcc_loader import OOM_CONTROL_HOOKS
from tests.integration.harness import (
    HIGH_STALL_TEST_S,
    OOMTRACE,
    AgentProcess,
    CollectorProcess,
    KmsgReader,
    free_port,
    hierarchy,
    is_root,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = ""
    if not is_root():
        reason = "privileged: needs root to load BPF and make memory cgroups (CI runs as root)"
    elif not OOMTRACE.exists():
        reason = f"{OOMTRACE} is missing: run `make setup`"
    elif hierarchy().version == 0:
        reason = "no memory cgroup hierarchy on this host to make scratch cgroups in"
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.privileged)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for the session's kill tests (BPF is compiled once: under
    emulation in the guest kernel that takes minutes), streaming to a
    collector of its own; each test takes its own records."""
    work = Path(tmp_path_factory.mktemp("agent"))
    collector = CollectorProcess(work / "collector.db", free_port())
    metrics = f"127.0.0.1:{free_port()}"
    a = AgentProcess(
        "--collector",
        collector.addr,
        "--spool",
        str(work / "spool"),
        "--metrics-listen",
        metrics,
        # This host has no kprobes: the killers' log lines through the
        # syscall tracepoint (guests use the kprobe).
        "--killer-writes",
        "tracepoint",
        # A memory.high stall test need not hold for the default 30 s.
        "--high-stall-seconds",
        str(HIGH_STALL_TEST_S),
        status_file=work / "status.json",
    )
    a.collector_addr = collector.addr
    a.metrics_addr = metrics
    try:
        a.wait_ready(timeout=600)
        yield a
    finally:
        rc = a.stop()
        collector.stop()
    assert rc == 0, f"agent exited {rc}; log: {a.logs[-20:]}"
    status = json.loads((work / "status.json").read_text())
    counters = status["counters"]
    assert counters["decode_errors"] == 0
    # Where oom_kill_process is hooked, the kernel stack's answer (memcg or
    # global) is checked against oom_control's on each kill.
    assert counters["oom_path_mismatches"] == 0, a.logs
    if set(OOM_CONTROL_HOOKS) & set(status["hooks"]) and counters["kills_seen"]:
        assert counters["oom_path_checks"] > 0


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """Processes a test starts (agents, collectors), stopped at the end
    whatever happened: agents by SIGINT, collectors killed, each by pid."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        if isinstance(p, AgentProcess):
            p.stop()
        else:
            p.kill()


@pytest.fixture
def kmsg() -> Iterator[KmsgReader]:
    r = KmsgReader()
    yield r
    r.close()
