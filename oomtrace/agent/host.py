"""Facts about the node the agent runs on: name, cluster, boot id, clocks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def node_name() -> str:
    # In Kubernetes the DaemonSet passes spec.nodeName; elsewhere the hostname.
    return os.environ.get("NODE_NAME") or os.uname().nodename


# Where a kubelet keeps the kubeconfig it talks to its API server with
# (kubeadm, then kubelet TLS bootstrap and most managed distributions).
KUBELET_KUBECONFIGS = (
    Path("/etc/kubernetes/kubelet.conf"),
    Path("/var/lib/kubelet/kubeconfig"),
    Path("/etc/kubernetes/kubeconfig"),
)
_MAX_KUBECONFIG_BYTES = 1 << 20
_MAX_CLUSTER = 253


def cluster_name(
    env: dict[str, str] | None = None, kubeconfigs: tuple[Path, ...] = KUBELET_KUBECONFIGS
) -> str:
    """The cluster this node belongs to, where the node says: $OOMTRACE_CLUSTER
    (a DaemonSet sets it), else the cluster of the kubelet kubeconfig's current
    context (in a container: the host's /etc/kubernetes mounted), else ""."""
    env = dict(os.environ) if env is None else env
    named = env.get("OOMTRACE_CLUSTER", "").strip()
    if named:
        return named[:_MAX_CLUSTER]
    for path in kubeconfigs:
        name = _kubeconfig_cluster(path)
        if name:
            return name
    return ""


def _kubeconfig_cluster(path: Path) -> str:
    import yaml

    try:
        with path.open("rb") as f:
            text = f.read(_MAX_KUBECONFIG_BYTES)
        config = yaml.safe_load(text)
    except (OSError, yaml.YAMLError, ValueError):
        return ""
    if not isinstance(config, dict):
        return ""
    contexts = config.get("contexts") or []
    current = config.get("current-context")
    for ctx in contexts if isinstance(contexts, list) else []:
        if isinstance(ctx, dict) and ctx.get("name") == current:
            inner = ctx.get("context")
            cluster = inner.get("cluster") if isinstance(inner, dict) else None
            if isinstance(cluster, str) and cluster.strip():
                return cluster.strip()[:_MAX_CLUSTER]
    clusters = config.get("clusters") or []
    if isinstance(clusters, list) and len(clusters) == 1 and isinstance(clusters[0], dict):
        name = clusters[0].get("name")
        if isinstance(name, str) and name.strip():
            return name.strip()[:_MAX_CLUSTER]
    return ""


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def boot_ns_to_datetime(boot_ns: int) -> datetime:
    """The wall-clock time of a bpf_ktime_get_boot_ns() reading. Both clocks
    are read now, so a wall-clock step since the event shifts the answer by
    that step, never by the time since boot."""
    offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return datetime.fromtimestamp((boot_ns + offset) / 1e9, tz=UTC)


def boot_ns_now() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


# Nanoseconds on the kernel's boot clock, the clock BPF stamps events with
# (bpf_ktime_get_boot_ns). Everything in the agent that decides by time takes
# one, defaulting to boot_ns_now, so tests give their own and never depend on
# how long the machine has been up.
Clock = Callable[[], int]
