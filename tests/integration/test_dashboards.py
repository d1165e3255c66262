"""Every query of the Grafana dashboard (deploy/grafana/oomtrace.json) and of
the Prometheus rules (deploy/prometheus/*.rules.yaml) run against a real
Prometheus (test_metrics.py's) scraping a real agent (the session's, so BPF
is not compiled again) and a real collector of this test's, after a real
kill with a pressure window before it, records of real kills stored, real queries and a record the
collector refused: each returns series. An alert's expression is run
without its threshold (the alert itself fires only on trouble); the few
queries that cannot have series on this host say why."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.integration import ui_kills
from tests.integration.harness import REPO, AgentProcess, CollectorProcess, free_port, hierarchy
from tests.integration.test_metrics import Prometheus, get
from tests.integration.test_ui import fixture_records, ingest

DASHBOARD = REPO / "deploy" / "grafana" / "oomtrace.json"
RULES = sorted((REPO / "deploy" / "prometheus").glob("*.rules.yaml"))
# Grafana's own variables, as a dashboard over the last 10 minutes sets them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}
# An alert's threshold, stripped to run what it compares.
THRESHOLD = re.compile(r"^(?P<lhs>.*\S)\s*(?:>=|<=|==|!=|>|<)\s*[0-9.e+-]+\s*$", re.S)


def dashboard_queries() -> dict[str, str]:
    d = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            out[f"panel {panel['title']!r} {t['refId']}"] = t["expr"]
    for a in d["annotations"]["list"]:
        if a.get("expr"):
            # Marks only where the count rose: run what it compares.
            m = THRESHOLD.match(a["expr"])
            out[f"annotation {a['name']!r}"] = m.group("lhs") if m else a["expr"]
    return out


def rule_queries() -> dict[str, str]:
    out = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                expr = rule["expr"].strip()
                m = THRESHOLD.match(expr) if "alert" in rule else None
                out[f"{path.name} {name}"] = m.group("lhs") if m else expr
    return out


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def series(prometheus: Prometheus, promql: str) -> list[dict[str, object]]:
    q = urllib.parse.urlencode({"query": promql})
    data = json.loads(get(f"http://127.0.0.1:{prometheus.port}/api/v1/query?{q}"))
    assert data["status"] == "success", (promql, data)
    result: list[dict[str, object]] = data["data"]["result"]
    return result


def expected_empty() -> dict[str, str]:
    """Substrings of queries that cannot return series here, and why."""
    out = {}
    if hierarchy().version == 1:
        out['reason="memory_high_stall"'] = (
            "memory.high is cgroup v2's: this host's memory controller is v1, so no stall "
            "window is ever counted (the guests of make test-kernels have v2)"
        )
    return out


@pytest.fixture
def scraped(agent: AgentProcess, tmp_path: Path) -> Iterator[tuple[CollectorProcess, Prometheus]]:
    collector_metrics = f"127.0.0.1:{free_port()}"
    collector = CollectorProcess(
        tmp_path / "c.db", free_port(), "--metrics-listen", collector_metrics
    )
    prometheus = None
    try:
        prometheus = Prometheus(
            tmp_path, {"agent": agent.metrics_addr, "collector": collector_metrics}
        )
        yield collector, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        collector.stop()


def test_every_panel_and_rule_returns_series(
    agent: AgentProcess, scraped: tuple[CollectorProcess, Prometheus]
) -> None:
    collector, prometheus = scraped
    agent_metrics = agent.metrics_addr
    # Near its limit for a pressure window (13 s), then killed: a kill and
    # a pressure window of the agent's own.
    pid = ui_kills.slow_growth_kill()
    agent.take(1, where=lambda r: r["victim"]["pid"] == pid)
    kills, pressure = fixture_records()
    ingest(collector.addr, kills, pressure)
    with grpc.insecure_channel(collector.addr) as ch:
        stub = collector_pb2_grpc.HistoryServiceStub(ch)
        listed = stub.ListEvents(collector_pb2.ListEventsRequest(page_size=10)).events
        stub.GetEvent(collector_pb2.GetEventRequest(id=listed[0].id))
        stub.Top(collector_pb2.TopRequest(group_by=collector_pb2.TopRequest.POD))
        stub.ListPressure(collector_pb2.ListPressureRequest())
        # A record the collector refuses for good (no id): its counter.
        bad = collector_pb2.IngestRequest(event=event_pb2.OomEvent(node="vm"))
        (resp,) = collector_pb2_grpc.IngestServiceStub(ch).Ingest(iter([bad]))
        assert resp.acks[0].rejected, resp

    queries = {**dashboard_queries(), **rule_queries()}
    assert len(queries) >= 20, queries
    empty_ok = expected_empty()
    want = {k: q for k, q in queries.items() if not any(s in q for s in empty_ok)}
    got: dict[str, list[dict[str, object]]] = {}
    deadline = time.monotonic() + 60
    while True:
        got = {k: series(prometheus, expand(q)) for k, q in queries.items()}
        missing = [k for k in want if not got[k]]
        if not missing:
            break
        assert time.monotonic() < deadline, (
            {k: want[k] for k in missing},
            [x for x in get(f"http://{agent_metrics}/metrics").splitlines() if "spool" in x],
        )
        time.sleep(1)
    # The verdict label: where the agent puts it on the kill counter, the
    # panel and the rule group by real codes, not only by "".
    kills_family = [
        line
        for line in get(f"http://{agent_metrics}/metrics").splitlines()
        if line.startswith("oomtrace_oom_kills_total{")
    ]
    if any('verdict="' in line for line in kills_family):
        by_verdict = [k for k, q in queries.items() if "by (verdict)" in q]
        assert by_verdict
        for k in by_verdict:
            assert any(s["metric"].get("verdict") for s in got[k]), (k, got[k])  # type: ignore[attr-defined]
    # What may be empty here is only what the reasons name.
    for k, q in queries.items():
        if not got[k]:
            assert any(s in q for s in empty_ok), (k, q)


def test_the_dashboard_is_well_formed() -> None:
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        assert p["description"], p["title"]
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for what in (
        "namespace",
        "workload",
        "verdict",
        "memory.high",
        "lost",
        "spool",
        "ingest",
        "query latency",
    ):
        assert what in titles, what
    assert Path(DASHBOARD).read_text().endswith("\n")
