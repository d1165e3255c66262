"""A real Prometheus (Debian's) scraping a real agent and collector while real
processes are OOM-killed: its count of kills equals the kernel's."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    ALLOCATE_FOREVER,
    MIB,
    AgentProcess,
    CollectorProcess,
    free_port,
    scratch_cgroup,
    wait_until,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="Debian's prometheus is not installed (make setup)"
)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
    return body.decode()


class Prometheus:
    def __init__(self, work: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            for job, addr in targets.items()
        )
        config = work / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")
        self.log = (work / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._ready, 60, "prometheus ready")

    def _ready(self) -> bool:
        try:
            return "Ready" in get(f"http://127.0.0.1:{self.port}/-/ready")
        except OSError:
            return False

    def value(self, promql: str) -> float | None:
        q = urllib.parse.urlencode({"query": promql})
        data = json.loads(get(f"http://127.0.0.1:{self.port}/api/v1/query?{q}"))
        result = data["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[AgentProcess, CollectorProcess, Prometheus, str, str]]:
    agent_metrics = f"127.0.0.1:{free_port()}"
    collector_metrics = f"127.0.0.1:{free_port()}"
    collector = CollectorProcess(
        tmp_path / "c.db", free_port(), "--metrics-listen", collector_metrics
    )
    agent = AgentProcess(
        "--collector",
        collector.addr,
        "--metrics-listen",
        agent_metrics,
        state_dir=None,
    )
    prometheus = None
    try:
        agent.wait_ready(timeout=600)
        prometheus = Prometheus(tmp_path, {"agent": agent_metrics, "collector": collector_metrics})
        yield agent, collector, prometheus, agent_metrics, collector_metrics
    finally:
        if prometheus is not None:
            prometheus.stop()
        agent.stop()
        collector.stop()


def test_prometheus_counts_the_kills_the_kernel_counted(
    stack: tuple[AgentProcess, CollectorProcess, Prometheus, str, str],
) -> None:
    agent, _collector, prometheus, agent_metrics, collector_metrics = stack
    with scratch_cgroup(48 * MIB) as cg:
        pids = set()
        for _ in range(3):
            p = cg.spawn(ALLOCATE_FOREVER)
            assert p.wait(30) == -9
            pids.add(p.pid)
        agent.take(3, where=lambda r: r["victim"]["pid"] in pids)
        kernel_count = cg.oom_kill_count()
    assert kernel_count == 3

    # Both endpoints pass Prometheus' own lint.
    for address in (agent_metrics, collector_metrics):
        text = get(f"http://{address}/metrics")
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert check.returncode == 0, (address, check.stdout, check.stderr)

    # What a dashboard asks: kills, by the agent's count and the collector's.
    queries = {
        'sum(oomtrace_oom_kills_total{job="agent",constraint="memcg",source="live"})': 3.0,
        'sum(oomtrace_collector_records_total{job="collector",kind="kill",outcome="stored"})': 3.0,
        'oomtrace_hook_attached{hook="raw_tracepoint/mark_victim"}': 1.0,
        'sum(oomtrace_events_lost_total{job="agent"})': 0.0,
    }
    seen: dict[str, float | None] = {}

    def answered() -> bool:
        for q, _want in queries.items():
            seen[q] = prometheus.value(q)
        return all(seen[q] == want for q, want in queries.items())

    deadline = time.monotonic() + 45
    while not answered():
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
    assert prometheus.value('oomtrace_spool_records{job="agent"}') == 0.0
    rss = prometheus.value('process_resident_memory_bytes{job="agent"}')
    assert rss is not None
    assert rss > 50 * MIB
