"""What a cgroup path says about its workload: the container runtime, the
container id, the Kubernetes pod uid and QoS class, or the systemd unit.

Covers the cgroupfs and systemd drivers on cgroup v1 and v2:
  /kubepods/burstable/pod<uid>/<id>                       (cgroupfs)
  /kubepods.slice/kubepods-burstable.slice/
      kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
  .../crio-<id>.scope   .../docker-<id>.scope   /docker/<id>
  /machine.slice/libpod-<id>.scope   /system.slice/<name>.service
Pure functions: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"

# A systemd scope of a runtime: <prefix>-<id>.scope
_SCOPES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
}
_SCOPE = re.compile(rf"^(?P<prefix>cri-containerd|crio|docker|libpod)-(?P<id>{_HEX64})\.scope$")
_BARE_ID = re.compile(rf"^{_HEX64}$")
_POD_CGROUPFS = re.compile(rf"^pod(?P<uid>{_UID})$")
_POD_SYSTEMD = re.compile(
    rf"^kubepods(?:-(?P<qos>burstable|besteffort))?-pod(?P<uid>{_UID})\.slice$"
)
_QOS = {"burstable": "Burstable", "besteffort": "BestEffort"}


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    runtime: str = ""  # containerd, cri-o, docker, podman; "" when the path does not say
    container_id: str = ""
    pod_uid: str = ""
    qos_class: str = ""  # Guaranteed, Burstable, BestEffort
    systemd_unit: str = ""

    @property
    def is_container(self) -> bool:
        return bool(self.container_id)


def parse(path: str) -> CgroupIdentity:
    """The innermost container on the path wins (a container's own sub-cgroups,
    such as `/docker/<id>/init`, belong to it)."""
    parts = [p for p in path.split("/") if p]
    runtime = container_id = pod_uid = qos = unit = ""
    in_kubepods = False
    for i, part in enumerate(parts):
        if part in ("kubepods", "kubepods.slice"):
            in_kubepods = True
            qos = qos or "Guaranteed"  # pods directly under kubepods
            continue
        if in_kubepods and part in ("burstable", "besteffort"):
            qos = _QOS[part]
            continue
        if in_kubepods and (m := re.match(r"^kubepods-(burstable|besteffort)\.slice$", part)):
            qos = _QOS[m.group(1)]
            continue
        if m := _POD_CGROUPFS.match(part):
            pod_uid = m.group("uid")
            continue
        if m := _POD_SYSTEMD.match(part):
            pod_uid = m.group("uid").replace("_", "-")
            if m.group("qos"):
                qos = _QOS[m.group("qos")]
            continue
        if m := _SCOPE.match(part):
            runtime, container_id = _SCOPES[m.group("prefix")], m.group("id")
            continue
        if _BARE_ID.match(part):
            # cgroupfs driver: the runtime is not in the path; /docker/<id> says docker.
            container_id = part
            runtime = "docker" if i > 0 and parts[i - 1] == "docker" else ""
            continue
        if part.endswith(".service") and not container_id:
            unit = part
    if not in_kubepods:
        qos = ""
    return CgroupIdentity(runtime, container_id, pod_uid, qos, unit)
