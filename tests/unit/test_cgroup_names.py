"""Cgroup paths of every runtime and driver to runtime, container, pod, QoS."""

from __future__ import annotations

import pytest

from oomtrace.agent.cgroups.names import CgroupIdentity, parse

ID = "4f1c2a9e" * 8
UID = "0b7a1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/kubepods/burstable/pod{UID}/{ID}", CgroupIdentity("", ID, UID, "Burstable")),
        (f"/kubepods/besteffort/pod{UID}/{ID}", CgroupIdentity("", ID, UID, "BestEffort")),
        (f"/kubepods/pod{UID}/{ID}", CgroupIdentity("", ID, UID, "Guaranteed")),
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope",
            CgroupIdentity("containerd", ID, UID, "Burstable"),
        ),
        (
            f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope",
            CgroupIdentity("cri-o", ID, UID, "Guaranteed"),
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope",
            CgroupIdentity("docker", ID, UID, "BestEffort"),
        ),
        (f"/docker/{ID}", CgroupIdentity("docker", ID)),
        (f"/system.slice/docker-{ID}.scope", CgroupIdentity("docker", ID)),
        (f"/machine.slice/libpod-{ID}.scope/container", CgroupIdentity("podman", ID)),
        ("/system.slice/nginx.service", CgroupIdentity(systemd_unit="nginx.service")),
        ("/user.slice/user-0.slice/session-3.scope", CgroupIdentity()),
        ("/", CgroupIdentity()),
        # A container's own child cgroup still belongs to it.
        (f"/docker/{ID}/init", CgroupIdentity("docker", ID)),
        # The pod's own cgroup (no container yet): pod only.
        (f"/kubepods/burstable/pod{UID}", CgroupIdentity("", "", UID, "Burstable")),
    ],
)
def test_paths_of_every_driver(path: str, expected: CgroupIdentity) -> None:
    assert parse(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/kubepods/burstable/podnot-a-uid/abc",
        "/docker/" + "g" * 64,
        "/weird name/with spaces/\x00/..",
        "/" + "x" * 5000,
        "//docker//" + ID[:63],
    ],
)
def test_odd_paths_are_not_mistaken_for_containers(path: str) -> None:
    assert not parse(path).is_container
