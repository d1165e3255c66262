"""Where the collector keeps records: the `Store` protocol the service is
written against, and its embedded SQLite implementation. A PostgreSQL store
implements the same protocol; the service code does not change."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from oomtrace.collector.errors import InvalidQueryError, NotFoundError, StoreError
from oomtrace.collector.query import (
    Filter,
    PageToken,
    TopRow,
    columns_of,
    verdict_pattern,
    workload_key,
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


# Each entry moves the schema one version up; PRAGMA user_version says where a
# file is. Never edit a released step: add one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        id TEXT NOT NULL UNIQUE,
        killed_at_ns INTEGER NOT NULL,
        node TEXT NOT NULL,
        namespace TEXT NOT NULL,
        pod TEXT NOT NULL,
        container TEXT NOT NULL,
        image TEXT NOT NULL,
        comm TEXT NOT NULL,
        oom_constraint INTEGER NOT NULL,
        cgroup TEXT NOT NULL,
        rss_bytes INTEGER NOT NULL,
        stored_at_ns INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX events_time ON events (killed_at_ns, id);
    CREATE INDEX events_node ON events (node, killed_at_ns);
    CREATE INDEX events_namespace ON events (namespace, killed_at_ns);
    CREATE INDEX events_pod ON events (pod, killed_at_ns);
    CREATE INDEX events_container ON events (container, killed_at_ns);
    CREATE INDEX events_image ON events (image, killed_at_ns);
    CREATE INDEX events_comm ON events (comm, killed_at_ns);
    """,
    """
    CREATE TABLE pressure (
        id TEXT NOT NULL UNIQUE,
        end_ns INTEGER NOT NULL,
        node TEXT NOT NULL,
        namespace TEXT NOT NULL,
        pod TEXT NOT NULL,
        container TEXT NOT NULL,
        image TEXT NOT NULL,
        cgroup TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX pressure_time ON pressure (end_ns, id);
    CREATE INDEX pressure_namespace ON pressure (namespace, end_ns);
    CREATE INDEX pressure_cgroup ON pressure (cgroup, end_ns);
    """,
    """
    ALTER TABLE events ADD COLUMN workload TEXT NOT NULL DEFAULT '';
    CREATE INDEX events_workload ON events (workload, killed_at_ns);
    """,
    # Retention goes by when the collector received a record.
    """
    CREATE INDEX events_stored ON events (stored_at_ns);
    """,
    # A record is one node's: unique by (node, id), so a node cannot claim an
    # id another node's agent will use and have that record dropped as a
    # duplicate (SECURITY.md). SQLite cannot drop a column's UNIQUE: the
    # tables are copied into ones without it, and their indexes made again.
    """
    CREATE TABLE events_by_node (
        id TEXT NOT NULL,
        killed_at_ns INTEGER NOT NULL,
        node TEXT NOT NULL,
        namespace TEXT NOT NULL,
        pod TEXT NOT NULL,
        container TEXT NOT NULL,
        image TEXT NOT NULL,
        comm TEXT NOT NULL,
        oom_constraint INTEGER NOT NULL,
        cgroup TEXT NOT NULL,
        rss_bytes INTEGER NOT NULL,
        stored_at_ns INTEGER NOT NULL,
        body BLOB NOT NULL,
        workload TEXT NOT NULL DEFAULT '',
        UNIQUE (node, id)
    );
    INSERT INTO events_by_node (id, killed_at_ns, node, namespace, pod, container, image, comm,
        oom_constraint, cgroup, rss_bytes, stored_at_ns, body, workload)
    SELECT id, killed_at_ns, node, namespace, pod, container, image, comm,
        oom_constraint, cgroup, rss_bytes, stored_at_ns, body, workload FROM events;
    DROP TABLE events;
    ALTER TABLE events_by_node RENAME TO events;
    CREATE INDEX events_id ON events (id);
    CREATE INDEX events_time ON events (killed_at_ns, id);
    CREATE INDEX events_node ON events (node, killed_at_ns);
    CREATE INDEX events_namespace ON events (namespace, killed_at_ns);
    CREATE INDEX events_pod ON events (pod, killed_at_ns);
    CREATE INDEX events_container ON events (container, killed_at_ns);
    CREATE INDEX events_image ON events (image, killed_at_ns);
    CREATE INDEX events_comm ON events (comm, killed_at_ns);
    CREATE INDEX events_workload ON events (workload, killed_at_ns);
    CREATE INDEX events_stored ON events (stored_at_ns);
    CREATE TABLE pressure_by_node (
        id TEXT NOT NULL,
        end_ns INTEGER NOT NULL,
        node TEXT NOT NULL,
        namespace TEXT NOT NULL,
        pod TEXT NOT NULL,
        container TEXT NOT NULL,
        image TEXT NOT NULL,
        cgroup TEXT NOT NULL,
        body BLOB NOT NULL,
        UNIQUE (node, id)
    );
    INSERT INTO pressure_by_node SELECT id, end_ns, node, namespace, pod, container, image,
        cgroup, body FROM pressure;
    DROP TABLE pressure;
    ALTER TABLE pressure_by_node RENAME TO pressure;
    CREATE INDEX pressure_time ON pressure (end_ns, id);
    CREATE INDEX pressure_namespace ON pressure (namespace, end_ns);
    CREATE INDEX pressure_cgroup ON pressure (cgroup, end_ns);
    """,
    # Verdicts: the headline code (top --by verdict) and every code (the
    # verdict filter), filled for stored records from their bodies.
    """
    ALTER TABLE events ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN verdict_codes TEXT NOT NULL DEFAULT '';
    CREATE INDEX events_verdict ON events (verdict, killed_at_ns);
    """,
    # The CLI's --source, -l/--selector and --workload (query.Columns).
    """
    ALTER TABLE events ADD COLUMN source INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN labels TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE INDEX events_owner ON events (owner, killed_at_ns);
    """,
    # One store, many clusters: each record says its cluster ("" before).
    """
    ALTER TABLE events ADD COLUMN cluster TEXT NOT NULL DEFAULT '';
    CREATE INDEX events_cluster ON events (cluster, killed_at_ns);
    ALTER TABLE pressure ADD COLUMN cluster TEXT NOT NULL DEFAULT '';
    CREATE INDEX pressure_cluster ON pressure (cluster, end_ns);
    """,
]
# Steps that fill what a schema step added, from the stored records, in the
# same transaction as the step (by its index in MIGRATIONS).
_BACKFILLS = {
    2: "_backfill_workload",
    5: "_backfill_verdicts",
    6: "_backfill_source_labels_owner",
}

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


class SqliteStore(SqlReads):
    """SQLite in WAL mode with synchronous=FULL: a commit is on disk when it
    returns. One writer connection (SQLite has one writer anyway), and a
    reader connection per thread, which WAL lets run beside the writer."""

    def __init__(self, path: Path | str, clock: Callable[[], int] = time.time_ns) -> None:
        """clock: wall-clock ns, for when a record was received (retention)."""
        self.path = str(path)
        self.clock = clock
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        try:
            self._writer = self._connect()
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._reader().execute(sql, args).fetchall()

    def _migrate(self) -> None:
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this collector "
                f"knows ({len(MIGRATIONS)}): upgrade oomtrace"
            )
        for step in range(version, len(MIGRATIONS)):
            # One transaction per step (SQLite's DDL is transactional): a
            # failed step leaves the file at the version before it.
            with self._write_lock:
                try:
                    self._writer.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[step]};")
                    if step in _BACKFILLS:
                        getattr(self, _BACKFILLS[step])()
                    self._writer.execute(f"PRAGMA user_version = {step + 1}")
                    self._writer.execute("COMMIT")
                except sqlite3.Error:
                    if self._writer.in_transaction:
                        self._writer.execute("ROLLBACK")
                    raise

    def _backfill_source_labels_owner(self) -> None:
        rows = self._writer.execute("SELECT rowid, body FROM events").fetchall()
        updates = []
        for rowid, body in rows:
            c = columns_of(parse_event(body))
            updates.append((c.source, c.labels, c.owner, rowid))
        self._writer.executemany(
            "UPDATE events SET source = ?, labels = ?, owner = ? WHERE rowid = ?", updates
        )

    def _backfill_workload(self) -> None:
        rows = self._writer.execute("SELECT id, body FROM events WHERE pod != ''").fetchall()
        updates = [(workload_key(parse_event(body)), ident) for ident, body in rows]
        self._writer.executemany("UPDATE events SET workload = ? WHERE id = ?", updates)

    def _backfill_verdicts(self) -> None:
        rows = self._writer.execute("SELECT rowid, body FROM events").fetchall()
        updates = []
        for rowid, body in rows:
            c = columns_of(parse_event(body))
            if c.verdict:
                updates.append((c.verdict, c.verdict_codes, rowid))
        self._writer.executemany(
            "UPDATE events SET verdict = ?, verdict_codes = ? WHERE rowid = ?", updates
        )

    @property
    def schema_version(self) -> int:
        return int(self._writer.execute("PRAGMA user_version").fetchone()[0])

    def put_many(self, events: Sequence[event_pb2.OomEvent]) -> list[bool]:
        now = self.clock()
        rows = [event_row(ev, now) for ev in events]
        try:
            present, keys = self._insert_events(rows)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc
        stored: list[bool] = []
        for key in keys:
            # A duplicate inside one batch is stored once: the first one counts.
            stored.append(key not in present)
            present.add(key)
        return stored

    def _insert_events(
        self, rows: Sequence[tuple[object, ...]]
    ) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                # Which ids are here already: one query for the batch, then one
                # executemany, instead of a statement and a rowcount per record.
                # A record is its node's: (node, id) is the key.
                present: set[tuple[str, str]] = set()
                keys = [(str(r[2]), str(r[0])) for r in rows]
                ids = [k[1] for k in keys]
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    present.update(
                        (r[0], r[1])
                        for r in cur.execute(
                            f"SELECT node, id FROM events WHERE id IN ({marks})", chunk
                        )
                    )
                cur.executemany(
                    f"INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) "
                    f"VALUES ({', '.join('?' * EVENT_COLUMNS.count(','))}, ?)",
                    rows,
                )
                cur.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        return present, keys

    def prune(self, older_than_ns: int, batch: int = 1000) -> int:
        removed = 0
        for table, column in (("events", "stored_at_ns"), ("pressure", "end_ns")):
            while True:
                with self._write_lock:
                    cur = self._writer.execute(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                        f"WHERE {column} < ? LIMIT ?)",
                        (older_than_ns, batch),
                    )
                n = cur.rowcount
                if table == "events":
                    removed += n
                if n < batch:
                    break
        return removed

    def put_pressure(self, records: Sequence[event_pb2.PressureRecord]) -> list[bool]:
        try:
            return self._insert_pressure(records)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    def _insert_pressure(self, records: Sequence[event_pb2.PressureRecord]) -> list[bool]:
        stored: list[bool] = []
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    cur.execute(
                        "INSERT OR IGNORE INTO pressure (id, end_ns, node, namespace, pod, container, "
                        "image, cgroup, body, cluster) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            r.id,
                            r.end.ToNanoseconds(),
                            r.node,
                            r.pod.namespace,
                            r.pod.name,
                            r.container.name,
                            r.container.image,
                            r.cgroup,
                            r.SerializeToString(),
                            r.cluster,
                        ),
                    )
                    stored.append(cur.rowcount == 1)
                cur.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        return stored

    def size_bytes(self) -> int:
        size = 0
        for suffix in ("", "-wal", "-shm"):  # the file and its write-ahead log
            path = Path(self.path + suffix)
            if path.exists():
                size += path.stat().st_size
        return size

    def follow(self, publish: Callable[[list[event_pb2.OomEvent]], None]) -> None:
        pass  # one collector per SQLite file

    def close(self) -> None:
        self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def parse_event(body: bytes) -> event_pb2.OomEvent:
    ev = event_pb2.OomEvent()
    ev.ParseFromString(body)
    return ev
