"""The kernel's log (/dev/kmsg): its records, and the OOM reports in them.

An OOM report runs from "<comm> invoked oom-killer:" to "Killed process
<pid>": memcg usage and limit, the memory statistics, the task table, the
`oom-kill:` constraint line. The kernel ratelimits all of it but the
"Killed process" line (oom_rs: 10 reports per 5 s). Formats differ between
kernel versions (the task table gained rss_anon/rss_file/rss_shmem in 6.x);
the table is read by its header, so columns are found by name. Lines of other
subsystems may fall between a report's lines; they are ignored, and a
report cut short (a lost record, a wrapped ring) is still returned with what
it had."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

KMSG = "/dev/kmsg"


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    seq: int
    ts_us: int  # the kernel's printk clock (local_clock), microseconds since boot
    text: str
    # syslog facility: 0 is the kernel's own. A process writing to /dev/kmsg
    # is forced to another (LOG_USER when it asks for 0), so it cannot forge
    # a kernel line.
    facility: int = 0


def parse_record(raw: bytes) -> KmsgRecord | None:
    """One /dev/kmsg record: `prio,seq,ts_us,flags[,...];text` plus optional
    continuation lines (` KEY=value`), which are dropped. None when malformed."""
    head, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    if len(fields) < 3:
        return None
    try:
        prio, seq, ts_us = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    text = rest.split(b"\n", 1)[0].decode("utf-8", "replace")
    # kmsg escapes non-printable bytes as \xNN; keep them as they are.
    return KmsgRecord(seq, ts_us, text, facility=prio >> 3)


class KmsgReader:
    """Reads /dev/kmsg records; counts what the ring overwrote before we read it."""

    def __init__(self, path: str = KMSG, *, from_start: bool = True) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not from_start:
            os.lseek(self.fd, 0, os.SEEK_END)
        self.overwritten = 0
        self.malformed = 0

    def read_available(self) -> Iterator[KmsgRecord]:
        """Every record available now, oldest first; returns when none is left."""
        while True:
            try:
                raw = os.read(self.fd, 16384)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    # The ring wrapped past our position; the next read resumes
                    # at the oldest record still there.
                    self.overwritten += 1
                    continue
                raise
            if not raw:
                return
            rec = parse_record(raw)
            if rec is None:
                self.malformed += 1
                continue
            yield rec

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


# -- OOM reports --------------------------------------------------------------------

_INVOKED = re.compile(
    r"^(?P<comm>.*?) invoked oom-killer: gfp_mask=(?P<gfp>[^,]+),"
    r"(?:.*? )?order=(?P<order>-?\d+), oom_score_adj=(?P<adj>-?\d+)"
)
_STACK_HEAD = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (?P<tid>\d+) Comm: ")
_COUNTER = re.compile(
    r"^(?P<name>memory|memory\+swap|swap|kmem): usage (?P<usage>\d+)kB, limit (?P<limit>\d+)kB, failcnt (?P<failcnt>\d+)"
)
_STATS_HEAD = re.compile(r"^Memory cgroup stats for (?P<path>[^:]*):(?P<rest>.*)$")
_STAT_LINE = re.compile(r"^(?P<key>[a-z_]+)[ :](?P<value>\d+)(?P<unit>KB|kB)?$")
_TASKS_HEAD = re.compile(r"^\[\s*pid\s*\]\s+(?P<cols>.*)$")
_TASK_ROW = re.compile(r"^\[\s*(?P<pid>\d+)\]\s+(?P<rest>.*)$")
# A frame of the trigger's call trace: " do_anonymous_page+0x340/0x900", a
# module's with " [name]"; "? name" frames are stale stack words, not calls.
_FRAME = re.compile(
    r"^\s*(?P<unreliable>\? )?(?P<fn>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[\w+\])?\s*$"
)
MAX_FRAMES = 64
# Mem-Info, printed with a node-wide OOM: "Mem-Info:", then "key:pages" words
# (several a line), per-zone lines with kB figures, the buddy lists, hugepages.
_MEMINFO_HEAD = re.compile(r"^Mem-Info:\s*$")
_MEMINFO_WORD = re.compile(r"(?P<key>[a-z_]+):(?P<value>\d+)(?P<unit>kB)?")
_ZONE = re.compile(r"^Node (?P<node>\d+) (?P<zone>\w+) free:(?P<free>\d+)kB (?P<rest>.*)$")
_BUDDY = re.compile(r"^Node (?P<node>\d+) (?P<zone>\w+): (?P<blocks>.*) = (?P<total>\d+)kB$")
_BUDDY_BLOCK = re.compile(r"(?P<count>\d+)\*(?P<size>\d+)kB")
_HUGEPAGES = re.compile(
    r"^Node \d+ hugepages_total=(?P<total>\d+) hugepages_free=(?P<free>\d+) "
    r"hugepages_surp=\d+ hugepages_size=(?P<size>\d+)kB$"
)
_NODE_LINE = re.compile(r"^Node \d+ active_anon:")
_SWAP = re.compile(r"^(?P<which>Free|Total) swap\s*=\s*(?P<kb>\d+)kB$")
_PAGES = re.compile(
    r"^(?P<n>\d+) (?P<what>pages RAM|pages reserved|total pagecache pages|pages in swap cache|pages HighMem/MovableOnly|pages hwpoisoned|pages cma reserved)$"
)
_LOWMEM = re.compile(r"^lowmem_reserve\[\]:")
_CONSTRAINT = re.compile(r"^oom-kill:constraint=(?P<constraint>[A-Z_]+),(?P<rest>.*)$")
# At the line's start: the OOM killer's message (none before 5.x), then the kill.
_KILLED = re.compile(
    r"^(?:(?:Memory cgroup out of memory|Out of memory(?: \(oom_kill_allocating_task\))?): )?"
    r"Killed process (?P<pid>\d+) \((?P<comm>.*)\) total-vm:(?P<total_vm>\d+)kB, "
    r"anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, shmem-rss:(?P<shmem>\d+)kB"
    r"(?:, UID:(?P<uid>\d+))?(?: pgtables:(?P<pgtables>\d+)kB)?(?: oom_score_adj:(?P<adj>-?\d+))?"
)

# Task-table header words, as the kernel prints them, to ReportTask fields.
_TASK_COLUMNS = {
    "uid": "uid",
    "tgid": "tgid",
    "total_vm": "total_vm_pages",
    "rss": "rss_pages",
    "rss_anon": "rss_anon_pages",
    "rss_file": "rss_file_pages",
    "rss_shmem": "rss_shmem_pages",
    "pgtables_bytes": "pgtables_bytes",
    "nr_ptes": "nr_ptes",  # 4.x printed page-table pages; kept apart
    "swapents": "swapents",
    "oom_score_adj": "oom_score_adj",
    "name": "name",
}


@dataclass
class ParsedTask:
    pid: int
    values: dict[str, int] = field(default_factory=dict)
    name: str = ""


@dataclass
class ParsedZone:
    name: str
    free_kb: int
    min_kb: int
    managed_kb: int
    largest_free_order: int = -1  # from the buddy lists; -1: none printed


@dataclass
class MemInfo:
    """The Mem-Info block of a node-wide OOM report."""

    pages: dict[str, int] = field(default_factory=dict)  # "free": pages, "shmem": pages, ...
    node_kb: dict[str, int] = field(default_factory=dict)  # the "Node 0 ..." line, kB
    zones: list[ParsedZone] = field(default_factory=list)
    hugepages: list[tuple[int, int, int]] = field(default_factory=list)  # total, free, size kB
    swap_free_kb: int | None = None
    swap_total_kb: int | None = None
    totals: dict[str, int] = field(default_factory=dict)  # "pages RAM": n, ...


@dataclass
class ParsedReport:
    """One OOM report as the kernel printed it."""

    first_seq: int
    last_seq: int = 0
    ts_us: int = 0  # the Killed line's printk time
    ratelimited: bool = True  # until an "invoked oom-killer" line is seen
    invoker_comm: str = ""
    invoker_pid: int = 0
    gfp_mask: str = ""
    order: int = 0
    invoker_oom_score_adj: int = 0
    counters: dict[str, tuple[int, int, int]] = field(
        default_factory=dict
    )  # name -> kB usage, limit, failcnt
    stats_cgroup: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    tasks: list[ParsedTask] = field(default_factory=list)
    constraint: str = ""
    constraint_fields: dict[str, str] = field(default_factory=dict)
    victim_pid: int = 0
    victim_comm: str = ""
    killed: dict[str, int] = field(default_factory=dict)  # kB figures and uid, adj
    lines: list[str] = field(default_factory=list)
    unparsed: int = 0  # lines inside the report that matched nothing known
    call_trace: list[str] = field(default_factory=list)  # function names, innermost first
    mem_info: MemInfo | None = None


# The kernel ends a report it could not act on with this line (no Killed line).
_NO_KILLABLE = re.compile(r"^Out of memory and no killable processes")
# A report is printed in one go: one still open after this long (printk time)
# or this many lines never had its Killed line, and what follows it is not its.
REPORT_MAX_AGE_US = 30_000_000
REPORT_MAX_LINES = 100_000


class ReportParser:
    """Feeds on kmsg records; yields each report when its Killed line arrives.
    Only the kernel's own records count (facility 0); a report left open (a
    memcg OOM with nothing killable, a lost Killed line) is dropped at its
    end line, or when it grows too old or too long, and counted."""

    def __init__(self) -> None:
        self._current: ParsedReport | None = None
        self._columns: list[str] | None = None
        self._in_stats = False
        self._in_meminfo = False
        self._started_us = 0
        self.expired = 0  # reports dropped open
        self.foreign = 0  # records not from the kernel

    def _expire(self) -> None:
        self._current = None
        self._columns = None
        self._in_stats = False
        self.expired += 1

    def feed(self, rec: KmsgRecord) -> ParsedReport | None:
        if rec.facility == 0 and "\\x0a" in rec.text:
            # One printk of several lines (6.x prints the memcg stats in
            # one): /dev/kmsg escapes its newlines. Each line as a record.
            done = None
            for part in rec.text.split("\\x0a"):
                if part:
                    done = self.feed(KmsgRecord(rec.seq, rec.ts_us, part, rec.facility)) or done
            return done
        if rec.facility != 0:
            self.foreign += 1
            return None
        text = rec.text
        if self._current is not None and (
            rec.ts_us - self._started_us > REPORT_MAX_AGE_US
            or len(self._current.lines) >= REPORT_MAX_LINES
        ):
            self._expire()
        if self._current is not None and _NO_KILLABLE.match(text):
            self._expire()
            return None
        if m := _INVOKED.match(text):
            # A new report; one left open (cut short) is dropped for this one.
            new = ParsedReport(first_seq=rec.seq, ratelimited=False)
            self._current = new
            self._started_us = rec.ts_us
            new.invoker_comm = m.group("comm")
            new.gfp_mask = m.group("gfp")
            new.order = int(m.group("order"))
            new.invoker_oom_score_adj = int(m.group("adj"))
            new.lines.append(text)
            self._columns = None
            self._in_stats = False
            return None
        killed = _KILLED.match(text)
        if killed:
            done = self._current or ParsedReport(first_seq=rec.seq)
            self._current = None
            done.lines.append(text)
            done.last_seq = rec.seq
            done.ts_us = rec.ts_us
            done.victim_pid = int(killed.group("pid"))
            done.victim_comm = killed.group("comm")
            for key in ("total_vm", "anon", "file", "shmem", "uid", "pgtables", "adj"):
                if killed.group(key) is not None:
                    done.killed[key] = int(killed.group(key))
            return done
        r = self._current
        if r is None:
            if m := _CONSTRAINT.match(text):
                # A ratelimit window can suppress the header yet print this line.
                self._current = r = ParsedReport(first_seq=rec.seq)
                self._started_us = rec.ts_us
                self._constraint(r, m)
                r.lines.append(text)
            return None
        r.lines.append(text)
        if (m := _FRAME.match(text)) and not r.counters and not r.stats_cgroup:
            # Frames come before the memcg counters; a later match is not one.
            if not m.group("unreliable") and len(r.call_trace) < MAX_FRAMES:
                r.call_trace.append(m.group("fn"))
        elif self._mem_info(r, text):
            pass
        elif (m := _STACK_HEAD.match(text)) and not r.invoker_pid:
            r.invoker_pid = int(m.group("tid"))
        elif m := _COUNTER.match(text):
            r.counters[m.group("name")] = (
                int(m.group("usage")),
                int(m.group("limit")),
                int(m.group("failcnt")),
            )
            self._in_stats = False
        elif m := _STATS_HEAD.match(text):
            r.stats_cgroup = m.group("path")
            self._in_stats = True
            # Old kernels print the stats on the header line: "cache:0KB rss:4KB ..."
            for part in m.group("rest").split():
                if sm := _STAT_LINE.match(part):
                    r.stats[sm.group("key")] = int(sm.group("value")) * (
                        1024 if sm.group("unit") else 1
                    )
        elif m := _TASKS_HEAD.match(text):
            self._columns = m.group("cols").split()
            self._in_stats = False
        elif (m := _TASK_ROW.match(text)) and self._columns:
            self._task(r, int(m.group("pid")), m.group("rest"))
        elif m := _CONSTRAINT.match(text):
            self._constraint(r, m)
        elif self._in_stats and (sm := _STAT_LINE.match(text)):
            r.stats[sm.group("key")] = int(sm.group("value"))
        else:
            self._in_stats = False
            r.unparsed += 1
        return None

    def _mem_info(self, r: ParsedReport, text: str) -> bool:
        """A line of the Mem-Info block, taken into r.mem_info; False when it is not one."""
        if _MEMINFO_HEAD.match(text):
            r.mem_info = MemInfo()
            self._in_meminfo = True
            self._in_stats = False
            return True
        mi = r.mem_info
        if mi is None:
            return False
        if m := _ZONE.match(text):
            words = {
                w.group("key"): int(w.group("value"))
                for w in _MEMINFO_WORD.finditer(m.group("rest"))
            }
            mi.zones.append(
                ParsedZone(
                    m.group("zone"),
                    int(m.group("free")),
                    words.get("min", 0),
                    words.get("managed", 0),
                )
            )
        elif m := _BUDDY.match(text):
            orders = [
                int(b.group("size"))
                for b in _BUDDY_BLOCK.finditer(m.group("blocks"))
                if int(b.group("count"))
            ]
            for z in mi.zones:
                if z.name == m.group("zone"):
                    page_kb = 4
                    z.largest_free_order = (
                        (max(orders) // page_kb).bit_length() - 1 if orders else -1
                    )
        elif m := _HUGEPAGES.match(text):
            mi.hugepages.append((int(m.group("total")), int(m.group("free")), int(m.group("size"))))
        elif _NODE_LINE.match(text):
            for w in _MEMINFO_WORD.finditer(text):
                mi.node_kb[w.group("key")] = int(w.group("value"))
        elif m := _SWAP.match(text):
            if m.group("which") == "Free":
                mi.swap_free_kb = int(m.group("kb"))
            else:
                mi.swap_total_kb = int(m.group("kb"))
        elif m := _PAGES.match(text):
            mi.totals[m.group("what")] = int(m.group("n"))
        elif _LOWMEM.match(text):
            pass
        elif (
            self._in_meminfo
            and (found := list(_MEMINFO_WORD.finditer(text)))
            and all(not w.group("unit") for w in found)
            and text.strip()[0].islower()
        ):
            for w in found:
                mi.pages[w.group("key")] = int(w.group("value"))
        else:
            self._in_meminfo = False
            return False
        return True

    def _task(self, r: ParsedReport, pid: int, rest: str) -> None:
        assert self._columns is not None
        words = rest.split(None, len(self._columns) - 1)
        if len(words) != len(self._columns):
            r.unparsed += 1
            return
        task = ParsedTask(pid)
        for col, word in zip(self._columns, words, strict=True):
            name = _TASK_COLUMNS.get(col)
            if name == "name":
                task.name = word
            elif name is not None:
                try:
                    task.values[name] = int(word)
                except ValueError:
                    r.unparsed += 1
                    return
        r.tasks.append(task)

    @staticmethod
    def _constraint(r: ParsedReport, m: re.Match[str]) -> None:
        r.constraint = m.group("constraint")
        for part in m.group("rest").split(","):
            k, _, v = part.partition("=")
            r.constraint_fields[k] = v
