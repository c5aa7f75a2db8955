"""Which store a coordinator opens: SQLite in its data folder, or PostgreSQL at a URL.

One place decides, so the CLI (``--database-url``), ``app_from_env``
(``BARNRAISE_DATABASE_URL``) and tests agree. psycopg is imported only when a URL is
given: the embedded default needs nothing beyond the standard library.
"""

from __future__ import annotations

from pathlib import Path

from backend.store.base import Store
from backend.store.sqlite import SQLiteStore

DB_FILE = "barnraise.sqlite3"
"""The SQLite store's file in the data folder (``backend.coordinator.DB_FILE`` names it
too, for its permissions; the two must stay equal)."""

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(url: str) -> bool:
    """A PostgreSQL URL, or a libpq key=value string (``host=... dbname=...``)."""
    return url.startswith(POSTGRES_SCHEMES) or ("=" in url and "://" not in url)


def make_store(data_dir: str | Path, database_url: str | None = None) -> Store:
    """``database_url`` given: a ``PostgresStore`` on it (the data folder still holds the
    blobs and keys); else a ``SQLiteStore`` at ``DATA/barnraise.sqlite3``.

    Raises ValueError for a URL that is not PostgreSQL's, naming the forms it takes."""
    if database_url:
        if not is_database_url(database_url):
            raise ValueError(  # the URL itself is not echoed: it may hold a password
                "the database URL is not PostgreSQL's: give postgresql://USER@HOST/DBNAME "
                "(or libpq's host=… dbname=…), or none for SQLite in the data folder"
            )
        from backend.store.postgres import PostgresStore

        return PostgresStore(database_url)
    return SQLiteStore(Path(data_dir) / DB_FILE)
