"""Where the collector keeps records: the `Store` protocol the service is
written against, and the rules both stores share (the event row, its
columns, the SQL of a filter, the reads). SQLite (sqlite.py) and PostgreSQL
(postgres.py) implement it side by side; the service code does not change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from oomtrace.collector.errors import InvalidQueryError, NotFoundError
from oomtrace.collector.query import (
    Filter,
    PageToken,
    TopRow,
    columns_of,
    verdict_pattern,
)
from oomtrace.v1 import event_pb2


class Store(Protocol):
    path: str  # where it keeps its data, for logs

    @property
    def schema_version(self) -> int: ...

    def put_many(self, events: Sequence[event_pb2.OomEvent]) -> list[bool]:
        """Stores each event durably unless its id is already stored; True
        for each one stored now. Returns only once all are on disk."""
        ...

    def get(self, event_id: str) -> event_pb2.OomEvent:
        """Raises NotFoundError."""
        ...

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Stored ids that start with prefix, in order, at most limit."""
        ...

    def list_events(
        self, f: Filter, limit: int, after: PageToken | None
    ) -> tuple[list[event_pb2.OomEvent], PageToken | None]:
        """Newest first; the token continues after the last one returned."""
        ...

    def top(self, column: str, f: Filter, limit: int) -> list[TopRow]: ...

    def put_pressure(self, records: Sequence[event_pb2.PressureRecord]) -> list[bool]: ...

    def list_pressure(
        self, f: Filter, limit: int, after: PageToken | None
    ) -> tuple[list[event_pb2.PressureRecord], PageToken | None]: ...

    def prune(self, older_than_ns: int, batch: int = 1000) -> int:
        """Deletes records received before the time (by the collector's own
        clock: a node's clock may be off), a batch per transaction so ingest
        never waits long; returns how many."""
        ...

    def count(self) -> int: ...

    def size_bytes(self) -> int:
        """What the store takes on disk."""
        ...

    def follow(self, publish: Callable[[list[event_pb2.OomEvent]], None]) -> None:
        """Hands records that other collectors on the same store stored to
        publish (for watchers here), from a thread of its own; a store only
        one collector uses does nothing."""
        ...

    def close(self) -> None: ...


# What top groups by, as SQL over the columns.
TOP_KEYS = {
    "cgroup": "cgroup",
    "container": "container",
    "pod": "CASE WHEN pod = '' THEN '' ELSE namespace || '/' || pod END",
    "namespace": "namespace",
    "node": "node",
    "image": "image",
    "comm": "comm",
    "workload": "workload",
    "verdict": "verdict",
    "cluster": "cluster",
}


# The columns event_row() fills, in its order; both stores insert these.
EVENT_COLUMNS = (
    "id, killed_at_ns, node, namespace, pod, container, image, comm, oom_constraint, cgroup, "
    "rss_bytes, stored_at_ns, body, workload, verdict, verdict_codes, source, labels, owner, "
    "cluster"
)


def event_row(ev: event_pb2.OomEvent, stored_at_ns: int) -> tuple[object, ...]:
    """A record's EVENT_COLUMNS values."""
    c = columns_of(ev)
    return (
        c.id,
        c.killed_at_ns,
        c.node,
        c.namespace,
        c.pod,
        c.container,
        c.image,
        c.comm,
        c.constraint,
        c.cgroup,
        c.rss_bytes,
        stored_at_ns,
        ev.SerializeToString(),
        c.workload,
        c.verdict,
        c.verdict_codes,
        c.source,
        c.labels,
        c.owner,
        c.cluster,
    )


def where_sql(
    f: Filter,
    time_column: str = "killed_at_ns",
    with_event_columns: bool = True,
    mark: str = "?",
    contains: str = "instr({column}, {mark}) > 0",
) -> tuple[list[str], list[object]]:
    """SQL conditions and their arguments for a filter; `mark` is the
    driver's placeholder (SQLite's ?, psycopg's %s), `contains` its test of
    a substring (SQLite's instr, PostgreSQL's strpos: case-sensitive both,
    which LIKE is not in SQLite)."""
    conds: list[str] = []
    args: list[object] = []
    if f.since_ns is not None:
        conds.append(f"{time_column} >= {mark}")
        args.append(f.since_ns)
    if f.until_ns is not None:
        conds.append(f"{time_column} < {mark}")
        args.append(f.until_ns)
    columns = [
        ("node", f.node),
        ("namespace", f.namespace),
        ("pod", f.pod),
        ("container", f.container),
        ("image", f.image),
        ("cluster", f.cluster),
    ]
    if with_event_columns:
        columns.append(("comm", f.comm))
    for column, value in columns:
        if value:
            conds.append(f"{column} = {mark}")
            args.append(value)
    if f.constraint and with_event_columns:
        conds.append(f"oom_constraint = {mark}")
        args.append(f.constraint)
    if f.verdict and with_event_columns:
        conds.append(f"verdict_codes LIKE {mark} ESCAPE '!'")
        args.append(verdict_pattern(f.verdict))
    if f.cgroup_prefix:
        # A range, not a function of the column, so an index on cgroup serves
        # it: every path with the prefix sorts between the prefix and the
        # prefix followed by the highest character (byte order in both stores).
        conds.append(f"cgroup >= {mark} AND cgroup < {mark}")
        args += [f.cgroup_prefix, f.cgroup_prefix + "\U0010ffff"]
    if with_event_columns:
        if f.sources:
            conds.append(f"source IN ({', '.join([mark] * len(f.sources))})")
            args += list(f.sources)
        if f.workload:
            conds.append(f"owner = {mark}")
            args.append(f.workload)
        for r in f.labels:
            # The same test as query.Requirement.holds, over label_lines().
            found = " OR ".join(contains.format(column="labels", mark=mark) for _ in r.needles())
            conds.append(f"{'NOT ' if r.negated else ''}({found})")
            args += r.needles()
    return conds, args


class SqlReads:
    """The reads both stores share: SQL that SQLite and PostgreSQL both take,
    written with the driver's placeholder (MARK); each store says how a query
    runs (_rows)."""

    MARK = "?"
    CONTAINS = "instr({column}, {mark}) > 0"

    def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def get(self, event_id: str) -> event_pb2.OomEvent:
        m = self.MARK
        rows = self._rows(f"SELECT node, body FROM events WHERE id = {m} LIMIT 4", (event_id,))
        if not rows:
            raise NotFoundError(event_id)
        if len(rows) > 1:
            # Only a node that forged or reused another's id gets here.
            nodes = ", ".join(sorted(r[0] for r in rows))
            raise InvalidQueryError(
                f"id {event_id} is held by records of more than one node ({nodes}): "
                "ask with history --node NODE"
            )
        return parse_event(bytes(rows[0][1]))

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        # A range on the id index: every id with the prefix sorts between the
        # prefix and the prefix followed by the highest character.
        m = self.MARK
        rows = self._rows(
            f"SELECT DISTINCT id FROM events WHERE id >= {m} AND id < {m} ORDER BY id LIMIT {m}",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [r[0] for r in rows]

    def list_events(
        self, f: Filter, limit: int, after: PageToken | None
    ) -> tuple[list[event_pb2.OomEvent], PageToken | None]:
        conds, args = where_sql(f, mark=self.MARK, contains=self.CONTAINS)
        bodies, token = self._page("events", "killed_at_ns", conds, args, limit, after)
        return [parse_event(b) for b in bodies], token

    def _page(
        self,
        table: str,
        time_column: str,
        conds: list[str],
        args: list[object],
        limit: int,
        after: PageToken | None,
    ) -> tuple[list[bytes], PageToken | None]:
        """Bodies newest first, keyset-paged on (time, id): stable under
        inserts, and an index range scan whatever the page number."""
        m = self.MARK
        if after is not None:
            conds = [*conds, f"({time_column} < {m} OR ({time_column} = {m} AND id < {m}))"]
            args = [*args, after.killed_at_ns, after.killed_at_ns, after.id]
        where = " WHERE " + " AND ".join(conds) if conds else ""
        rows = self._rows(
            f"SELECT {time_column}, id, body FROM {table}{where} "
            f"ORDER BY {time_column} DESC, id DESC LIMIT {m}",
            [*args, limit + 1],
        )
        token = PageToken(rows[limit - 1][0], rows[limit - 1][1]) if len(rows) > limit else None
        return [bytes(r[2]) for r in rows[:limit]], token

    def top(self, column: str, f: Filter, limit: int) -> list[TopRow]:
        key = TOP_KEYS.get(column)
        if key is None:
            raise ValueError(f"cannot group by {column}")
        conds, args = where_sql(f, mark=self.MARK, contains=self.CONTAINS)
        where = " WHERE " + " AND ".join(conds) if conds else ""
        rows = self._rows(
            f"SELECT {key} AS k, count(*), max(killed_at_ns), max(rss_bytes) FROM events{where} "
            f"GROUP BY k ORDER BY count(*) DESC, max(killed_at_ns) DESC LIMIT {self.MARK}",
            [*args, limit],
        )
        return [TopRow(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def list_pressure(
        self, f: Filter, limit: int, after: PageToken | None
    ) -> tuple[list[event_pb2.PressureRecord], PageToken | None]:
        conds, args = where_sql(f, time_column="end_ns", with_event_columns=False, mark=self.MARK)
        bodies, token = self._page("pressure", "end_ns", conds, args, limit, after)
        out = []
        for body in bodies:
            rec = event_pb2.PressureRecord()
            rec.ParseFromString(body)
            out.append(rec)
        return out, token

    def count(self) -> int:
        return int(self._rows("SELECT count(*) FROM events", ())[0][0])


def parse_event(body: bytes) -> event_pb2.OomEvent:
    ev = event_pb2.OomEvent()
    ev.ParseFromString(body)
    return ev
