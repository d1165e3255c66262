"""The embedded SQLite store: the schema as SQLite writes it, and
`SqliteStore`, one implementation of the `Store` protocol (store.py) beside
PostgreSQL's (postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from oomtrace.collector.errors import StoreError
from oomtrace.collector.query import columns_of, workload_key
from oomtrace.collector.store import EVENT_COLUMNS, SqlReads, event_row, parse_event
from oomtrace.v1 import event_pb2

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
