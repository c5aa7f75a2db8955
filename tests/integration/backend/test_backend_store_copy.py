"""``barnraise-backend database copy``: an embedded coordinator with real history (two
projects, one under user-level privacy; joins, invites, leases, uploads, aggregated
versions, credit, a ban and an unban) copied into PostgreSQL. Every table's rows arrive
exactly, the HTTP answers are the same, the signed chain verifies, and the copied
coordinator carries on (ids continue). Refusals change nothing and say why; the two
schemas must stay each other's mirror. Also ``database migrate``. Needs PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from backend.cli import main
from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.store import migrations as sqlite_migrations
from backend.store.factory import DB_FILE
from backend.store.sqlite_to_postgres import (
    _CONVERTERS,
    PG_TYPE_OF_SQLITE,
    SchemaMismatch,
    plan_copy,
    postgres_tables,
    sqlite_tables,
)
from backend.testing import IN_PROCESS_URL, FakeClock, upload_small_delta, wsgi_session
from backend.wsgi import App

DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}
PLAIN = {"clients_per_round": 2, "min_updates": 2, "codec": "int8", "spot_check_rate": 0}
PRIVATE = {
    **PLAIN,
    "privacy": "dp-fedavg",
    "dp_epsilon": 8.0,
    "dp_delta": 1e-5,
    "dp_noise_multiplier": 3.0,
    "dp_clip_norm": 0.5,
    "max_loss_regression": 0,
}
API = f"{IN_PROCESS_URL}/api/v1/projects"


@dataclass
class History:
    """A data folder whose SQLite store holds a history touching every table."""

    data: Path
    now: float
    """The clock when the history ended: the copy's coordinator carries on from here."""
    people: dict[str, DemoContributor]


def _round(co: Coordinator, http: requests.Session, people: list[DemoContributor]) -> None:
    for who in people:
        task = who.lease(0)
        assert task is not None
        assert upload_small_delta(http, co, who, task).status_code == 201
    assert co.worker.run_once()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    data = tmp_path_factory.mktemp("embedded") / "data"
    clock = FakeClock()
    co = Coordinator(data, start_worker=False, clock=clock)
    try:
        http = wsgi_session(App(co, rate=None))
        co.create_project("digits", recipe="digits-mlp", hparams=DIGITS, settings=PLAIN)
        co.create_project(
            "private", recipe="digits-mlp", hparams={**DIGITS, "num_shards": 6}, settings=PRIVATE
        )
        co.create_invite("digits", max_uses=3)
        people = {
            name: DemoContributor(IN_PROCESS_URL, project, name, team=team, session=http)
            for name, project, team in [
                ("alice", "digits", "red"),
                ("bob", "digits", None),
                ("carol", "digits", "red"),
                ("dave", "private", None),
                ("erin", "private", None),
            ]
        }
        for who in people.values():
            who.join()
            clock.advance(1)
        co.new_challenge("digits")  # one not used yet
        for _ in range(2):
            _round(co, http, [people["alice"], people["bob"]])
            clock.advance(30)
        _round(co, http, [people["dave"], people["erin"]])
        # Carol's update waits for a second one; then she is banned and let back in.
        task = people["carol"].lease(0)
        assert task is not None
        assert upload_small_delta(http, co, people["carol"], task).status_code == 201
        digits = co.project("digits")
        co.services.admin.ban(digits, people["carol"].client_id, "testing the log", revoke=False)
        co.services.admin.unban(digits, people["carol"].client_id, "a mistake")
        clock.advance(5)
        return History(data, clock(), people)
    finally:
        co.close()


@pytest.fixture
def embedded(history: History, tmp_path: Path) -> Path:
    """A copy of the history's data folder for one test to change."""
    return Path(shutil.copytree(history.data, tmp_path / "data"))


def _copy(data: Path, url: str) -> int:
    return main(["database", "copy", "--data", str(data), "--database-url", url])


def _sqlite_sql(data: Path, statement: str, *params: Any) -> Any:
    """One statement on the folder's SQLite file behind the store's back; its first row."""
    with contextlib.closing(sqlite3.connect(data / DB_FILE, isolation_level=None)) as lite:
        return lite.execute(statement, params).fetchone()


def _both_stores_rows(data: Path, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every table's rows on each side, read with plain SQL (not the module under test):
    SQLite's declared columns, plus ``rowid`` where PostgreSQL has it; each value with its
    type, the rows sorted by primary key."""
    lite = sqlite3.connect(data / DB_FILE)
    try:
        with psycopg.connect(url) as pg:
            pg_columns: dict[str, set[str]] = {}
            for table, column in pg.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            ):
                pg_columns.setdefault(table, set()).add(column)
            tables = [
                r[0]
                for r in lite.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            ]
            sides: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
            for table in tables:
                info = lite.execute(f"PRAGMA table_info({table})").fetchall()
                columns = [c[1] for c in info]
                if "rowid" in pg_columns.get(table, set()) and "rowid" not in columns:
                    columns.append("rowid")
                key = [columns.index(c[1]) for c in sorted(info, key=lambda c: c[5]) if c[5]]
                select = f"SELECT {', '.join(columns)} FROM {table}"
                for side, rows in zip(
                    sides,
                    (lite.execute(select).fetchall(), pg.execute(select).fetchall()),
                    strict=True,
                ):
                    rows.sort(key=lambda row: tuple(row[i] for i in key))
                    side[table] = [tuple((type(v).__name__, v) for v in row) for row in rows]
            return sides
    finally:
        lite.close()


def _answers(co: Coordinator, projects: list[str]) -> dict[str, Any]:
    """What the API answers about each project: the list, each project, its leaderboard,
    stats, current model and each version's manifest."""
    http = wsgi_session(App(co, rate=None))
    paths = ["", *(f"/{p}{tail}" for p in projects for tail in ("", "/leaderboard", "/stats"))]
    paths += [f"/{p}/models/current" for p in projects]
    paths += [
        f"/{p}/versions/{v}/manifest"
        for p in projects
        for v in range(co.project(p).current_version + 1)
    ]
    answers = {}
    for path in paths:
        r = http.get(API + path, timeout=30)
        answers[path] = (r.status_code, r.json())
    return answers


def test_a_copy_carries_every_row_and_the_coordinator_carries_on(
    history: History, embedded: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _copy(embedded, postgres_url) == 0
    out = capsys.readouterr().out
    lite, pg = _both_stores_rows(embedded, postgres_url)
    assert sorted(lite) == sorted(pg)
    for table, rows in lite.items():
        assert rows, f"the history leaves {table} empty: the test would prove nothing of it"
        assert pg[table] == rows, table
        assert re.search(rf"^  {table} +{len(rows)} row\(s\)$", out, re.MULTILINE), table
    assert f"The blobs and project keys stay in {embedded}" in out

    embedded_co = Coordinator(embedded, start_worker=False, clock=FakeClock(history.now))
    copied = Coordinator(
        embedded, start_worker=False, clock=FakeClock(history.now), database_url=postgres_url
    )
    try:
        assert _answers(copied, ["digits", "private"]) == _answers(
            embedded_co, ["digits", "private"]
        )
    finally:
        embedded_co.close()
    try:
        for project in ("digits", "private"):
            verify = ["verify", "--data", str(embedded), "--database-url", postgres_url]
            assert main([*verify, "--project", project]) == 0
        assert "OK:" in capsys.readouterr().out

        # Carrying on: every kind of row that has an id of its own gets a new one.
        http = wsgi_session(App(copied, rate=None))
        for who in history.people.values():
            who.session = http
        alice, carol = history.people["alice"], history.people["carol"]
        task = alice.lease(0)
        assert task is not None and task["base_version"] == 2
        assert upload_small_delta(http, copied, alice, task).status_code == 201
        assert copied.worker.run_once()  # Carol's waiting update and Alice's: version 3
        _round(copied, http, [history.people["dave"], history.people["erin"]])
        frank = DemoContributor(IN_PROCESS_URL, "digits", "frank", session=http)
        frank.join()
        copied.create_project("third", recipe="digits-mlp", hparams=DIGITS, settings=PLAIN)
        digits = copied.project("digits")
        copied.services.admin.ban(digits, carol.client_id, "after the move", revoke=False)
        assert digits.current_version == 3
        assert copied.project("private").current_version == 2
        assert [p.id for p in copied.projects()] == [1, 2, 3]
        with psycopg.connect(postgres_url) as conn:
            newest = {
                table: conn.execute(f"SELECT MAX({column}) FROM {table}").fetchone()
                for table, column in [
                    ("aggregations", "id"),
                    ("updates", "seq"),
                    ("actions", "id"),
                    ("privacy_spend", "id"),
                    ("clients", "rowid"),
                ]
            }
            frank_rowid = conn.execute(
                "SELECT rowid FROM clients WHERE id = %s", (frank.client_id,)
            ).fetchone()
        # The id is the first column of each, but for clients' rowid (last).
        before = {
            table: max(row[-1 if table == "clients" else 0][1] for row in lite[table])
            for table in newest
        }
        for table, row in newest.items():
            assert row is not None and row[0] > before[table], table
        assert frank_rowid == newest["clients"]
        for project in ("digits", "private"):
            assert main([*verify, "--project", project]) == 0
    finally:
        copied.close()


def _pg_snapshot(url: str) -> dict[str, Any]:
    """Every table of the PostgreSQL database and its rows, bookkeeping included."""
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() ORDER BY 1"
            )
        ]
        return {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}"))) for t in tables}


def test_a_target_that_holds_rows_is_refused_and_left_as_it_was(
    embedded: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _copy(embedded, postgres_url) == 0
    before = _pg_snapshot(postgres_url)
    capsys.readouterr()
    assert _copy(embedded, postgres_url) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "projects" in err and "nothing was copied" in err
    assert _pg_snapshot(postgres_url) == before


def test_a_value_postgres_cannot_hold_rolls_the_whole_copy_back(
    embedded: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite keeps 1.5 in an INTEGER column; PostgreSQL would round it: the copy stops,
    naming the table, column and row, and the tables copied before it are rolled back."""
    _sqlite_sql(embedded, "UPDATE versions SET updates = 1.5 WHERE version = 1 AND project_id = 1")
    assert _copy(embedded, postgres_url) == 2
    err = capsys.readouterr().err
    assert "versions.updates of the row project_id=1, version=1 holds 1.5" in err
    assert all(
        rows == [] for t, rows in _pg_snapshot(postgres_url).items() if t != "barnraise_migrations"
    )


def test_ids_sqlite_never_hands_out_again_are_not_handed_out_on_postgres(
    embedded: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """AUTOINCREMENT remembers a deleted row's id (sqlite_sequence); so does the copy."""
    (top,) = _sqlite_sql(embedded, "SELECT MAX(id) FROM actions")
    _sqlite_sql(embedded, "DELETE FROM actions WHERE id = ?", top)
    assert _copy(embedded, postgres_url) == 0
    assert f"actions.id from {top + 1}" in capsys.readouterr().out
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT MAX(id) FROM actions").fetchone() == (top - 1,)


def test_a_running_coordinator_on_the_folder_stops_the_copy(
    history: History, embedded: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    serving = Coordinator(embedded, start_worker=False, clock=FakeClock(history.now))
    try:
        assert _copy(embedded, postgres_url) == 2
    finally:
        serving.close()
    err = capsys.readouterr().err
    assert "is open elsewhere" in err and "stop that coordinator" in err
    assert _pg_snapshot(postgres_url) == {}  # not even migrated


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://barnraise:s3cret@127.0.0.1:1/nowhere",
        "host=/nonexistent dbname=x user=barnraise password=s3cret",
        "mysql://root:s3cret@db.example/barnraise",
    ],
)
@pytest.mark.parametrize("command", ["copy", "migrate"])
def test_a_bad_url_is_refused_without_its_password(
    embedded: Path, url: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["database", command, "--data", str(embedded), "--database-url", url]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("error: ") and out.err.count("\n") == 1
    assert "s3cret" not in out.err + out.out and "Traceback" not in out.err


def _old_sqlite(data: Path) -> Path:
    """A SQLite store as the version before the latest left it (no rows)."""
    data.mkdir()
    lite = sqlite3.connect(data / DB_FILE, isolation_level=None)
    for number, statements in sqlite_migrations.MIGRATIONS[:-1]:
        for statement in statements:
            lite.execute(statement)
        lite.execute(f"PRAGMA user_version = {number}")
    lite.close()
    return data


def test_an_older_sqlite_store_is_refused_until_migrated(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _old_sqlite(tmp_path / "old")
    latest = sqlite_migrations.LATEST_VERSION
    assert _copy(data, postgres_url) == 2
    err = capsys.readouterr().err
    assert f"schema version {latest - 1}, this barnraise's is {latest}" in err
    assert f"barnraise-backend database migrate --data {data}" in err
    assert main(["database", "migrate", "--data", str(data)]) == 0
    assert main(["database", "migrate", "--data", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"SQLite {data / DB_FILE}: schema version {latest - 1} -> {latest} (1 migration(s) applied)",
        f"SQLite {data / DB_FILE}: schema version {latest}, up to date (nothing to apply)",
    ]
    assert _copy(data, postgres_url) == 0  # an empty store copies too: every table, no rows
    assert re.search(r"^  projects +0 row\(s\)$", capsys.readouterr().out, re.MULTILINE)


def test_migrate_postgres_applies_what_it_lacks_once(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = sqlite_migrations.LATEST_VERSION
    for _ in range(2):
        assert main(["database", "migrate", "--database-url", postgres_url]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("PostgreSQL ") and first.endswith(
        f"schema version 0 -> {latest} ({latest} migration(s) applied)"
    )
    assert second.endswith(f"schema version {latest}, up to date (nothing to apply)")
    assert "barnraise_migrations" in _pg_snapshot(postgres_url)


def test_the_two_schemas_mirror_each_other_and_drift_is_named(
    tmp_path: Path, postgres_url: str
) -> None:
    """Every table and column of one store exists on the other with a type that holds its
    values (clients.rowid is SQLite's implicit one); a column added to one side only, or a
    type that does not map, stops the copy naming it."""
    from backend.store import SQLiteStore
    from backend.store.postgres import PostgresStore

    SQLiteStore(tmp_path / DB_FILE).close()
    PostgresStore(postgres_url, pool_size=1).close()
    assert set(_CONVERTERS) == set(PG_TYPE_OF_SQLITE.values())
    lite = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as pg:
            plan = plan_copy(lite, pg)
            assert {t.name for t in plan} == set(sqlite_tables(lite)) == set(postgres_tables(pg))
            clients = next(t for t in plan if t.name == "clients")
            assert clients.sqlite_exprs[clients.columns.index("rowid")] == "rowid"
            order = [t.name for t in plan]
            assert order.index("projects") < order.index("clients") < order.index("tasks")
            assert order.index("aggregations") < order.index("updates")

            lite.execute("ALTER TABLE clients ADD COLUMN shoe_size INTEGER")
            pg.execute("ALTER TABLE versions ADD COLUMN mood TEXT")
            pg.execute("ALTER TABLE tasks ALTER COLUMN deadline TYPE real")
            pg.execute("CREATE TABLE scratch (x BIGINT)")
            with pytest.raises(SchemaMismatch) as refused:
                plan_copy(lite, pg)
    finally:
        lite.close()
    message = str(refused.value)
    for words in (
        "column clients.shoe_size is in the SQLite database only",
        "column versions.mood is in the PostgreSQL database only",
        "column tasks.deadline is REAL on SQLite and real on PostgreSQL",
        "table scratch is in the PostgreSQL database only",
    ):
        assert words in message


@pytest.mark.parametrize(
    ("pg_type", "value", "fits"),
    [
        ("bigint", 7, 7),
        ("bigint", 7.0, 7),  # SQLite's REAL-stored whole number in an INTEGER column
        ("bigint", 7.5, None),
        ("bigint", "7", None),
        ("double precision", 3, 3.0),
        ("double precision", 0.1, 0.1),
        ("double precision", "0.1", None),
        ("text", '{"a":1}', '{"a":1}'),
        ("text", "nul\x00", None),
        ("text", b"bytes", None),
        ("bytea", b"\x00\xff", b"\x00\xff"),
        ("bytea", memoryview(b"ab"), b"ab"),
        ("bytea", "text", None),
        ("boolean", 1, True),
        ("boolean", 0, False),
        ("boolean", 2, None),
    ],
)
def test_each_value_travels_unchanged_or_is_refused(pg_type: str, value: Any, fits: Any) -> None:
    from backend.store.sqlite_to_postgres import _Unfit

    convert = _CONVERTERS[pg_type]
    if fits is None:
        with pytest.raises(_Unfit):
            convert(value)
    else:
        assert convert(value) == fits and type(convert(value)) is type(fits)
