"""Real containers of runc, containerd and docker, OOM-killed by their memory
limits in Kubernetes-shaped cgroups: each record must name the right
runtime, container, image, pod and namespace, read from the runtime's own
state on the host."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.containers import (
    LEAKGO_SRC,
    Containerd,
    Dockerd,
    Runc,
    build_oomgo,
    container_id,
    cri_annotations,
    cri_dockerd_run,
    go_tool_pprof,
    k8s_parent,
    oci_image_tar,
)
from tests.integration.harness import MIB, AgentProcess, KmsgReader, assert_matches_kernel

LIMIT = 48 * MIB
IMAGE = "docker.io/oomtrace/oomgo:test"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("runc", "containerd", "ctr", "dockerd")),
    reason="runc, containerd and docker.io are not installed (make setup installs them)",
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("containers"))


@pytest.fixture(scope="module")
def oomgo(workdir: Path) -> Path:
    return build_oomgo(workdir)


@pytest.fixture(scope="module")
def runc(workdir: Path, oomgo: Path) -> Iterator[Runc]:
    r = Runc(workdir, oomgo)
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def runc_leakgo(workdir: Path, runc: Runc) -> Iterator[Runc]:
    """Containers of a stripped Go service that leaks (tests/integration/leakgo),
    kept where the other runc containers are (the agent reads that root)."""
    (workdir / "leakgo").mkdir()
    r = Runc(workdir / "leakgo", build_oomgo(workdir, "newest", "stripped", LEAKGO_SRC))
    r.root = runc.root
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def containerd(workdir: Path, oomgo: Path) -> Iterator[Containerd]:
    c = Containerd(workdir)
    try:
        c.ctr("images", "import", str(oci_image_tar(oomgo, workdir, IMAGE)))
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def dockerd(workdir: Path, oomgo: Path) -> Iterator[Dockerd]:
    d = Dockerd(workdir)
    try:
        ctx = workdir / "docker-build"
        ctx.mkdir()
        shutil.copy2(oomgo, ctx / "oomgo")
        (ctx / "Dockerfile").write_text('FROM scratch\nCOPY oomgo /oomgo\nENTRYPOINT ["/oomgo"]\n')
        d.docker("build", "-q", "-t", "oomtrace/oomgo:test", ".", cwd=ctx, timeout=180)
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def agent(runc: Runc, containerd: Containerd, dockerd: Dockerd) -> Iterator[AgentProcess]:
    a = AgentProcess(
        "--runc-root",
        str(runc.root),
        "--containerd-state",
        str(containerd.tasks_dir),
        "--docker-root",
        str(dockerd.data_root),
    )
    a.wait_ready()
    yield a
    a.stop()


# A Go service: up for half a second, then growing until killed. A Go program
# that dies within tens of milliseconds of exec can be gone before the agent
# has read its binary and attached the GC probe (more so with both cores
# busy); the tests that check the probe's state give it that half second.
GO_SERVICE = ["grow", "500"]


def record_of(agent: AgentProcess, pid: int) -> dict[str, Any]:
    (rec,) = agent.take(1, timeout=30, where=lambda r: r["victim"]["pid"] == pid)
    return rec


def wait_victim(kmsg: KmsgReader, comm: str = "oomgo", timeout: float = 30) -> int:
    """The pid of the next oomgo the kernel kills."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, k in kmsg.kills().items():
            if k.comm == comm:
                return pid
        time.sleep(0.05)
    raise AssertionError("no oomgo was OOM-killed")


def assert_pod(rec: dict[str, Any], pod_uid: str) -> None:
    assert rec["pod"]["name"] == "shop-7d9f8b6c5-x2x4q"
    assert rec["pod"]["namespace"] == "shop"
    assert rec["pod"]["uid"] == pod_uid
    assert rec["pod"]["qos_class"] == "Burstable"
    assert rec["container"]["name"] == "cart"


def assert_go_seen_in_its_container(rec: dict[str, Any]) -> None:
    """The binary is read, and probed, through /proc/PID/exe in the
    container's mount namespace; the runtime state comes from the probe."""
    go = rec["go"]
    assert go["module"] == "oomtrace.test/oomgo"
    assert go["state"] == "CONTROLLER"
    assert int(go["gc_count"]) >= 1
    assert go["effective_gomaxprocs"] >= 1
    assert "GO_GOMEMLIMIT_UNSET" in [v["code"] for v in rec["verdicts"]]


def test_runc_container_killed_by_its_limit(
    agent: AgentProcess, runc: Runc, kmsg: KmsgReader
) -> None:
    cid = container_id()
    with k8s_parent() as (parent, pod_uid):
        runc.run(
            cid,
            f"{parent}/{cid}",
            LIMIT,
            GO_SERVICE,
            cri_annotations("shop-7d9f8b6c5-x2x4q", "shop", pod_uid, "cart", IMAGE),
        )
        pid = wait_victim(kmsg)
        rec = record_of(agent, pid)
        runc.delete(cid)
    assert_matches_kernel(rec, kmsg.kills()[pid], full_report=False)
    assert rec["container"]["runtime"] == "runc"
    assert rec["container"]["id"] == cid
    assert rec["container"]["image"] == IMAGE
    assert int(rec["container"]["memory_limit_bytes"]) == LIMIT
    assert rec["cgroup"]["path"] == f"{parent}/{cid}"
    assert_pod(rec, pod_uid)
    assert rec["missing"] == []
    assert_go_seen_in_its_container(rec)


def test_a_leaking_go_service_in_a_container_has_its_heap_profile(
    agent: AgentProcess, runc_leakgo: Runc, kmsg: KmsgReader, tmp_path: Path
) -> None:
    """A stripped Go service in a runc container, read through its
    /proc/PID/exe: the record names the function that leaked, and pprof
    reads the file. (One sample per 64 KiB, not the default 512 KiB, so the
    test's few hundred samples make the order of the sites certain.)"""
    cid = container_id()
    with k8s_parent() as (parent, pod_uid):
        runc_leakgo.run(
            cid,
            f"{parent}/{cid}",
            LIMIT,
            ["sites"],
            cri_annotations("shop-7d9f8b6c5-x2x4q", "shop", pod_uid, "cart", IMAGE),
            env={"LEAKGO_RATE": str(64 << 10)},
        )
        pid = wait_victim(kmsg)
        rec = record_of(agent, pid)
        runc_leakgo.delete(cid)
    assert_pod(rec, pod_uid)
    hp = rec["go"]["heap_profile"]
    assert hp["top"][0]["function"] == "main.leakAlpha", hp["top"]
    profile = tmp_path / "heap.pb.gz"
    profile.write_bytes(base64.b64decode(hp["pprof"]))
    top = go_tool_pprof("-top", "-sample_index=inuse_space", str(profile))
    assert "main.leakAlpha" in top, top


def test_victim_that_is_not_the_containers_first_process(
    agent: AgentProcess, runc: Runc, kmsg: KmsgReader
) -> None:
    cid = container_id()
    with k8s_parent() as (parent, pod_uid):
        runc.run(
            cid,
            f"{parent}/{cid}",
            LIMIT,
            ["sleep"],
            cri_annotations("shop-7d9f8b6c5-x2x4q", "shop", pod_uid, "cart", IMAGE),
        )
        init_pid = runc.state(cid)["pid"]
        runc.exec(cid, ["grow"])
        pid = wait_victim(kmsg)
        rec = record_of(agent, pid)
        assert os.path.exists(f"/proc/{init_pid}"), "the container's first process must survive"
        runc.delete(cid)
    assert pid != init_pid
    assert rec["container"]["id"] == cid
    assert_pod(rec, pod_uid)


def test_container_removed_before_its_record_is_enriched(
    agent: AgentProcess, runc: Runc, kmsg: KmsgReader
) -> None:
    """The agent is frozen across the kill and the container's removal, so its
    runtime state and cgroup are gone when the record is built: only what the
    agent learned when the container appeared can name it."""
    cid = container_id()
    with k8s_parent() as (parent, pod_uid):
        runc.run(
            cid,
            f"{parent}/{cid}",
            LIMIT,
            ["hold", "8"],
            cri_annotations("shop-7d9f8b6c5-x2x4q", "shop", pod_uid, "cart", IMAGE),
        )
        # The agent has read runc's state.json (written after the cgroup).
        agent.wait_log("workload.resolved", lambda e: e["path"].endswith(cid))
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            runc.exec(cid, ["grow"])
            pid = wait_victim(kmsg)
            runc.delete(cid)
            assert not (runc.root / cid).exists()
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        rec = record_of(agent, pid)
    assert rec["container"]["id"] == cid
    assert rec["container"]["runtime"] == "runc"
    assert_pod(rec, pod_uid)


def test_containerd_container(
    agent: AgentProcess, containerd: Containerd, kmsg: KmsgReader
) -> None:
    cid = container_id()
    with k8s_parent() as (parent, pod_uid):
        args = ["run", "-d", "--memory-limit", str(LIMIT), "--cgroup", f"{parent}/{cid}"]
        for k, v in cri_annotations("shop-7d9f8b6c5-x2x4q", "shop", pod_uid, "cart", IMAGE).items():
            args += ["--annotation", f"{k}={v}"]
        containerd.ctr(*args, IMAGE, cid, "/oomgo", "grow")
        pid = wait_victim(kmsg)
        rec = record_of(agent, pid)
        containerd.ctr("tasks", "delete", "-f", cid, check=False)
        containerd.ctr("containers", "delete", cid, check=False)
    assert rec["container"]["runtime"] == "containerd"
    assert rec["container"]["id"] == cid
    assert rec["container"]["image"] == IMAGE
    assert int(rec["container"]["memory_limit_bytes"]) == LIMIT
    assert_pod(rec, pod_uid)


def test_docker_container_with_cri_dockerd_labels(
    agent: AgentProcess, dockerd: Dockerd, kmsg: KmsgReader
) -> None:
    with k8s_parent() as (parent, pod_uid):
        args = cri_dockerd_run(parent, LIMIT, "shop-7d9f8b6c5-x2x4q", "shop", pod_uid, "cart")
        cid = dockerd.docker(*args, "oomtrace/oomgo:test", *GO_SERVICE)
        pid = wait_victim(kmsg)
        rec = record_of(agent, pid)
        dockerd.docker("rm", "-f", cid, check=False)
    assert rec["container"]["runtime"] == "docker"
    assert rec["container"]["id"] == cid
    assert rec["container"]["image"] == "oomtrace/oomgo:test"
    assert int(rec["container"]["memory_limit_bytes"]) == LIMIT
    assert rec["cgroup"]["path"] == f"{parent}/{cid}"
    assert rec["container"]["labels"]["io.kubernetes.pod.name"] == "shop-7d9f8b6c5-x2x4q"
    assert_pod(rec, pod_uid)
    assert_go_seen_in_its_container(rec)
