"""The agent's and the collector's metrics, read as Prometheus reads them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from oomtrace.agent.metrics import AgentMetrics, Losses
from oomtrace.collector.metrics import CollectorMetrics
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.unit.events import make_event
from tests.unit.test_collector_service import ingest

PROMTOOL = shutil.which("promtool")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lint(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool (Debian's prometheus) is not installed (make setup)")
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_agent_counts_every_kill_a_record_stands_for() -> None:
    m = AgentMetrics()
    live = make_event(namespace="shop", pod="cart-1", container="cart")
    live.verdicts.add(code="TMPFS_MEMORY")
    hostile = make_event(namespace="shop", pod="cart-1", container="cart")
    hostile.verdicts.add(code="x" * 500)
    m.recorded(hostile)
    counter = make_event()
    counter.source, counter.kills = event_pb2.OomEvent.COUNTER, 4
    for ev in (live, live, counter):
        m.recorded(ev)
    m.pressure_recorded(["reclaim", "near_limit"])
    m.watch(
        losses=lambda: Losses({"kills": 2}, {"notes": 1}, decode=0, sink=0, spool=0),
        hooks=[("raw_tracepoint/mark_victim", True), ("kprobe/oom_kill_process", False)],
        spool_depth=lambda: 3,
        spool_oldest_at=lambda: None,
    )
    text = generate_latest(m.registry).decode()
    got = samples(text)
    kills = "oomtrace_oom_kills_total"
    labels = (
        ("constraint", "memcg"),
        ("container", "cart"),
        ("namespace", "shop"),
        ("pod", "cart-1"),
        ("source", "live"),
    )
    # The verdict label is the first verdict's code, and only ever a code.
    assert got[(kills, (*labels, ("verdict", "TMPFS_MEMORY")))] == 2
    assert got[(kills, (*labels, ("verdict", "OTHER")))] == 1
    assert got[("oomtrace_kernel_log_recovered_kills_total", (("source", "counter"),))] == 4
    assert got[("oomtrace_events_lost_total", (("cause", "kills"), ("layer", "kernel")))] == 2
    assert got[("oomtrace_hook_attached", (("hook", "kprobe/oom_kill_process"),))] == 0
    assert got[("oomtrace_spool_records", ())] == 3
    assert got[("oomtrace_pressure_windows_total", (("reason", "near_limit"),))] == 1
    assert not [k for k in got if any(n in ("pid", "id", "cgroup") for n, _ in k[1])]
    assert not [k for k in got if k[0].endswith("_created")], "a _created twin per counter"
    lint(text)


def test_the_collector_counts_records_by_outcome_and_times_queries(tmp_path: Path) -> None:
    m = CollectorMetrics()
    store = SqliteStore(tmp_path / "c.db")
    server, port, _ = create_server("127.0.0.1:0", store, metrics=m)
    server.start()
    try:
        a, b = make_event(), make_event()
        bad = make_event()
        bad.ClearField("killed_at")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ingest(channel, [a, b, a, bad])
            collector_pb2_grpc.HistoryServiceStub(channel).ListEvents(
                collector_pb2.ListEventsRequest()
            )
        text = generate_latest(m.registry).decode()
    finally:
        server.stop(0).wait(5)
        store.close()
    got = samples(text)
    records = "oomtrace_collector_records_total"
    assert got[(records, (("kind", "kill"), ("outcome", "stored")))] == 2
    assert got[(records, (("kind", "kill"), ("outcome", "duplicate")))] == 1
    assert got[(records, (("kind", "kill"), ("outcome", "rejected")))] == 1
    assert got[("oomtrace_collector_stored_records", ())] == 2
    assert got[("oomtrace_collector_query_seconds_count", (("method", "ListEvents"),))] == 1
    assert got[("oomtrace_collector_store_bytes", ())] > 0
    assert not [k for k in got if k[0].endswith("_created")], "a _created twin per counter"
    lint(text)


def test_healthz_beside_metrics() -> None:
    """/healthz answers 200 or 503 with the reason; /metrics is unchanged."""
    import urllib.error
    import urllib.request

    from oomtrace import exposition

    state = {"ok": True}
    m = AgentMetrics()
    port = exposition.serve(
        m.registry, "127.0.0.1:0", lambda: (state["ok"], "ok" if state["ok"] else "stuck")
    )
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
        assert resp.status == 200
        assert resp.read() == b"ok\n"
    state["ok"] = False
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/healthz", timeout=5)
    assert err.value.code == 503
    assert err.value.read() == b"stuck\n"
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        assert b"oomtrace_oom_kills_total" in resp.read()


def test_the_cluster_label_is_bounded() -> None:
    """Agents name their cluster: past MAX_CLUSTERS names, the rest is "other"."""
    from oomtrace.collector.metrics import MAX_CLUSTERS, CollectorMetrics

    m = CollectorMetrics()
    for i in range(MAX_CLUSTERS + 50):
        m.stored_in(f"c{i}", 1)
    m.stored_in("c0", 2)
    got = samples(generate_latest(m.registry).decode())
    series = [k for k in got if k[0] == "oomtrace_collector_cluster_kills_total"]
    assert len(series) == MAX_CLUSTERS + 1
    assert got[("oomtrace_collector_cluster_kills_total", (("cluster", "other"),))] == 50
    assert got[("oomtrace_collector_cluster_kills_total", (("cluster", "c0"),))] == 3
