"""Opening a store the operator must fix first says so in one line: a database a newer
Barnraise migrated (opening it would misread or damage it), a PostgreSQL server that
cannot be reached. The CLI prints it and exits 2, never a traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from backend.cli import main
from backend.store import SQLiteStore, StoreOpenError
from backend.store.factory import DB_FILE
from backend.store.postgres import PostgresStore
from tests.support.postgres import PostgresCluster


def test_a_sqlite_store_from_a_newer_version_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["project", "create", "digits", "--recipe", "digits-mlp", "--data", str(data)]) == 0
    with sqlite3.connect(data / DB_FILE) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(StoreOpenError, match="schema version 999, newer than"):
        SQLiteStore(data / DB_FILE)
    capsys.readouterr()
    assert main(["serve", "--data", str(data), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "newer than this Barnraise" in err and "Traceback" not in err
    with sqlite3.connect(data / DB_FILE) as conn:  # and nothing was changed
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 999


def test_a_postgres_database_from_a_newer_version_is_refused(
    migrated_postgres_url: str,
) -> None:
    with psycopg.connect(migrated_postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO barnraise_migrations (version, applied_at) VALUES (999, 0)")
    with pytest.raises(StoreOpenError, match="schema version 999, newer than"):
        PostgresStore(migrated_postgres_url, connect_timeout_s=2)
    with psycopg.connect(migrated_postgres_url, autocommit=True) as conn:
        conn.execute("DELETE FROM barnraise_migrations WHERE version = 999")


def test_serve_on_an_unreachable_database_says_so_in_one_line(
    tmp_path: Path, postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_cluster.url("no_such_database") + " password=hunter2"
    code = main(["serve", "--data", str(tmp_path / "d"), "--database-url", url, "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot connect to PostgreSQL" in err
    assert "Traceback" not in err and "hunter2" not in err
