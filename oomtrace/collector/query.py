"""Query logic the stores share: filters, page tokens, grouping keys, and the
columns an event is indexed by. Knows nothing of gRPC."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass

from oomtrace import records
from oomtrace.collector.errors import InvalidQueryError
from oomtrace.v1 import collector_pb2, event_pb2

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Columns:
    """What a stored event is filtered and grouped by."""

    id: str
    killed_at_ns: int
    node: str
    namespace: str
    pod: str
    container: str
    image: str
    comm: str
    constraint: int
    cgroup: str
    rss_bytes: int
    workload: str  # namespace/Kind/name, "" outside Kubernetes
    verdict: str = ""  # the record's first verdict's code: its headline
    verdict_codes: str = ""  # every code, ",A,B," (what the verdict filter matches)
    source: int = 0  # OomEvent.Source
    labels: str = ""  # label_lines(): what -l searches
    owner: str = ""  # Kind/name of what owns the pod (workload without its namespace)
    cluster: str = ""


def label_lines(labels: Mapping[str, str]) -> str:
    """The labels a record holds as one searchable text: each label as
    key=value on a line of its own, sorted, with a line break before the
    first and after the last (so a search for a whole line cannot match part
    of one). A line break inside a key or value (hostile: a
    container's own labels) becomes a space, so no label can forge another."""
    if not labels:
        return ""
    lines = sorted(f"{k}={v}".replace("\n", " ") for k, v in labels.items())
    return "\n" + "\n".join(lines) + "\n"


def columns_of(ev: event_pb2.OomEvent) -> Columns:
    v = ev.victim
    return Columns(
        id=ev.id,
        killed_at_ns=ev.killed_at.ToNanoseconds(),
        node=ev.node,
        namespace=ev.pod.namespace,
        pod=ev.pod.name,
        container=ev.container.name,
        image=ev.container.image,
        comm=v.comm,
        constraint=ev.constraint,
        cgroup=ev.cgroup.path,
        rss_bytes=records.rss_bytes(ev),
        workload=workload_key(ev),
        verdict=ev.verdicts[0].code[:_MAX_CODE] if ev.verdicts else "",
        verdict_codes=verdict_codes(ev),
        source=ev.source,
        labels=label_lines(ev.container.labels),
        owner=records.pod_workload(ev),
        cluster=ev.cluster,
    )


_MAX_CODE = 64
_CODE = re.compile(r"[A-Z0-9_]{1,64}")


def verdict_codes(ev: event_pb2.OomEvent) -> str:
    """Every verdict code of a record between commas (",A,B,"), so one code
    is matched whole; codes that are not [A-Z0-9_] (a hostile node's) left out."""
    codes = [v.code for v in ev.verdicts if _CODE.fullmatch(v.code)]
    return f",{','.join(codes)}," if codes else ""


def verdict_pattern(code: str) -> str:
    """The LIKE pattern that finds a code in verdict_codes ('_' escaped with '!')."""
    if not _CODE.fullmatch(code):
        raise InvalidQueryError(f"verdict {code!r} is not a verdict code (A-Z, 0-9, _)")
    return "%," + code.replace("_", "!_") + ",%"


def workload_key(ev: event_pb2.OomEvent) -> str:
    """What `top --by workload` groups by: namespace/Kind/name."""
    workload = records.pod_workload(ev)
    return f"{ev.pod.namespace}/{workload}" if workload else ""


# What a stored record's columns can hold: SQLite (and PostgreSQL) integers
# are signed 64-bit, and a kill time must be a date people can read.
_INT64_MAX = (1 << 63) - 1
_EARLIEST_NS = 946_684_800 * 10**9  # 2000-01-01
_LATEST_NS = 7_258_118_400 * 10**9  # 2200-01-01
_MAX_TEXT = 4096  # a column's text (node, pod, comm, cgroup path...)
_ID = re.compile(r"[0-9A-Za-z_-]+")


def validate(ev: event_pb2.OomEvent) -> str:
    """Why a record can never be stored, or "" when it can. Each record is
    judged on its own: one bad record is refused, the batch around it is
    stored."""
    if not ev.id:
        return "record has no id"
    if len(ev.id) > 128 or not _ID.fullmatch(ev.id):
        return "record id must be 1 to 128 letters, digits, '_' or '-'"
    if not ev.HasField("killed_at"):
        return "record has no killed_at"
    try:
        killed_ns = ev.killed_at.ToNanoseconds()
    except (OverflowError, ValueError):
        return "killed_at is not a time"
    if not _EARLIEST_NS <= killed_ns <= _LATEST_NS:
        return "killed_at is outside 2000-2200"
    if records.rss_bytes(ev) > _INT64_MAX:
        return "the victim's memory figures add up to more than 2^63 bytes"
    for name, text in (
        ("node", ev.node),
        ("pod.namespace", ev.pod.namespace),
        ("pod.name", ev.pod.name),
        ("container.name", ev.container.name),
        ("container.image", ev.container.image),
        ("victim.comm", ev.victim.comm),
        ("cgroup.path", ev.cgroup.path),
        ("cluster", ev.cluster),
    ):
        if len(text) > _MAX_TEXT:
            return f"{name} is longer than {_MAX_TEXT} characters"
    return ""


_Op = collector_pb2.LabelRequirement


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a label selector, tested as the SQL tests it: as lines of
    label_lines() that the record's labels text holds."""

    key: str
    operator: int
    values: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, r: collector_pb2.LabelRequirement) -> Requirement:
        if r.operator == _Op.OPERATOR_UNSPECIFIED or not r.key:
            raise InvalidQueryError(f"label requirement {r.key!r} has no key or operator")
        if (r.operator in (_Op.IN, _Op.NOT_IN)) != bool(r.values):
            raise InvalidQueryError(f"label requirement {r.key!r}: values go with in and notin")
        if len(r.values) > 64 or any(len(v) > _MAX_TEXT for v in (r.key, *r.values)):
            raise InvalidQueryError(f"label requirement {r.key[:64]!r} is too long")
        return cls(r.key, r.operator, tuple(r.values))

    def needles(self) -> list[str]:
        """The texts whose presence in label_lines() the operator tests."""
        if self.operator in (_Op.EXISTS, _Op.DOES_NOT_EXIST):
            return [f"\n{self.key}="]
        return [f"\n{self.key}={v}\n" for v in self.values]

    @property
    def negated(self) -> bool:
        return self.operator in (_Op.NOT_IN, _Op.DOES_NOT_EXIST)

    def holds(self, labels: str) -> bool:
        found = any(n in labels for n in self.needles())
        return found != self.negated


@dataclass(frozen=True, slots=True)
class Filter:
    since_ns: int | None = None
    until_ns: int | None = None
    node: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""
    image: str = ""
    comm: str = ""
    constraint: int = 0
    cgroup_prefix: str = ""
    verdict: str = ""  # a verdict code the record has
    sources: tuple[int, ...] = ()
    labels: tuple[Requirement, ...] = ()
    workload: str = ""
    cluster: str = ""

    @classmethod
    def from_proto(cls, f: collector_pb2.EventFilter) -> Filter:
        return cls(
            since_ns=f.since.ToNanoseconds() if f.HasField("since") else None,
            until_ns=f.until.ToNanoseconds() if f.HasField("until") else None,
            node=f.node,
            namespace=f.namespace,
            pod=f.pod,
            container=f.container,
            image=f.image,
            comm=f.comm,
            constraint=f.constraint,
            cgroup_prefix=f.cgroup_prefix,
            verdict=f.verdict,
            sources=tuple(sorted(set(f.sources))),
            labels=tuple(Requirement.from_proto(r) for r in f.labels),
            workload=f.workload,
            cluster=f.cluster,
        )

    def matches(self, c: Columns) -> bool:
        """The same test the SQL does, for events in flight (watch)."""
        if self.since_ns is not None and c.killed_at_ns < self.since_ns:
            return False
        if self.until_ns is not None and c.killed_at_ns >= self.until_ns:
            return False
        for want, have in (
            (self.node, c.node),
            (self.namespace, c.namespace),
            (self.pod, c.pod),
            (self.container, c.container),
            (self.image, c.image),
            (self.comm, c.comm),
            (self.cluster, c.cluster),
        ):
            if want and want != have:
                return False
        if self.constraint and self.constraint != c.constraint:
            return False
        if self.verdict and f",{self.verdict}," not in c.verdict_codes:
            return False
        if self.sources and c.source not in self.sources:
            return False
        if self.workload and self.workload != c.owner:
            return False
        if not all(r.holds(c.labels) for r in self.labels):
            return False
        return not (self.cgroup_prefix and not c.cgroup.startswith(self.cgroup_prefix))


@dataclass(frozen=True, slots=True)
class PageToken:
    """Keyset position: the last event of the previous page (newest first)."""

    killed_at_ns: int
    id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.killed_at_ns}:{self.id}".encode()).decode()

    @classmethod
    def decode(cls, token: str) -> PageToken:
        try:
            if len(token) > 256:
                raise ValueError("too long")
            raw = base64.urlsafe_b64decode(token.encode()).decode()
            ns, _, ident = raw.partition(":")
            if not -_INT64_MAX <= int(ns) <= _INT64_MAX:
                raise ValueError("out of range")
            return cls(int(ns), ident)
        except (ValueError, UnicodeError) as exc:
            raise InvalidQueryError(
                f"page_token {token!r} is not one this collector issued"
            ) from exc


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


# What each grouping groups by, as the stores name it: a column, or "pod",
# which is namespace/pod (a pod name alone repeats across namespaces).
GROUP_COLUMNS = {
    collector_pb2.TopRequest.GROUP_BY_UNSPECIFIED: "cgroup",
    collector_pb2.TopRequest.CGROUP: "cgroup",
    collector_pb2.TopRequest.CONTAINER: "container",
    collector_pb2.TopRequest.POD: "pod",
    collector_pb2.TopRequest.NAMESPACE: "namespace",
    collector_pb2.TopRequest.NODE: "node",
    collector_pb2.TopRequest.IMAGE: "image",
    collector_pb2.TopRequest.COMM: "comm",
    collector_pb2.TopRequest.WORKLOAD: "workload",
    collector_pb2.TopRequest.VERDICT: "verdict",
    collector_pb2.TopRequest.CLUSTER: "cluster",
}
MAX_TOP_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class TopRow:
    key: str
    kills: int
    last_killed_at_ns: int
    max_rss_bytes: int
