"""Runtime metadata on fixture trees of each runtime, bad files, and the
cache that outlives containers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oomtrace.agent.cgroups import container_runtimes as runtimes
from oomtrace.agent.cgroups.container_runtimes import RuntimeRoots, lookup
from oomtrace.agent.cgroups.workloads import WorkloadCache

CID = "ab" * 32
UID = "0b7a1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"


def roots(tmp: Path) -> RuntimeRoots:
    return RuntimeRoots().under(tmp)


def write(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def containerd_spec(tmp: Path, cid: str = CID) -> Path:
    return write(
        tmp / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / cid / "config.json",
        {
            "annotations": {
                "io.kubernetes.cri.container-name": "cart",
                "io.kubernetes.cri.sandbox-name": "shop-1",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-uid": UID,
                "io.kubernetes.cri.image-name": "registry/cart:1",
                "unrelated": "dropped",
            },
            "linux": {"resources": {"memory": {"limit": 67108864}}},
        },
    )


def test_containerd_annotations(tmp_path: Path) -> None:
    containerd_spec(tmp_path)
    info, reasons = lookup(CID, "containerd", roots(tmp_path))
    assert info is not None, reasons
    assert (info.runtime, info.name, info.image, info.memory_limit_bytes) == (
        "containerd",
        "cart",
        "registry/cart:1",
        64 << 20,
    )
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("shop-1", "shop", UID)
    assert "unrelated" not in info.labels


def test_crio_config(tmp_path: Path) -> None:
    write(
        tmp_path / "var/lib/containers/storage/overlay-containers" / CID / "userdata/config.json",
        {
            "annotations": {
                "io.kubernetes.pod.name": "web-1",
                "io.kubernetes.pod.namespace": "front",
                "io.kubernetes.pod.uid": UID,
                "io.kubernetes.container.name": "nginx",
                "io.kubernetes.cri-o.ImageName": "docker.io/library/nginx:1.27",
            }
        },
    )
    info, _ = lookup(CID, "cri-o", roots(tmp_path))
    assert info is not None
    assert (info.runtime, info.name, info.image, info.pod_namespace) == (
        "cri-o",
        "nginx",
        "docker.io/library/nginx:1.27",
        "front",
    )


def test_docker_config_and_hostconfig(tmp_path: Path) -> None:
    base = tmp_path / "var/lib/docker/containers" / CID
    write(
        base / "config.v2.json",
        {
            "Name": "/k8s_cart_shop",
            "Config": {
                "Image": "cart:2",
                "Labels": {
                    "io.kubernetes.pod.name": "shop-1",
                    "io.kubernetes.pod.namespace": "shop",
                    "io.kubernetes.container.name": "cart",
                },
            },
        },
    )
    write(base / "hostconfig.json", {"Memory": 134217728})
    info, _ = lookup(CID, "docker", roots(tmp_path))
    assert info is not None
    assert (info.name, info.image, info.memory_limit_bytes, info.pod_name) == (
        "cart",
        "cart:2",
        128 << 20,
        "shop-1",
    )


def test_plain_docker_container_keeps_its_own_name(tmp_path: Path) -> None:
    write(
        tmp_path / "var/lib/docker/containers" / CID / "config.v2.json",
        {"Name": "/redis", "Config": {"Image": "redis:7"}},
    )
    info, _ = lookup(CID, "docker", roots(tmp_path))
    assert info is not None
    assert (info.name, info.pod_name) == ("redis", "")


def test_runc_state_labels(tmp_path: Path) -> None:
    write(
        tmp_path / "run/runc" / CID / "state.json",
        {
            "config": {
                "labels": [
                    "bundle=/b",
                    f"io.kubernetes.cri.sandbox-uid={UID}",
                    "io.kubernetes.cri.container-name=cart",
                ],
                "cgroups": {"memory": 1048576},
            }
        },
    )
    info, _ = lookup(CID, "", roots(tmp_path))
    assert info is not None
    assert (info.runtime, info.name, info.pod_uid, info.memory_limit_bytes) == (
        "runc",
        "cart",
        UID,
        1 << 20,
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"annotations": {"io.kubernetes.cri', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ("\udcff", "not"),
    ],
)
def test_bad_runtime_files_become_reasons(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / CID / "config.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    info, reasons = lookup(CID, "containerd", roots(tmp_path))
    assert info is None
    assert any(reason in r for r in reasons), reasons


def test_huge_runtime_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "MAX_FILE_BYTES", 1000)
    write(
        tmp_path / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / CID / "config.json",
        {"x": "y" * 5000},
    )
    info, reasons = lookup(CID, "containerd", roots(tmp_path))
    assert info is None
    assert "not read" in reasons[0]


def test_ids_that_could_escape_the_roots_are_refused(tmp_path: Path) -> None:
    info, reasons = lookup("../../etc", "docker", roots(tmp_path))
    assert info is None
    assert "is not one a runtime would use" in reasons[0]


def test_cache_keeps_a_removed_container_for_its_grace_period(tmp_path: Path) -> None:
    spec = containerd_spec(tmp_path)
    cache = WorkloadCache(None, roots(tmp_path), grace_ns=1000)
    path = f"/kubepods/burstable/pod{UID}/{CID}"
    cache.learn(7, path, now_ns=0)
    spec.unlink()  # the runtime tore the container down
    cache.removed(7, now_ns=10)
    w = cache.lookup(7, path)
    assert w.container is not None
    assert w.container.name == "cart"
    cache.tick(now_ns=1010)
    assert cache.lookup(7, path).container is None  # past the grace period, and gone


def test_cache_retries_until_late_runtime_state_appears(tmp_path: Path) -> None:
    cache = WorkloadCache(None, roots(tmp_path))
    path = f"/kubepods/burstable/pod{UID}/{CID}"
    first = cache.learn(7, path, now_ns=0)
    assert first.container is None
    containerd_spec(tmp_path)
    cache.tick(now_ns=100_000_000)  # before the first retry is due
    containerd_spec(tmp_path).unlink()
    cache.tick(now_ns=300_000_000)
    containerd_spec(tmp_path)
    cache.tick(now_ns=900_000_000)
    assert cache._entries[7].workload.container is not None


def test_cache_scan_finds_container_cgroups(tmp_path: Path) -> None:
    containerd_spec(tmp_path)
    mount = tmp_path / "cg"
    (mount / f"kubepods/burstable/pod{UID}/{CID}").mkdir(parents=True)
    (mount / "system.slice/x.service").mkdir(parents=True)
    cache = WorkloadCache(mount, roots(tmp_path))
    assert cache.scan() == 1
    ino = (mount / f"kubepods/burstable/pod{UID}/{CID}").stat().st_ino
    w = cache.lookup(ino, "/ignored")
    assert w.container is not None
    assert w.identity.qos_class == "Burstable"
