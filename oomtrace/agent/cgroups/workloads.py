"""Which workload each memory cgroup holds, known before anything dies.

Filled by a scan of the memory hierarchy at start and kept current from the
kernel's cgroup_mkdir/cgroup_rmdir events; keyed by cgroup id. A removed
cgroup's entry stays for a grace period, because an OOM record is often
enriched after its container has been torn down. Runtime state that is not
there yet when a cgroup appears (runc writes state.json after it makes the
cgroup) is looked for again a few times."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from oomtrace.agent.cgroups import container_runtimes as runtimes
from oomtrace.agent.cgroups import names as cgroup_names
from oomtrace.agent.cgroups.container_runtimes import ContainerInfo, RuntimeRoots
from oomtrace.agent.cgroups.names import CgroupIdentity
from oomtrace.agent.host import Clock, boot_ns_now

log = structlog.get_logger(__name__)

_RETRY_AFTER_NS = (200_000_000, 500_000_000, 1_000_000_000, 2_000_000_000, 4_000_000_000)


@dataclass(frozen=True, slots=True)
class Workload:
    path: str
    identity: CgroupIdentity
    container: ContainerInfo | None
    reasons: tuple[str, ...] = ()


def _log_resolved(w: Workload) -> None:
    assert w.container is not None
    log.info(
        "workload.resolved",
        path=w.path,
        runtime=w.container.runtime,
        container=w.container.name,
        pod=w.container.pod_name,
    )


@dataclass
class _Entry:
    workload: Workload
    removed_at_ns: int | None = None
    attempts: int = 0
    retry_at_ns: int | None = None


@dataclass
class WorkloadCache:
    mount: Path | None
    roots: RuntimeRoots = field(default_factory=RuntimeRoots)
    grace_ns: int = 600_000_000_000
    max_entries: int = 100_000
    clock: Clock = boot_ns_now
    _entries: dict[int, _Entry] = field(default_factory=dict)
    evicted: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _resolve(self, path: str) -> Workload:
        ident = cgroup_names.parse(path)
        if not ident.is_container:
            return Workload(path, ident, None)
        info, reasons = runtimes.lookup(ident.container_id, ident.runtime, self.roots)
        return Workload(path, ident, info, tuple(reasons) if info is None else ())

    def learn(
        self, cgroup_id: int, path: str, now_ns: int | None = None, *, announce: bool = True
    ) -> Workload:
        """announce: log a container found now (not for the start-up scan's many)."""
        now_ns = self.clock() if now_ns is None else now_ns
        workload = self._resolve(path)
        entry = _Entry(workload)
        if workload.identity.is_container and workload.container is None:
            entry.retry_at_ns = now_ns + _RETRY_AFTER_NS[0]
        elif workload.container is not None and announce:
            _log_resolved(workload)
        self._entries[cgroup_id] = entry
        if len(self._entries) > self.max_entries:
            self._evict_one()
        return workload

    def _evict_one(self) -> None:
        # Removed entries go first, oldest removal first; then the oldest learned.
        removed = [
            (e.removed_at_ns, k) for k, e in self._entries.items() if e.removed_at_ns is not None
        ]
        key = min(removed)[1] if removed else next(iter(self._entries))
        del self._entries[key]
        self.evicted += 1

    def removed(self, cgroup_id: int, now_ns: int | None = None) -> None:
        entry = self._entries.get(cgroup_id)
        if entry is not None:
            entry.removed_at_ns = self.clock() if now_ns is None else now_ns
            entry.retry_at_ns = None

    def lookup(self, cgroup_id: int, path: str) -> Workload:
        """The workload of a victim's cgroup: from the cache, else read now."""
        entry = self._entries.get(cgroup_id)
        if entry is not None and (
            entry.workload.container is not None or not entry.workload.identity.is_container
        ):
            return entry.workload
        fresh = self._resolve(path)
        if fresh.container is not None or entry is None:
            if entry is None or entry.removed_at_ns is None:
                self._entries[cgroup_id] = _Entry(fresh)
            return fresh
        return entry.workload

    def by_path(self, path: str) -> Workload:
        """For a kill known only from the kernel's log, which names the cgroup
        by path: a cached entry of that path (even removed), else read now."""
        for entry in self._entries.values():
            if entry.workload.path == path:
                return entry.workload
        return self._resolve(path)

    def tick(self, now_ns: int | None = None) -> None:
        """Retries pending resolutions and forgets entries past their grace."""
        now_ns = self.clock() if now_ns is None else now_ns
        expired = [
            k
            for k, e in self._entries.items()
            if e.removed_at_ns is not None and now_ns - e.removed_at_ns >= self.grace_ns
        ]
        for k in expired:
            del self._entries[k]
        for e in self._entries.values():
            if e.retry_at_ns is None or e.retry_at_ns > now_ns:
                continue
            fresh = self._resolve(e.workload.path)
            e.attempts += 1
            if fresh.container is not None:
                e.workload, e.retry_at_ns = fresh, None
                _log_resolved(fresh)
            elif e.attempts < len(_RETRY_AFTER_NS):
                e.workload = fresh
                e.retry_at_ns = now_ns + _RETRY_AFTER_NS[e.attempts]
            else:
                e.workload, e.retry_at_ns = fresh, None
                log.info("workload.unresolved", path=e.workload.path, reasons=list(fresh.reasons))

    def scan(self, limit: int = 50_000) -> int:
        """Learns every container cgroup now in the hierarchy; returns how many."""
        if self.mount is None:
            return 0
        found = seen = 0
        for root, dirs, _files in os.walk(self.mount):
            for d in dirs:
                seen += 1
                if seen > limit:
                    log.warning("workload.scan_truncated", limit=limit)
                    return found
                full = os.path.join(root, d)
                rel = "/" + os.path.relpath(full, self.mount)
                if not cgroup_names.parse(rel).is_container:
                    continue
                try:
                    ino = os.stat(full).st_ino
                except OSError:
                    continue
                self.learn(ino, rel, announce=False)
                found += 1
        return found
