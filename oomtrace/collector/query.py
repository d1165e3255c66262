"""Query logic the stores share: filters, page tokens, grouping keys, and the
columns an event is indexed by. Knows nothing of gRPC."""

from __future__ import annotations

import base64
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
    )


def workload_key(ev: event_pb2.OomEvent) -> str:
    """What `top --by workload` groups by: namespace/Kind/name."""
    workload = records.pod_workload(ev)
    return f"{ev.pod.namespace}/{workload}" if workload else ""


def validate(ev: event_pb2.OomEvent) -> str:
    """Why a record can never be stored, or "" when it can."""
    if not ev.id:
        return "record has no id"
    if len(ev.id) > 128:
        return "record id is longer than 128 characters"
    if not ev.HasField("killed_at"):
        return "record has no killed_at"
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
            raw = base64.urlsafe_b64decode(token.encode()).decode()
            ns, _, ident = raw.partition(":")
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
}
MAX_TOP_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class TopRow:
    key: str
    kills: int
    last_killed_at_ns: int
    max_rss_bytes: int
