"""Facts about the node the agent runs on: name, boot id, clocks."""

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
