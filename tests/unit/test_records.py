"""What a record's fields mean: the workload owning a pod, RSS, the limit hit."""

from __future__ import annotations

import pytest

from oomtrace.records import limit_hit_bytes, rss_bytes, workload_of
from tests.unit.events import make_event


@pytest.mark.parametrize(
    ("pod", "labels", "workload"),
    [
        ("shop-7d9f8b6c5-x2x4q", {}, "Deployment/shop"),
        ("my-api-v2-5c7b9d8f4-mm2kp", {}, "Deployment/my-api-v2"),
        ("db-0", {}, "StatefulSet/db"),
        ("redis-cluster-12", {}, "StatefulSet/redis-cluster"),
        ("report-29012345-x7k2q", {}, "CronJob/report"),
        ("node-agent-x2x4q", {}, "Controller/node-agent"),
        ("node-agent-x2x4q", {"controller-revision-hash": "6b9f"}, "DaemonSet/node-agent"),
        ("migrate-x2x4q", {"job-name": "migrate"}, "Job/migrate"),
        (
            "report-29012345-x7k2q",
            {"batch.kubernetes.io/job-name": "report-29012345"},
            "CronJob/report",
        ),
        ("web-abc-x2x4q", {"pod-template-hash": "abc"}, "Deployment/web"),
        ("debug", {}, "Pod/debug"),
        ("hand-made-pod", {}, "Pod/hand-made-pod"),
        ("", {}, ""),
    ],
)
def test_the_workload_owning_a_pod(pod: str, labels: dict[str, str], workload: str) -> None:
    assert workload_of(pod, labels) == workload


def test_rss_and_the_limit_hit() -> None:
    ev = make_event(rss_mib=60)
    ev.victim.shmem_rss_bytes = 1 << 20
    assert rss_bytes(ev) == (60 + 5 + 1) << 20
    ev.cgroup.memory_limit_bytes, ev.cgroup.oom_memcg_limit_bytes = 100, 0
    assert limit_hit_bytes(ev) == 100
    ev.cgroup.oom_memcg_limit_bytes = 64
    assert limit_hit_bytes(ev) == 64
