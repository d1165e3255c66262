"""A fleet at the size CI carries (tests/bench/fleet.py runs it at full
size): 2,000 agents, each its own spool and mutual-TLS connection, held by
one collector process without a thread per stream; then 400 of them spool
10 records each at once, and the store holds every record sent exactly once,
counted record by record."""

from __future__ import annotations

import io

from tests.bench.fleet import run


def test_two_thousand_agents_and_a_storm_lose_nothing_and_double_nothing() -> None:
    out = io.StringIO()
    res = run(
        agents=2000,
        storm_agents=400,
        records=10,
        settle_s=1,
        idle_query_s=3,
        connect_timeout_s=240,
        storm_timeout_s=240,
        log=out,
    )
    report = out.getvalue()
    assert res.connected == 2000, report
    # One event loop: the threads do not grow with the streams (a sync server
    # spent two on each).
    assert res.threads_after <= res.threads_before + 8, report
    assert res.sent == 4000, report
    assert (res.lost, res.duplicated, res.extra) == (0, 0, 0), report
    assert res.stored == res.sent, report
    assert res.storm_query_errors == 0, report
