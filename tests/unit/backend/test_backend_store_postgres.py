"""The PostgreSQL store against the SQLite one: the same checks on both (``store`` is
parametrised), the same transcript of a whole lease -> upload -> claim -> finish history,
the schema mirrored, migrating from several processes at once, transactions and
durability. Concurrency is in ``test_backend_store_postgres_concurrency.py``. Needs
PostgreSQL installed; fails if it is not."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backend.store import (
    ClaimConflict,
    NameKeys,
    SQLiteStore,
    Store,
    postgres_migrations,
)
from backend.store import migrations as sqlite_migrations
from backend.store.factory import DB_FILE, make_store
from backend.store.migrations import LATEST_VERSION
from backend.store.postgres import PostgresStore
from backend.testing import bare_project_record
from tests.support.postgres import PostgresCluster
from tests.support.store_cycle import NOW, StoreOpener, run_cycle
from tests.support.wait import wait_until

STORES = ["sqlite", "postgres"]


@pytest.fixture(params=STORES)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreOpener]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    opener = StoreOpener(tmp_path / "db.sqlite3", url)
    yield opener
    opener.close_all()


@pytest.fixture
def store(opener: StoreOpener) -> Any:
    return opener()


def _pg(store: Any) -> psycopg.Connection[Any]:
    """A plain connection to a PostgresStore's database, for what only SQL can look at."""
    return psycopg.connect(store.url, autocommit=True)


# --- schema -------------------------------------------------------------------------------


def test_migrations_reach_latest_and_reopening_applies_nothing(opener: StoreOpener) -> None:
    first = opener()
    assert first.schema_version() == sqlite_migrations.LATEST_VERSION
    first.close()
    again = opener()
    assert again.schema_version() == sqlite_migrations.LATEST_VERSION
    if isinstance(again, PostgresStore):
        with _pg(again) as conn:
            rows = conn.execute("SELECT version FROM barnraise_migrations ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == [n for n, _ in postgres_migrations.MIGRATIONS]


def test_postgres_migrations_are_numbered_as_sqlite_ones() -> None:
    assert [n for n, _ in postgres_migrations.MIGRATIONS] == [
        n for n, _ in sqlite_migrations.MIGRATIONS
    ]
    assert postgres_migrations.LATEST_VERSION == sqlite_migrations.LATEST_VERSION


_PG_TYPE = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text"}
_PG_ONLY_COLUMNS = {("clients", "rowid")}  # SQLite's implicit rowid, made explicit


def test_postgres_schema_has_sqlite_tables_columns_and_indexes(
    tmp_path: Any, postgres_url: str
) -> None:
    """Table by table the same columns (type mapped, nullability, primary key) and the same
    indexes (name, columns, unique, partial), so a copy command can move a database
    either way."""
    sqlite = SQLiteStore(tmp_path / "db.sqlite3")
    pg = PostgresStore(postgres_url, pool_size=1)
    try:
        with sqlite.read() as tx:
            lite = tx._c
            tables = [
                r[0]
                for r in lite.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            expected = {
                (t, c[1]): (_PG_TYPE[c[2]], "NO" if c[3] or c[5] else "YES")
                for t in tables
                for c in lite.execute(f"PRAGMA table_info({t})")
            }
            sqlite_indexes = {
                index[1]: (
                    table,
                    tuple(c[2] for c in lite.execute(f"PRAGMA index_info({index[1]})")),
                    bool(index[2]),
                    bool(index[4]),
                )
                for table in tables
                for index in lite.execute(f"PRAGMA index_list({table})").fetchall()
                if index[3] == "c"  # made by CREATE INDEX, not by a constraint
            }
        with _pg(pg) as conn:
            actual = {
                (r[0], r[1]): (r[2], r[3])
                for r in conn.execute(
                    """SELECT table_name, column_name, data_type, is_nullable
                       FROM information_schema.columns
                       WHERE table_schema = 'public' AND table_name <> 'barnraise_migrations'"""
                )
                if (r[0], r[1]) not in _PG_ONLY_COLUMNS
            }
            pg_indexes = {
                r[0]: (r[1], tuple(r[2]), r[3], r[4])
                for r in conn.execute(
                    """SELECT i.relname, t.relname,
                         ARRAY(SELECT a.attname::text FROM unnest(x.indkey) WITH ORDINALITY k(n, o)
                               JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n
                               ORDER BY k.o),
                         x.indisunique, x.indpred IS NOT NULL
                       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                       JOIN pg_class t ON t.oid = x.indrelid
                       JOIN pg_namespace s ON s.oid = t.relnamespace
                       WHERE s.nspname = 'public' AND NOT EXISTS
                         (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"""
                )
            }
        assert actual == expected
        assert pg_indexes == sqlite_indexes
    finally:
        sqlite.close()
        pg.close()


def test_processes_starting_at_once_migrate_once(postgres_url: str) -> None:
    """Six stores opened at the same moment on an empty database: each migration is
    applied once (the advisory lock), none fails, all see the latest schema."""
    barrier = threading.Barrier(6)
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore(postgres_url, pool_size=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert {s.schema_version() for s in opened} == {postgres_migrations.LATEST_VERSION}
        with _pg(opened[0]) as conn:
            rows = conn.execute("SELECT version, COUNT(*) FROM barnraise_migrations GROUP BY 1")
            assert {v: n for v, n in rows} == {n: 1 for n, _ in postgres_migrations.MIGRATIONS}
    finally:
        for s in opened:
            s.close()


def test_an_unreachable_server_is_named_in_the_error(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.url("no_such_database") + " password=hunter2"
    with pytest.raises(RuntimeError, match="cannot connect to PostgreSQL") as caught:
        PostgresStore(url, connect_timeout_s=2)
    assert "no_such_database" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_migrated_database_given_back_is_as_migrating_left_it(
    postgres_cluster: PostgresCluster,
) -> None:
    """``migrated_postgres_url`` hands each test a database the last one used: emptied,
    its ids starting again at 1, its migrations kept, a connection left open ended."""
    name = postgres_cluster.take_migrated_database()
    used = PostgresStore(postgres_cluster.url(name), pool_size=1)
    left_open = PostgresStore(postgres_cluster.url(name), pool_size=1)
    try:
        run_cycle(used)  # a row in every table the services write
        with used.write() as tx:
            assert tx.insert_project(bare_project_record("before")) > 1
    finally:
        used.close()
    postgres_cluster.give_back_emptied(name)

    def connections() -> int:
        with postgres_cluster.admin() as admin:
            row = admin.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
        return int(row[0]) if row else -1

    wait_until(lambda: connections() == 0, 10, f"the connections to {name} ended")
    assert postgres_cluster.take_migrated_database() == name
    again = PostgresStore(postgres_cluster.url(name), pool_size=1)
    try:
        with _pg(again) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone() for (t,) in tables}
        assert counts.pop("barnraise_migrations") == (len(postgres_migrations.MIGRATIONS),)
        assert counts and set(counts.values()) == {(0,)}
        with again.write() as tx:
            assert tx.insert_project(bare_project_record("after")) == 1
    finally:
        again.close()
        left_open.close()  # its connections were ended under it
        postgres_cluster.drop_database(name)


# --- one history, both stores ------------------------------------------------------------


def test_a_whole_cycle_keeps_every_guarantee(store: Store) -> None:
    run_cycle(store)


def test_both_stores_answer_a_whole_cycle_alike(tmp_path: Any, postgres_url: str) -> None:
    """Every method's answer, in order and by type, is the same on SQLite and PostgreSQL."""
    sqlite = SQLiteStore(tmp_path / "db.sqlite3")
    pg = PostgresStore(postgres_url, pool_size=2)
    try:
        expected, actual = run_cycle(sqlite), run_cycle(pg)
    finally:
        sqlite.close()
        pg.close()
    assert [name for name, _ in actual] == [name for name, _ in expected]
    for (name, want), (_, got) in zip(expected, actual, strict=True):
        assert got == want, name


# --- transactions ------------------------------------------------------------------------


def test_a_failed_write_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.write() as tx:
        tx.insert_project(bare_project_record("p"))
        raise RuntimeError("boom")
    with store.read() as rtx:
        assert rtx.project_by_name("p") is None


def test_a_refused_claim_leaves_the_rest_of_its_transaction_to_commit(store: Store) -> None:
    """As the claim service relies on: its earlier writes (drops, settled credit) commit
    even when the claim itself is refused."""
    with store.write() as tx:
        pid = tx.insert_project(bare_project_record("p"))
        tx.claim_aggregation(pid, 0, "first", NOW, [])
    with store.write() as tx:
        tx.set_project_status(pid, "paused")
        with pytest.raises(ClaimConflict):
            tx.claim_aggregation(pid, 0, "second", NOW, [])
        tx.insert_project(bare_project_record("after"))
    with store.read() as rtx:
        project = rtx.project_by_id(pid)
        assert project is not None and project.status == "paused"
        assert rtx.project_by_name("after") is not None
        assert [c[1] for c in rtx.running_claims()] == ["first"]


def test_postgres_refuses_to_commit_a_write_whose_error_was_swallowed(
    postgres_url: str,
) -> None:
    """SQLite undoes one failed statement and goes on; PostgreSQL aborts the transaction.
    A block that catches the error and carries on gets an error, never a silent loss."""
    store = PostgresStore(postgres_url, pool_size=1)
    try:
        with store.write() as tx:
            tx.insert_project(bare_project_record("p"))
        with pytest.raises(RuntimeError, match="aborted the transaction"), store.write() as tx:
            tx.insert_project(bare_project_record("kept?"))
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                tx.insert_project(bare_project_record("p"))  # the unique name
        with store.read() as rtx:
            assert [p.name for p in rtx.projects()] == ["p"]
        with store.write() as tx:  # the writer connection is usable again
            tx.insert_project(bare_project_record("next"))
    finally:
        store.close()


def test_a_read_is_one_snapshot_and_nested_reads_share_it(store: Store) -> None:
    with store.write() as tx:
        tx.insert_project(bare_project_record("before"))
    with store.read() as rtx:
        assert [p.name for p in rtx.projects()] == ["before"]
        writer = threading.Thread(target=_insert_project, args=(store, "during"))
        writer.start()
        writer.join(30)
        assert [p.name for p in rtx.projects()] == ["before"]
        with store.read() as inner:
            assert [p.name for p in inner.projects()] == ["before"]
    with store.read() as rtx:
        assert [p.name for p in rtx.projects()] == ["before", "during"]


def _insert_project(store: Store, name: str) -> None:
    with store.write() as tx:
        tx.insert_project(bare_project_record(name))


def test_a_closed_store_refuses_work(store: Store) -> None:
    store.close()
    with pytest.raises(RuntimeError, match="closed"), store.write():
        pass
    with pytest.raises(RuntimeError, match="closed"), store.read():
        pass
    with pytest.raises(RuntimeError, match="closed"):
        store.write_batched(lambda tx: tx.insert_project(bare_project_record("late")))


def test_nan_is_stored_as_null_and_infinity_as_a_large_number(store: Store) -> None:
    from tests.support.store_cycle import _client, _task, _update

    with store.write() as tx:
        pid = tx.insert_project(bare_project_record("p"))
        tx.insert_client(_client(0, pid, "a", None), NameKeys("a", None))
        tx.insert_client(_client(1, pid, "b", None), NameKeys("b", None))
        for i in range(2):
            tx.insert_task(_task(i, pid, i, 0, 0))
            tx.insert_update(_update(i, pid, i, 0))
        tx.record_check("c0", "u0", float("nan"), False, NOW)
        tx.record_check("c1", "u1", float("inf"), False, NOW)
    with store.read() as rtx:
        first, second = rtx.update("u0"), rtx.update("u1")
    assert first is not None and first.check_error is None
    assert second is not None and second.check_error == 1e300


# --- durability --------------------------------------------------------------------------


def test_a_durable_write_is_there_after_reopening(opener: StoreOpener) -> None:
    first = opener()
    with first.write() as tx:
        tx.insert_project(bare_project_record("kept"))
    with first.write(durable=False) as tx:
        tx.insert_project(bare_project_record("also"))
    first.wait_durable()
    first.close()
    again = opener()
    with again.read() as rtx:
        assert [p.name for p in rtx.projects()] == ["also", "kept"]


def test_postgres_durable_writes_flush_and_others_do_not(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable write returns after a flush that covers it (the WAL flushed past its
    commit); a non-durable one never waits for one; a flush covers earlier commits."""
    store = PostgresStore(postgres_url, pool_size=2)
    flushes: list[int] = []
    real_flush = store._flush

    def counting_flush() -> None:
        flushes.append(1)
        real_flush()

    monkeypatch.setattr(store, "_flush", counting_flush)
    try:
        with store.write(durable=False) as tx:
            tx.insert_project(bare_project_record("fast"))
        assert flushes == []
        with store.write() as tx:
            tx.insert_project(bare_project_record("safe"))
            row = tx._c.execute("SELECT pg_current_wal_insert_lsn() AS lsn").fetchone()
        assert flushes == [1] and row is not None
        with _pg(store) as conn:
            flushed = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
        assert flushed is not None
        assert _lsn(flushed[0]) > _lsn(row["lsn"])  # its commit record comes after that
        store.wait_durable()
        assert flushes == [1, 1]
    finally:
        store.close()


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


# --- choosing the store -------------------------------------------------------------------


def test_make_store_opens_sqlite_in_the_folder_or_postgres_at_a_url(
    tmp_path: Path, postgres_url: str
) -> None:
    sqlite = make_store(tmp_path, None)
    assert isinstance(sqlite, SQLiteStore) and (tmp_path / DB_FILE).exists()
    sqlite.close()
    pg = make_store(tmp_path, postgres_url)
    assert isinstance(pg, PostgresStore) and pg.schema_version() == LATEST_VERSION
    pg.close()
    with pytest.raises(ValueError, match="not PostgreSQL's") as caught:
        make_store(tmp_path, "mysql://admin:hunter2@db/barnraise")
    assert "hunter2" not in str(caught.value)
