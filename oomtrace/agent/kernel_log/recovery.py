"""Keeps every kill the kernel logged accounted for.

A thread reads /dev/kmsg from the start of the ring and parses OOM reports.
Each report is either claimed by the live record of the same victim, or it
becomes a record of its own (`source: KMSG`):
  - reports logged before this agent attached its hooks and after the last
    checkpoint: kills that happened while no agent ran (backfill);
  - reports after that which no live record claimed within `orphan_after_ns`:
    kills the BPF side lost.
"Before the hooks attached" is exact: the agent writes a marker line to the
kernel log once attached, and sequence numbers order it with the reports.

The checkpoint (boot id, the kmsg sequence up to which every report is
accounted for, and kills recorded this boot) is written after each record
reached the spool, so a restart neither repeats nor skips a kill."""

from __future__ import annotations

import json
import os
import select
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from oomtrace.agent.host import Clock, boot_ns_now
from oomtrace.agent.kernel_log.reports import KMSG, KmsgReader, ParsedReport, ReportParser

log = structlog.get_logger(__name__)

VMSTAT = Path("/proc/vmstat")


def vmstat_oom_kills(path: Path = VMSTAT) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


MAX_CGROUPS_REMEMBERED = 10_000


@dataclass
class Checkpoint:
    boot_id: str
    seq: int  # every report with last_seq <= seq is recorded
    recorded: int  # kills recorded this boot (live, kmsg and counter)
    # Kills recorded this boot per memory cgroup path, to tell which of a
    # cgroup's own oom_kill count no record accounts for.
    by_cgroup: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, boot_id: str) -> Checkpoint | None:
        """The checkpoint of this boot, or None (none yet, another boot, or
        unreadable: said in the log, and treated as none)."""
        try:
            data = json.loads(path.read_text())
            by_cgroup = {str(k): int(v) for k, v in dict(data.get("by_cgroup", {})).items()}
            cp = cls(str(data["boot_id"]), int(data["seq"]), int(data["recorded"]), by_cgroup)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("kmsg.checkpoint_unreadable", path=str(path), error=str(exc))
            return None
        return cp if cp.boot_id == boot_id else None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(
                {
                    "boot_id": self.boot_id,
                    "seq": self.seq,
                    "recorded": self.recorded,
                    "by_cgroup": self.by_cgroup,
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)


class KernelLog:
    def __init__(
        self,
        checkpoint_path: Path,
        boot_id: str,
        *,
        backfill: bool = True,
        orphan_after_ns: int = 5_000_000_000,
        kmsg_path: str = KMSG,
        cgroup_kills: Callable[[], dict[str, int]] | None = None,
        clock: Clock = boot_ns_now,
    ) -> None:
        """cgroup_kills: each memory cgroup's own oom_kill count, by path."""
        self.checkpoint_path = checkpoint_path
        self.kmsg_path = kmsg_path
        self.orphan_after_ns = orphan_after_ns
        self.clock = clock
        previous = Checkpoint.load(checkpoint_path, boot_id)
        self.first_run_this_boot = previous is None
        if previous is None:
            # No record of this boot: every kill still in the ring is unrecorded,
            # unless asked not to look back.
            previous = Checkpoint(boot_id, -1, 0)
        self.checkpoint = previous
        self.backfill = backfill
        self.marker_seq: int | None = None
        self.oom_kills_at_attach: int | None = None
        self.cgroup_kills = cgroup_kills
        self.cgroup_kills_at_attach: dict[str, int] = {}
        # Kills only counters know of, to record once: by cgroup path ("" for
        # the node, when the cgroup that had them is gone).
        self.counter_pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._unclaimed: list[tuple[ParsedReport, int]] = []  # (report, seen at on the clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._marker_text = ""
        self.read_seq = -1
        self.reader: KmsgReader | None = None
        self.unreadable = ""  # why the log could not be opened, if it could not
        self.parser = ReportParser()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Opens the log, reads it from the start in a thread. A log that
        cannot be opened (a container without access to the device) is said
        and survived: records then lack the kernel's report, and kills from
        while no agent ran come back from the kill counters alone."""
        try:
            self.reader = KmsgReader(self.kmsg_path, from_start=True)
        except OSError as exc:
            self.unreadable = f"{self.kmsg_path}: {exc.strerror or exc}"
            log.error(
                "kmsg.unreadable",
                error=self.unreadable,
                consequence="no kernel report on records; kills while no agent ran are "
                "recovered from the kill counters only (no victim details)",
            )
            return
        self._thread = threading.Thread(target=self._run, daemon=True, name="kmsg")
        self._thread.start()

    def note_kill_count(self) -> None:
        """Called just before the hooks attach: kills counted until then are
        not seen live, so the log or the checkpoint must account for them."""
        self.oom_kills_at_attach = vmstat_oom_kills()
        if self.cgroup_kills is not None:
            self.cgroup_kills_at_attach = self.cgroup_kills()

    def mark_attached(self) -> None:
        """Called once every hook is attached: writes the marker line that
        tells reports from before and after apart."""
        if self.reader is None:
            # No log to order the counters' kills against: every kill counted
            # before attach and not in the checkpoint is a counter record.
            self._count_unlogged()
            return
        self._marker_text = f"oomtrace[{os.getpid()}]: hooks attached, recording OOM kills"
        try:
            with open(self.kmsg_path, "w") as f:
                f.write(f"<6>{self._marker_text}\n")
        except OSError as exc:
            # Without the marker nothing tells backfill from live: treat
            # everything before now as backfill by its position when read.
            log.error("kmsg.marker_unwritable", error=str(exc))
            self._marker_text = ""

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self.reader is not None:
            self.reader.close()

    def _run(self) -> None:
        assert self.reader is not None
        while not self._stop.is_set():
            for rec in self.reader.read_available():
                self.read_seq = rec.seq
                if (
                    self.marker_seq is None
                    and self._marker_text
                    and rec.text.startswith(self._marker_text)
                ):
                    self.marker_seq = rec.seq
                    self._count_unlogged()
                    continue
                report = self.parser.feed(rec)
                if report is not None and report.last_seq > self.checkpoint.seq:
                    with self._lock:
                        self._unclaimed.append((report, self.clock()))
            select.select([self.reader.fileno()], [], [], 0.2)

    def _count_unlogged(self) -> None:
        """Kills the kernel counted before attach that neither the checkpoint
        nor the ring accounts for: their log lines rolled out."""
        if self.oom_kills_at_attach is None or not self.backfill:
            return
        with self._lock:
            before = [
                r for r, _ in self._unclaimed if self.marker_seq and r.last_seq < self.marker_seq
            ]
        in_ring: dict[str, int] = {}
        for r in before:
            path = r.constraint_fields.get("task_memcg", "")
            in_ring[path] = in_ring.get(path, 0) + 1
        total = max(0, self.oom_kills_at_attach - self.checkpoint.recorded - len(before))
        pending: dict[str, int] = {}
        for path, n in sorted(self.cgroup_kills_at_attach.items()):
            missing = n - self.checkpoint.by_cgroup.get(path, 0) - in_ring.get(path, 0)
            # Never more than the node's own count says is missing.
            room = total - sum(pending.values())
            if missing > 0 and room > 0:
                pending[path] = min(missing, room)
        rest = total - sum(pending.values())
        if rest > 0:
            pending[""] = rest
        self.counter_pending = pending

    # -- claiming -------------------------------------------------------------------

    def claim(self, victim_pid: int) -> ParsedReport | None:
        """The report of a live kill (the newest with its pid), taken out of
        the unclaimed ones. A kill in the moment between attaching and the
        marker has its report before the marker: it is claimed all the same."""
        with self._lock:
            for i in range(len(self._unclaimed) - 1, -1, -1):
                report, _seen = self._unclaimed[i]
                if report.victim_pid == victim_pid:
                    del self._unclaimed[i]
                    return report
        return None

    def orphans(self, now_ns: int | None = None, live: Collection[int] = ()) -> list[ParsedReport]:
        """Reports to record on their own, taken out of the unclaimed ones.
        live: victims whose live record is still being assembled; their
        reports wait for it (a burst under a slow machine once held live
        kills past orphan_after_ns, and each such kill was recorded twice)."""
        if self.marker_seq is None:
            return []  # until the marker is read, a report may still be live
        now_ns = self.clock() if now_ns is None else now_ns
        out: list[ParsedReport] = []
        with self._lock:
            keep = []
            for report, seen in self._unclaimed:
                # Every report waits orphan_after_ns for a live record to claim
                # it, those from before the marker too (see claim()).
                if now_ns - seen < self.orphan_after_ns or report.victim_pid in live:
                    keep.append((report, seen))
                elif report.last_seq < self.marker_seq and not self.backfill:
                    continue  # from before this agent, and asked not to look back
                else:
                    out.append(report)
            self._unclaimed = keep
        return out

    def checkpoint_seq(self) -> int:
        """The kmsg sequence up to which every report is accounted for."""
        return self.checkpoint.seq

    def take_counter(self) -> dict[str, int]:
        """Kills only counters know of, by cgroup path ("" for the node)."""
        pending, self.counter_pending = self.counter_pending, {}
        return pending

    def recorded(self, n: int = 1, cgroup_path: str = "") -> None:
        """n more kills (of one cgroup) are in the spool: move the checkpoint
        up to the last sequence before which nothing is left unclaimed."""
        with self._lock:
            pending = [r.first_seq for r, _ in self._unclaimed]
            self.checkpoint.recorded += n
            if cgroup_path:
                by = self.checkpoint.by_cgroup
                by[cgroup_path] = by.get(cgroup_path, 0) + n
                while len(by) > MAX_CGROUPS_REMEMBERED:
                    del by[next(iter(by))]
            floor = min(pending) - 1 if pending else self.read_seq
            if self.marker_seq is None:
                floor = min(floor, self.checkpoint.seq)
            self.checkpoint.seq = max(self.checkpoint.seq, floor)
        try:
            self.checkpoint.save(self.checkpoint_path)
        except OSError as exc:
            log.error("kmsg.checkpoint_unwritable", path=str(self.checkpoint_path), error=str(exc))
