"""The stores, each test on every backend (SQLite, and a real PostgreSQL
server the tests start: tests/postgres_server.py) unless it is about one:
durable dedup, filters, pages, top, retention, schema."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomtrace.collector.errors import InvalidQueryError, NotFoundError, StoreError
from oomtrace.collector.query import Filter, PageToken, columns_of
from oomtrace.collector.sqlite import MIGRATIONS, SqliteStore
from oomtrace.collector.store import Store
from oomtrace.v1 import collector_pb2, event_pb2
from tests.unit.events import BASE_NS, make_event

MakeStore = Callable[..., Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """A new, empty store of the backend (clock: the receive time)."""
    made: list[Store] = []

    def make(clock: Callable[[], int] = time.time_ns) -> Store:
        if request.param == "sqlite":
            s: Store = SqliteStore(tmp_path / f"c{len(made)}.db", clock=clock)
        else:
            from oomtrace.collector.postgres import PostgresStore

            server = request.getfixturevalue("postgres")
            s = PostgresStore(server.database(), clock=clock)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


def test_a_record_is_stored_once_whatever_how_often_it_is_sent(store: Store) -> None:
    ev = make_event()
    assert store.put_many([ev, ev]) == [True, False]
    assert store.put_many([ev]) == [False]
    assert store.count() == 1
    assert store.get(ev.id) == ev


def test_records_survive_reopening(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    ev = make_event()
    s.put_many([ev])
    s.close()
    again = SqliteStore(tmp_path / "c.db")
    assert again.get(ev.id) == ev
    assert again.schema_version == len(MIGRATIONS)


def test_unknown_id_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no record with id 'x'"):
        store.get("x")


def test_filters_select_on_every_column(store: Store) -> None:
    a = make_event(
        namespace="shop", pod="cart-1", container="cart", image="cart:1", node="n1", comm="java"
    )
    b = make_event(namespace="shop", pod="web-1", container="web", image="web:2", node="n2")
    c = make_event(namespace="infra", cgroup="/system.slice/x.service")
    store.put_many([a, b, c])

    def ids(**kw: object) -> list[str]:
        return [e.id for e in store.list_events(Filter(**kw), 100, None)[0]]  # type: ignore[arg-type]

    assert ids(namespace="shop") == [b.id, a.id]  # newest first
    assert ids(pod="cart-1") == [a.id]
    assert ids(container="web") == [b.id]
    assert ids(image="cart:1") == [a.id]
    assert ids(node="n2") == [b.id]
    assert ids(comm="java") == [a.id]
    assert ids(cgroup_prefix="/system.slice") == [c.id]
    assert ids(constraint=event_pb2.OomEvent.GLOBAL) == []
    t_b = b.killed_at.ToNanoseconds()
    assert ids(since_ns=t_b) == [c.id, b.id]
    assert ids(until_ns=t_b) == [a.id]


def test_pages_walk_every_record_once_even_with_equal_times(store: Store) -> None:
    same = BASE_NS - 10**9
    evs = [make_event(killed_at_ns=same if i % 3 == 0 else None) for i in range(25)]
    store.put_many(evs)
    seen: list[str] = []
    token: PageToken | None = None
    while True:
        page, token = store.list_events(Filter(), 7, token)
        seen += [e.id for e in page]
        if token is None:
            break
        assert PageToken.decode(token.encode()) == token
    assert sorted(seen) == sorted(e.id for e in evs)
    assert len(seen) == len(set(seen))


def test_top_counts_by_group(store: Store) -> None:
    store.put_many(
        [make_event(container="cart", rss_mib=r) for r in (10, 70)] + [make_event(container="web")]
    )
    rows = store.top("container", Filter(), 10)
    assert [(r.key, r.kills) for r in rows] == [("cart", 2), ("web", 1)]
    assert rows[0].max_rss_bytes == (70 << 20) + (5 << 20)
    with pytest.raises(ValueError, match="cannot group by"):
        store.top("body; DROP TABLE events", Filter(), 1)


def test_retention_goes_by_when_the_collector_received_a_record(make_store: MakeStore) -> None:
    """A node whose clock is a year off sends a record "killed" a year ago: it
    is kept as long as any record received then, not pruned on arrival."""
    now = [BASE_NS]
    store = make_store(clock=lambda: now[0])
    early = make_event()
    store.put_many([early])
    now[0] += 10 * 86400 * 10**9
    skewed = make_event(killed_at_ns=BASE_NS - 365 * 86400 * 10**9)
    store.put_many([skewed])
    assert store.prune(BASE_NS + 86400 * 10**9) == 1  # received more than a day ago
    assert [e.id for e in store.list_events(Filter(), 10, None)[0]] == [skewed.id]


def test_retention_prunes_in_small_batches(make_store: MakeStore) -> None:
    store = make_store(clock=lambda: BASE_NS)
    store.put_many([make_event() for _ in range(25)])
    assert store.prune(BASE_NS + 1, batch=4) == 25
    assert store.count() == 0


def test_a_store_that_cannot_write_says_so_as_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    store._writer.execute("PRAGMA query_only = ON")  # as a read-only disk would
    with pytest.raises(StoreError, match="cannot write"):
        store.put_many([make_event()])
    store._writer.execute("PRAGMA query_only = OFF")
    assert store.put_many([make_event()]) == [True]


def test_a_newer_schema_is_refused_not_damaged(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this collector knows"):
        SqliteStore(db)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        SqliteStore(db)


def test_pressure_records_are_stored_once_and_listed_by_cgroup(store: Store) -> None:
    def rec(i: int, cgroup: str) -> event_pb2.PressureRecord:
        r = event_pb2.PressureRecord(id=f"p{i}", node="n1", cgroup=cgroup, reasons=["reclaim"])
        r.end.FromNanoseconds(BASE_NS + i * 10**10)
        return r

    a, b, c = rec(1, "/team/a"), rec(2, "/team/b"), rec(3, "/other")
    assert store.put_pressure([a, b, c, a]) == [True, True, True, False]
    got, token = store.list_pressure(Filter(cgroup_prefix="/team"), 1, None)
    assert [r.id for r in got] == ["p2"]
    assert token is not None
    got, token = store.list_pressure(Filter(cgroup_prefix="/team"), 1, token)
    assert [r.id for r in got] == ["p1"]
    assert store.prune(BASE_NS + 25 * 10**9) == 0  # no kills; pressure pruned beside them
    assert [r.id for r in store.list_pressure(Filter(), 10, None)[0]] == ["p3"]


def test_upgrading_fills_the_workload_of_records_stored_before_it(tmp_path: Path) -> None:
    """A file at schema 2 (no workload column) with a record in it: opened by
    this collector, it is migrated and the old record groups by workload."""
    db = tmp_path / "c.db"
    ev = make_event(namespace="shop", pod="cart-7d9f8b6c5-x2x4q")
    ev.source = event_pb2.OomEvent.KMSG
    ev.container.labels["tier"] = "web"
    conn = sqlite3.connect(db, isolation_level=None)
    for step in MIGRATIONS[:2]:
        conn.executescript(step)
    conn.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, '', '', 'x', 4, '/', 1, 0, ?)",
        (ev.id, ev.killed_at.ToNanoseconds(), ev.node, "shop", ev.pod.name, ev.SerializeToString()),
    )
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    store = SqliteStore(db)
    assert store.schema_version == len(MIGRATIONS)
    (row,) = store.top("workload", Filter(), 10)
    assert (row.key, row.kills) == ("shop/Deployment/cart", 1)
    assert store.get(ev.id) == ev
    # ... and is found by the filters added since (--source, -l, --workload).
    from oomtrace.collector.query import Requirement

    f = Filter(
        sources=(event_pb2.OomEvent.KMSG,),
        labels=(Requirement("tier", collector_pb2.LabelRequirement.IN, ("web",)),),
        workload="Deployment/cart",
    )
    assert [e.id for e in store.list_events(f, 10, None)[0]] == [ev.id]


def test_an_id_is_its_nodes_own(store: Store) -> None:
    """A node storing a record under an id another node will use first does
    not make the real record a duplicate: (node, id) is the key. A resend
    from the same node still is one."""
    forged = make_event(node="node-b", event_id="0123456789abcdef0123456789abcdef")
    real = make_event(node="node-a", event_id=forged.id)
    assert store.put_many([forged]) == [True]
    assert store.put_many([real]) == [True]
    assert store.put_many([real]) == [False]
    assert store.count() == 2
    with pytest.raises(InvalidQueryError, match="node-a, node-b"):
        store.get(real.id)
    assert store.ids_with_prefix(real.id[:12], 5) == [real.id]
    (mine,) = store.list_events(Filter(node="node-a"), 10, None)[0]
    assert mine == real


def test_postgresql_refuses_a_newer_schema_and_a_password_in_the_url(postgres: object) -> None:
    from oomtrace.collector.postgres import PostgresStore

    url = postgres.database()  # type: ignore[attr-defined]
    PostgresStore(url).close()
    postgres.sql("INSERT INTO oomtrace_schema VALUES (99)", dbname=url.rsplit("/", 1)[1])  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="schema version 99, newer"):
        PostgresStore(url)
    with pytest.raises(StoreError, match="password"):
        PostgresStore(url.replace("oomtrace@", "oomtrace:secret@"))


def _with_verdicts(*codes: str) -> event_pb2.OomEvent:
    ev = make_event()
    for code in codes:
        ev.verdicts.add(code=code)
    return ev


def test_kills_are_found_by_any_verdict_and_counted_by_their_first(store: Store) -> None:
    evs = [
        _with_verdicts("TMPFS_MEMORY", "ANON_GROWTH"),
        _with_verdicts("TMPFS_MEMORY"),
        _with_verdicts("ANON_GROWTH"),
        _with_verdicts(),
    ]
    store.put_many(evs)
    got, _ = store.list_events(Filter(verdict="ANON_GROWTH"), 10, None)
    assert sorted(e.id for e in got) == sorted(e.id for e in (evs[0], evs[2]))
    # One code whole: "_" is not a wildcard, and a part of a code is not it.
    assert store.list_events(Filter(verdict="ANONXGROWTH"), 10, None)[0] == []
    assert store.list_events(Filter(verdict="ANON"), 10, None)[0] == []
    rows = store.top("verdict", Filter(), 10)
    assert (rows[0].key, rows[0].kills) == ("TMPFS_MEMORY", 2)
    assert sorted((r.key, r.kills) for r in rows[1:]) == [("", 1), ("ANON_GROWTH", 1)]
    # The filter in flight (watch) says the same as the SQL.
    assert [Filter(verdict="ANON_GROWTH").matches(columns_of(e)) for e in evs] == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(InvalidQueryError, match="not a verdict code"):
        store.list_events(Filter(verdict="%' OR 1=1 --"), 10, None)


def test_upgrading_fills_the_verdicts_of_records_stored_before_it(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    ev = _with_verdicts("KERNEL_MEMORY", "ANON_GROWTH")
    step = next(i for i, m in enumerate(MIGRATIONS) if "verdict_codes" in m)
    first = SqliteStore(db)
    first.close()
    conn = sqlite3.connect(db, isolation_level=None)
    # Back to the schema before the verdict columns (and the steps after
    # them), with a record stored then.
    conn.executescript(
        "DROP INDEX events_verdict; ALTER TABLE events DROP COLUMN verdict; "
        "ALTER TABLE events DROP COLUMN verdict_codes;"
    )
    for later in MIGRATIONS[step + 1 :]:
        for index in re.findall(r"CREATE INDEX (\w+) ON ", later):
            conn.execute(f"DROP INDEX {index}")
        for table, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", later):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute(f"PRAGMA user_version = {step}")
    conn.execute(
        "INSERT INTO events (id, killed_at_ns, node, namespace, pod, container, image, comm, "
        "oom_constraint, cgroup, rss_bytes, stored_at_ns, body, workload) "
        "VALUES (?, ?, ?, '', '', '', '', 'x', 4, '/', 1, 0, ?, '')",
        (ev.id, ev.killed_at.ToNanoseconds(), ev.node, ev.SerializeToString()),
    )
    conn.close()
    store = SqliteStore(db)
    assert store.schema_version == len(MIGRATIONS)
    (row,) = store.top("verdict", Filter(), 10)
    assert (row.key, row.kills) == ("KERNEL_MEMORY", 1)
    assert [e.id for e in store.list_events(Filter(verdict="ANON_GROWTH"), 10, None)[0]] == [ev.id]


def _labelled_events() -> list[event_pb2.OomEvent]:
    """Records of each source, with and without labels and owners; one with
    a hostile label that tries to forge another by a line break."""
    E = event_pb2.OomEvent
    out = []
    for i, (source, labels, pod) in enumerate(
        [
            (E.LIVE, {"app.kubernetes.io/name": "cart", "tier": "web"}, "cart-7d9f8b6c5-x2x4q"),
            (E.KMSG, {"app.kubernetes.io/name": "db"}, "db-0"),
            (E.COUNTER, {}, ""),
            (
                E.USERSPACE,
                {"app.kubernetes.io/name": "cart", "tier": "worker"},
                "cart-7d9f8b6c5-abcde",
            ),
            (E.LIVE, {"evil": "x\ntier=web"}, "evil-0"),
        ]
    ):
        ev = make_event(namespace="shop" if pod else "", pod=pod, comm=f"c{i}")
        ev.source = source
        ev.container.labels.update(labels)
        if source == E.USERSPACE:
            ev.constraint = E.UNKNOWN
        out.append(ev)
    return out


def _requirement(key: str, op: int, *values: str) -> collector_pb2.LabelRequirement:
    return collector_pb2.LabelRequirement(key=key, operator=op, values=list(values))  # type: ignore[arg-type]


def test_source_label_and_workload_filters_match_in_the_store_as_in_a_watch(
    store: Store,
) -> None:
    """Each filter of --source, -l and --workload: what the store's SQL
    returns is what the watch's in-memory test (Filter.matches) lets
    through, on both stores, and what a person means by it."""
    from oomtrace.collector.query import Filter, columns_of

    events = _labelled_events()
    store.put_many(events)
    E, R = event_pb2.OomEvent, collector_pb2.LabelRequirement
    cases: list[tuple[collector_pb2.EventFilter, list[int]]] = [
        (collector_pb2.EventFilter(sources=[E.KMSG, E.COUNTER]), [1, 2]),
        (collector_pb2.EventFilter(sources=[E.USERSPACE]), [3]),
        (collector_pb2.EventFilter(workload="StatefulSet/db"), [1]),
        (collector_pb2.EventFilter(labels=[_requirement("tier", R.IN, "web")]), [0]),
        (collector_pb2.EventFilter(labels=[_requirement("tier", R.NOT_IN, "web")]), [1, 2, 3, 4]),
        (collector_pb2.EventFilter(labels=[_requirement("tier", R.EXISTS)]), [0, 3]),
        (collector_pb2.EventFilter(labels=[_requirement("tier", R.DOES_NOT_EXIST)]), [1, 2, 4]),
        (
            collector_pb2.EventFilter(
                labels=[
                    _requirement("app.kubernetes.io/name", R.IN, "cart", "db"),
                    _requirement("tier", R.NOT_IN, "worker"),
                ]
            ),
            [0, 1],
        ),
        (
            collector_pb2.EventFilter(
                labels=[_requirement("app.kubernetes.io/name", R.IN, "Cart")]
            ),
            [],
        ),
    ]
    for proto, want in cases:
        f = Filter.from_proto(proto)
        stored = {ev.id for ev in store.list_events(f, 100, None)[0]}
        in_flight = {ev.id for ev in events if f.matches(columns_of(ev))}
        assert stored == in_flight == {events[i].id for i in want}, proto
    rows = store.top("workload", Filter.from_proto(collector_pb2.EventFilter(sources=[E.LIVE])), 10)
    assert {r.key for r in rows} == {"shop/Deployment/cart", "shop/StatefulSet/evil"}


def test_a_label_requirement_without_its_operator_is_refused() -> None:
    from oomtrace.collector.errors import InvalidQueryError
    from oomtrace.collector.query import Filter

    for bad in (
        collector_pb2.LabelRequirement(key="a"),
        collector_pb2.LabelRequirement(key="a", operator=collector_pb2.LabelRequirement.IN),
        collector_pb2.LabelRequirement(
            key="a", operator=collector_pb2.LabelRequirement.EXISTS, values=["x"]
        ),
    ):
        with pytest.raises(InvalidQueryError):
            Filter.from_proto(collector_pb2.EventFilter(labels=[bad]))


def test_postgresql_upgrading_fills_source_labels_and_owner(postgres: object) -> None:
    """A PostgreSQL store at the schema before --source, -l and --workload,
    with a record in it: opened by this collector, the migration fills the
    new columns from the stored record as columns_of() fills them."""
    import psycopg

    from oomtrace.collector import postgres as pg
    from oomtrace.collector.query import Requirement, columns_of
    from oomtrace.records import to_json

    url = postgres.database()  # type: ignore[attr-defined]
    ev = make_event(namespace="shop", pod="cart-7d9f8b6c5-x2x4q")
    ev.source = event_pb2.OomEvent.COUNTER
    ev.container.labels.update({"tier": "web", "app.kubernetes.io/name": "cart"})
    c = columns_of(ev)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE oomtrace_schema (version integer NOT NULL)")
        cut = next(i for i, m in enumerate(pg.MIGRATIONS) if "ADD COLUMN owner" in m)
        for step, sql in enumerate(pg.MIGRATIONS[:cut]):
            conn.execute(sql)
            conn.execute("INSERT INTO oomtrace_schema VALUES (%s)", (step + 1,))
        conn.execute(
            "INSERT INTO events (node, id, killed_at_ns, namespace, pod, container, image, comm, "
            "oom_constraint, cgroup, rss_bytes, workload, incident_id, stored_at_ns, body, record) "
            "VALUES (%s, %s, %s, %s, %s, '', '', %s, 4, %s, 1, %s, '', 0, %s, %s::jsonb)",
            (
                ev.node,
                ev.id,
                c.killed_at_ns,
                "shop",
                c.pod,
                c.comm,
                c.cgroup,
                c.workload,
                ev.SerializeToString(),
                to_json(ev),
            ),
        )
    store = pg.PostgresStore(url)
    try:
        assert store.schema_version == len(pg.MIGRATIONS)
        f = Filter(
            sources=(event_pb2.OomEvent.COUNTER,),
            labels=(
                Requirement("tier", collector_pb2.LabelRequirement.IN, ("web",)),
                Requirement("app.kubernetes.io/name", collector_pb2.LabelRequirement.EXISTS),
            ),
            workload="Deployment/cart",
        )
        assert [e.id for e in store.list_events(f, 10, None)[0]] == [ev.id]
        (row,) = store._query("SELECT labels, owner, source FROM events")
        assert row == (c.labels, c.owner, c.source)
    finally:
        store.close()
