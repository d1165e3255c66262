"""Query logic the stores share: filters, page tokens, grouping keys, and the
columns an event is indexed by. Knows nothing of gRPC."""

from __future__ import annotations

import base64
import re
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
    cluster: str = ""


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
        cluster=ev.cluster,
    )


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
    collector_pb2.TopRequest.CLUSTER: "cluster",
}
MAX_TOP_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class TopRow:
    key: str
    kills: int
    last_killed_at_ns: int
    max_rss_bytes: int
