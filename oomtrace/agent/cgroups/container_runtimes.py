"""Container metadata from each runtime's own state on the host, read-only:
containerd's and CRI-O's OCI specs (annotations), Docker's config.v2.json and
hostconfig.json (labels, incl. the io.kubernetes.* ones cri-dockerd sets),
runc's state.json. Host roots are configurable: a DaemonSet mounts the
host's directories under /host.

Every read is bounded in size and retried once when a file is mid-write; a
file that cannot be used becomes a reason, never an exception."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 4 << 20
MAX_LABELS = 32
MAX_LABEL_CHARS = 256

# Labels worth carrying in a record, on an allowlist; the rest stay home. Not
# the runtimes' internal annotations (CRI-O's io.kubernetes.cri-o.Annotations
# holds every pod annotation; others hold volumes, mounts, addresses).
_KEPT_LABELS = frozenset(
    {
        "io.kubernetes.pod.name",
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.uid",
        "io.kubernetes.container.name",
        "io.kubernetes.cri.sandbox-name",
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-uid",
        "io.kubernetes.cri.container-name",
        "io.kubernetes.cri.container-type",
        "io.kubernetes.cri.image-name",
        # what tells a pod's owner (oomtrace.records.workload_of)
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "job-name",
        "batch.kubernetes.io/job-name",
        "app",
        "team",
        "version",
    }
)
_KEPT_LABEL_PREFIXES = ("app.kubernetes.io/",)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    runtime: str
    id: str
    name: str = ""
    image: str = ""
    memory_limit_bytes: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    source: str = ""  # the file it came from


@dataclass(frozen=True, slots=True)
class RuntimeRoots:
    """Where each runtime keeps its state, as seen from the agent."""

    containerd_tasks: tuple[Path, ...] = (Path("/run/containerd/io.containerd.runtime.v2.task"),)
    crio_containers: tuple[Path, ...] = (
        Path("/run/containers/storage/overlay-containers"),
        Path("/var/lib/containers/storage/overlay-containers"),
    )
    docker_containers: tuple[Path, ...] = (Path("/var/lib/docker/containers"),)
    runc_state: tuple[Path, ...] = (Path("/run/runc"), Path("/run/containerd/runc"))

    def under(self, host_root: Path) -> RuntimeRoots:
        """The same places below a host mount such as /host."""

        def re_root(paths: tuple[Path, ...]) -> tuple[Path, ...]:
            return tuple(host_root / p.relative_to("/") for p in paths)

        return RuntimeRoots(
            re_root(self.containerd_tasks),
            re_root(self.crio_containers),
            re_root(self.docker_containers),
            re_root(self.runc_state),
        )


class MetadataError(Exception):
    """A runtime's file exists but cannot be used; the message says why."""


def read_json(path: Path) -> dict[str, Any]:
    """A bounded read of a JSON object; one retry when it is mid-write."""
    for attempt in (0, 1):
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise MetadataError(f"{path}: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise MetadataError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; not read")
        try:
            value = json.loads(data)
        except json.JSONDecodeError as exc:
            if attempt == 0:
                time.sleep(0.02)  # a runtime rewriting it; read it once more
                continue
            raise MetadataError(f"{path}: not valid JSON ({exc.msg} at byte {exc.pos})") from None
        except UnicodeDecodeError:
            raise MetadataError(f"{path}: not UTF-8 text") from None
        if not isinstance(value, dict):
            raise MetadataError(f"{path}: not a JSON object")
        return value
    raise AssertionError("unreachable")


def _s(value: object) -> str:
    return value[:MAX_LABEL_CHARS] if isinstance(value, str) else ""


def _dig(obj: object, *keys: str) -> object:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def selected_labels(labels: object) -> dict[str, str]:
    if not isinstance(labels, dict):
        return {}
    out: dict[str, str] = {}
    for k, v in labels.items():
        if (
            isinstance(k, str)
            and isinstance(v, str)
            and (k in _KEPT_LABELS or k.startswith(_KEPT_LABEL_PREFIXES))
        ):
            out[k[:MAX_LABEL_CHARS]] = v[:MAX_LABEL_CHARS]
            if len(out) >= MAX_LABELS:
                break
    return out


def _kubernetes(a: dict[str, str]) -> tuple[str, str, str, str]:
    """(pod name, namespace, pod uid, container name) from CRI annotations
    (containerd's io.kubernetes.cri.*) or the io.kubernetes.* ones (CRI-O,
    cri-dockerd labels)."""
    return (
        a.get("io.kubernetes.cri.sandbox-name") or a.get("io.kubernetes.pod.name", ""),
        a.get("io.kubernetes.cri.sandbox-namespace") or a.get("io.kubernetes.pod.namespace", ""),
        a.get("io.kubernetes.cri.sandbox-uid") or a.get("io.kubernetes.pod.uid", ""),
        a.get("io.kubernetes.cri.container-name") or a.get("io.kubernetes.container.name", ""),
    )


def from_oci_spec(
    runtime: str, container_id: str, spec: dict[str, Any], source: str
) -> ContainerInfo:
    raw = spec.get("annotations")
    annotations = (
        {k: _s(v) for k, v in raw.items() if isinstance(k, str)} if isinstance(raw, dict) else {}
    )
    pod, ns, uid, name = _kubernetes(annotations)
    limit = _dig(spec, "linux", "resources", "memory", "limit")
    image = (
        annotations.get("io.kubernetes.cri.image-name")
        or annotations.get("io.kubernetes.cri-o.ImageName")
        or annotations.get("io.kubernetes.container.image")
        or annotations.get("org.opencontainers.image.ref.name", "")
    )
    return ContainerInfo(
        runtime=runtime,
        id=container_id,
        name=name or annotations.get("io.kubernetes.cri-o.ContainerName", "").lstrip("/"),
        image=image,
        memory_limit_bytes=limit if isinstance(limit, int) and limit > 0 else 0,
        labels=selected_labels(annotations),
        pod_name=pod,
        pod_namespace=ns,
        pod_uid=uid,
        source=source,
    )


def from_docker(
    container_id: str, config: dict[str, Any], hostconfig: dict[str, Any] | None, source: str
) -> ContainerInfo:
    labels_raw = _dig(config, "Config", "Labels")
    labels = (
        {k: _s(v) for k, v in labels_raw.items() if isinstance(k, str)}
        if isinstance(labels_raw, dict)
        else {}
    )
    pod, ns, uid, kube_name = _kubernetes(labels)
    memory = _dig(hostconfig, "Memory") if hostconfig else 0
    return ContainerInfo(
        runtime="docker",
        id=container_id,
        name=kube_name or _s(config.get("Name")).lstrip("/"),
        image=_s(_dig(config, "Config", "Image")),
        memory_limit_bytes=memory if isinstance(memory, int) and memory > 0 else 0,
        labels=selected_labels(labels),
        pod_name=pod,
        pod_namespace=ns,
        pod_uid=uid,
        source=source,
    )


def from_runc_state(container_id: str, state: dict[str, Any], source: str) -> ContainerInfo:
    # runc keeps OCI annotations as "key=value" strings in config.labels.
    labels: dict[str, str] = {}
    raw = _dig(state, "config", "labels")
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, str) and "=" in item:
                k, _, v = item.partition("=")
                labels[k] = v[:MAX_LABEL_CHARS]
    pod, ns, uid, name = _kubernetes(labels)
    limit = _dig(state, "config", "cgroups", "memory")
    if not isinstance(limit, int):
        limit = _dig(state, "config", "cgroups", "Resources", "memory")
    return ContainerInfo(
        runtime="runc",
        id=container_id,
        name=name,
        image=labels.get("io.kubernetes.cri.image-name", "")
        or labels.get("io.kubernetes.container.image", ""),
        memory_limit_bytes=limit if isinstance(limit, int) and limit > 0 else 0,
        labels=selected_labels(labels),
        pod_name=pod,
        pod_namespace=ns,
        pod_uid=uid,
        source=source,
    )


def lookup(
    container_id: str, runtime_hint: str, roots: RuntimeRoots
) -> tuple[ContainerInfo | None, list[str]]:
    """The container's metadata from whichever runtime has it, and the reasons
    for every place that had something but could not be used."""
    if not container_id or "/" in container_id or container_id.startswith("."):
        return None, [f"container id {container_id!r} is not one a runtime would use"]
    reasons: list[str] = []
    order = ["containerd", "cri-o", "docker", "runc"]
    if runtime_hint in order:
        order.remove(runtime_hint)
        order.insert(0, runtime_hint)
    for runtime in order:
        try:
            info = _LOOKUPS[runtime](container_id, roots)
        except MetadataError as exc:
            reasons.append(str(exc))
            continue
        if info is not None:
            return info, reasons
    if not reasons:
        reasons.append(
            f"no runtime state for container {container_id[:12]} under the configured roots"
        )
    return None, reasons


def _containerd(container_id: str, roots: RuntimeRoots) -> ContainerInfo | None:
    for base in roots.containerd_tasks:
        try:
            namespaces = sorted(os.listdir(base))
        except OSError:
            continue
        for ns in namespaces:
            spec_path = base / ns / container_id / "config.json"
            if spec_path.exists():
                return from_oci_spec(
                    "containerd", container_id, read_json(spec_path), str(spec_path)
                )
    return None


def _crio(container_id: str, roots: RuntimeRoots) -> ContainerInfo | None:
    for base in roots.crio_containers:
        spec_path = base / container_id / "userdata" / "config.json"
        if spec_path.exists():
            return from_oci_spec("cri-o", container_id, read_json(spec_path), str(spec_path))
    return None


def _docker(container_id: str, roots: RuntimeRoots) -> ContainerInfo | None:
    for base in roots.docker_containers:
        config_path = base / container_id / "config.v2.json"
        if config_path.exists():
            config = read_json(config_path)
            host_path = base / container_id / "hostconfig.json"
            hostconfig = read_json(host_path) if host_path.exists() else None
            return from_docker(container_id, config, hostconfig, str(config_path))
    return None


def _runc(container_id: str, roots: RuntimeRoots) -> ContainerInfo | None:
    for base in roots.runc_state:
        # runc --root DIR keeps DIR/<id>/state.json; containerd's shim adds a namespace level.
        candidates = [base / container_id / "state.json"]
        try:
            candidates += [
                base / ns / container_id / "state.json" for ns in sorted(os.listdir(base))
            ]
        except OSError:
            continue
        for state_path in candidates:
            if state_path.exists():
                return from_runc_state(container_id, read_json(state_path), str(state_path))
    return None


_LOOKUPS = {"containerd": _containerd, "cri-o": _crio, "docker": _docker, "runc": _runc}
