"""The collector's store on PostgreSQL, for several collectors on one
database: the same `Store` protocol (collector/store.py) as SQLite (collector/sqlite.py).

  - Each record as JSONB (`record`, for SQL and Grafana; without the Go
    heap profiles' pprof files) and as the exact protobuf (`body`, what is
    served), with a typed, indexed column for
    every filter; the key is (node, id), so the database, not a replica's
    memory, decides what is a duplicate: a record sent to two collectors at
    once is stored once.
  - Migrations are numbered steps in `oomtrace_schema`, run on start under
    an advisory lock (replicas starting together run each step once); a
    database at a newer step than this collector knows is refused.
  - Each stored record is announced with NOTIFY (in the same transaction,
    so only committed records are): every collector LISTENs and hands what
    others stored to its own watchers.
  - Retention deletes in batches, each its own short transaction.

Connections come from psycopg-pool; the password from the URL is refused
(it would sit in the command line): give it with --store-password-file or
libpq's own $PGPASSWORD / ~/.pgpass."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from oomtrace import records
from oomtrace.collector.errors import StoreError
from oomtrace.collector.store import EVENT_COLUMNS, SqlReads, event_row, parse_event
from oomtrace.records import to_json
from oomtrace.v1 import event_pb2

log = structlog.get_logger(__name__)

CHANNEL = "oomtrace_records"
# pg_advisory_lock key for migrations: any number no other program uses.
_MIGRATION_LOCK = 0x6F6F6D74

MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        node text NOT NULL,
        id text COLLATE "C" NOT NULL,
        killed_at_ns bigint NOT NULL,
        namespace text NOT NULL,
        pod text NOT NULL,
        container text NOT NULL,
        image text NOT NULL,
        comm text NOT NULL,
        oom_constraint integer NOT NULL,
        cgroup text COLLATE "C" NOT NULL,
        rss_bytes bigint NOT NULL,
        workload text NOT NULL,
        incident_id text NOT NULL,
        stored_at_ns bigint NOT NULL,
        body bytea NOT NULL,
        record jsonb NOT NULL,
        PRIMARY KEY (node, id)
    );
    CREATE INDEX events_id ON events (id);
    CREATE INDEX events_time ON events (killed_at_ns, id);
    CREATE INDEX events_node ON events (node, killed_at_ns);
    CREATE INDEX events_namespace ON events (namespace, killed_at_ns);
    CREATE INDEX events_pod ON events (pod, killed_at_ns);
    CREATE INDEX events_container ON events (container, killed_at_ns);
    CREATE INDEX events_image ON events (image, killed_at_ns);
    CREATE INDEX events_comm ON events (comm, killed_at_ns);
    CREATE INDEX events_constraint ON events (oom_constraint, killed_at_ns);
    CREATE INDEX events_cgroup ON events (cgroup, killed_at_ns);
    CREATE INDEX events_workload ON events (workload, killed_at_ns);
    CREATE INDEX events_incident ON events (incident_id) WHERE incident_id <> '';
    CREATE INDEX events_stored ON events (stored_at_ns);
    CREATE TABLE pressure (
        node text NOT NULL,
        id text COLLATE "C" NOT NULL,
        end_ns bigint NOT NULL,
        namespace text NOT NULL,
        pod text NOT NULL,
        container text NOT NULL,
        image text NOT NULL,
        cgroup text COLLATE "C" NOT NULL,
        body bytea NOT NULL,
        record jsonb NOT NULL,
        PRIMARY KEY (node, id)
    );
    CREATE INDEX pressure_time ON pressure (end_ns, id);
    CREATE INDEX pressure_namespace ON pressure (namespace, end_ns);
    CREATE INDEX pressure_cgroup ON pressure (cgroup, end_ns);
    """,
    # Verdicts: the headline code (top --by verdict) and every code (the
    # verdict filter), filled for stored records from their jsonb.
    """
    ALTER TABLE events ADD COLUMN verdict text NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN verdict_codes text NOT NULL DEFAULT '';
    UPDATE events SET verdict = coalesce(record->'verdicts'->0->>'code', ''),
        verdict_codes = coalesce((SELECT ',' || string_agg(v->>'code', ',') || ','
            FROM jsonb_array_elements(record->'verdicts') AS v
            WHERE v->>'code' ~ '^[A-Z0-9_]{1,64}$'), '');
    CREATE INDEX events_verdict ON events (verdict, killed_at_ns);
    """,
    # The CLI's --source, -l/--selector and --workload (query.Columns), filled
    # from each stored record as query.columns_of fills them.
    r"""
    ALTER TABLE events ADD COLUMN source integer NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN labels text COLLATE "C" NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN owner text NOT NULL DEFAULT '';
    UPDATE events SET
        source = CASE record->>'source' WHEN 'KMSG' THEN 1 WHEN 'COUNTER' THEN 2
            WHEN 'USERSPACE' THEN 3 WHEN 'RUNTIME' THEN 4 ELSE 0 END,
        owner = CASE WHEN workload = '' THEN '' ELSE substr(workload, strpos(workload, '/') + 1) END,
        labels = coalesce((SELECT E'\n' || string_agg(replace(key || '=' || value, E'\n', ' '),
            E'\n' ORDER BY replace(key || '=' || value, E'\n', ' ') COLLATE "C") || E'\n'
            FROM jsonb_each_text(record->'container'->'labels')), '');
    CREATE INDEX events_owner ON events (owner, killed_at_ns);
    """,
    # One store, many clusters: each record says its cluster ("" before).
    """
    ALTER TABLE events ADD COLUMN cluster text NOT NULL DEFAULT '';
    CREATE INDEX events_cluster ON events (cluster, killed_at_ns);
    ALTER TABLE pressure ADD COLUMN cluster text NOT NULL DEFAULT '';
    CREATE INDEX pressure_cluster ON pressure (cluster, end_ns);
    """,
]


def _jsonb(msg: Any) -> str:
    # JSONB refuses the NUL character, which a process name may hold.
    return to_json(msg).replace("\\u0000", "\\ufffd")


def _stored_flags(
    rows: Sequence[tuple[object, ...]], stored: set[tuple[str, str]], node_at: int, id_at: int
) -> list[bool]:
    """True for each row the database stored now; a duplicate inside one
    batch counts once."""
    out = []
    for row in rows:
        key = (str(row[node_at]), str(row[id_at]))
        out.append(key in stored)
        stored.discard(key)
    return out


class PostgresStore(SqlReads):
    MARK = "%s"
    CONTAINS = "strpos({column}, {mark}) > 0"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        clock: Callable[[], int] = time.time_ns,
        max_connections: int = 8,
    ) -> None:
        params = conninfo_to_dict(url)
        if params.get("password"):
            raise StoreError(
                "the store URL holds a password, which would show in the command line: "
                "give it with --store-password-file or $PGPASSWORD"
            )
        if password is not None:
            params["password"] = password
        self._params = params
        host = params.get("host", "")
        self.path = f"postgresql://{params.get('user', '')}@{host}/{params.get('dbname', '')}"
        self.clock = clock
        self.replica = uuid.uuid4().hex[:12]  # tells our own NOTIFYs from others'
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        try:
            self._pool = ConnectionPool(
                kwargs={**params, "autocommit": True},
                min_size=1,
                max_size=max_connections,
                open=True,
                # Shorter than an agent's call deadline: a database that is
                # gone is said (health NOT_SERVING) before the agent gives up.
                timeout=5,
                name="oomtrace",
                # A connection the database dropped (a restart) is found on
                # checkout and replaced, not handed to a query.
                check=ConnectionPool.check_connection,
            )
            self._pool.wait(timeout=10)
            self._migrate()
        except (psycopg.Error, Exception) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot use {self.path}: {exc}") from exc

    # -- schema ------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS oomtrace_schema (version integer NOT NULL)"
                )
                row = conn.execute("SELECT max(version) FROM oomtrace_schema").fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                if version > len(MIGRATIONS):
                    raise StoreError(
                        f"{self.path} has schema version {version}, newer than this collector "
                        f"knows ({len(MIGRATIONS)}): upgrade oomtrace"
                    )
                for step in range(version, len(MIGRATIONS)):
                    with conn.transaction():
                        conn.execute(MIGRATIONS[step])
                        conn.execute("INSERT INTO oomtrace_schema VALUES (%s)", (step + 1,))
                    log.info("store.migrated", store=self.path, version=step + 1)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))

    @property
    def schema_version(self) -> int:
        row = self._query("SELECT max(version) FROM oomtrace_schema")[0]
        return int(row[0])

    # -- helpers -------------------------------------------------------------------------

    def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._query(sql, args)

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, args).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    # -- records -------------------------------------------------------------------------

    def put_many(self, events: Sequence[event_pb2.OomEvent]) -> list[bool]:
        now = self.clock()
        # The JSONB leaves out the pprof files (base64 in JSON, a third more
        # than their bytes, and no use to SQL): `body` keeps the whole record.
        rows = [
            (*event_row(ev, now), ev.incident_id, _jsonb(records.without_profile_files(ev)))
            for ev in events
        ]
        stored = self._insert(
            f"INSERT INTO events ({EVENT_COLUMNS}, incident_id, record) "
            f"VALUES ({'%s, ' * (EVENT_COLUMNS.count(',') + 2)}%s::jsonb) "
            "ON CONFLICT (node, id) DO NOTHING RETURNING node, id",
            rows,
            "events",
        )
        return _stored_flags(rows, stored, node_at=2, id_at=0)

    def _insert(
        self, sql: str, rows: Sequence[tuple[object, ...]], kind: str
    ) -> set[tuple[str, str]]:
        """Inserts in one transaction, announcing what was new to every
        collector (NOTIFY is delivered at commit); the (node, id) stored."""
        stored: set[tuple[str, str]] = set()
        if not rows:
            return stored
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows, returning=True)
                while True:
                    for node, ident in cur.fetchall():
                        stored.add((node, ident))
                    if not cur.nextset():
                        break
                if stored:
                    payload = [[kind, node, ident] for node, ident in stored]
                    for i in range(0, len(payload), 100):  # a NOTIFY payload is < 8000 bytes
                        cur.execute(
                            "SELECT pg_notify(%s, %s)",
                            (CHANNEL, json.dumps([self.replica, payload[i : i + 100]])),
                        )
        except psycopg.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc
        return stored

    def prune(self, older_than_ns: int, batch: int = 1000) -> int:
        removed = 0
        for table, column in (("events", "stored_at_ns"), ("pressure", "end_ns")):
            while True:
                try:
                    with self._pool.connection() as conn:
                        n = conn.execute(
                            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "
                            f"WHERE {column} < %s LIMIT %s)",
                            (older_than_ns, batch),
                        ).rowcount
                except psycopg.Error as exc:
                    raise StoreError(f"cannot prune {self.path}: {exc}") from exc
                if table == "events":
                    removed += n
                if n < batch:
                    break
        return removed

    def put_pressure(self, records: Sequence[event_pb2.PressureRecord]) -> list[bool]:
        rows: list[tuple[object, ...]] = [
            (
                r.node,
                r.id,
                r.end.ToNanoseconds(),
                r.pod.namespace,
                r.pod.name,
                r.container.name,
                r.container.image,
                r.cgroup,
                r.SerializeToString(),
                _jsonb(r),
                r.cluster,
            )
            for r in records
        ]
        stored = self._insert(
            "INSERT INTO pressure (node, id, end_ns, namespace, pod, container, image, cgroup, "
            "body, record, cluster) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s) "
            "ON CONFLICT (node, id) DO NOTHING RETURNING node, id",
            rows,
            "pressure",
        )
        return _stored_flags(rows, stored, node_at=0, id_at=1)

    def size_bytes(self) -> int:
        row = self._query(
            "SELECT pg_total_relation_size('events') + pg_total_relation_size('pressure')"
        )[0]
        return int(row[0])

    # -- other collectors' records --------------------------------------------------------

    def follow(self, publish: Callable[[list[event_pb2.OomEvent]], None]) -> None:
        """LISTENs on its own connection (reconnecting when the database
        restarts) and publishes the records other collectors stored."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    with psycopg.connect(**self._params, autocommit=True) as conn:  # type: ignore[arg-type]
                        conn.execute(f"LISTEN {CHANNEL}")
                        while not self._stop.is_set():
                            for note in conn.notifies(timeout=1.0):
                                self._on_notify(note.payload, publish)
                except psycopg.Error as exc:
                    log.warning("store.listen_reconnecting", store=self.path, error=str(exc))
                    self._stop.wait(1.0)

        self._listener = threading.Thread(target=run, daemon=True, name="pg-listen")
        self._listener.start()

    def _on_notify(self, payload: str, publish: Callable[[list[event_pb2.OomEvent]], None]) -> None:
        try:
            replica, items = json.loads(payload)
        except (ValueError, TypeError):
            return
        if replica == self.replica:
            return  # ours: the service published them already
        keys = [(node, ident) for kind, node, ident in items if kind == "events"]
        if not keys:
            return
        rows = self._query(
            "SELECT body FROM events WHERE (node, id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        publish([parse_event(bytes(r[0])) for r in rows])

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(3)
        self._pool.close()
