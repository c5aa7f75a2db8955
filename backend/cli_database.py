"""``barnraise-backend database``: the store's schema, and moving onto PostgreSQL (issue 15).

    barnraise-backend database migrate [--data DIR] [--database-url URL]
    barnraise-backend database copy --data DIR --database-url URL

``migrate`` applies the migrations the store lacks and says which store, and its schema
version before and after: opening a store migrates it too, so this is the explicit
deploy step, run once before starting several coordinators on one PostgreSQL database.
``copy`` moves a whole embedded coordinator (SQLite in the data folder) into an empty
PostgreSQL database (``backend.store.sqlite_to_postgres``); the blobs and keys stay in the
data folder, which the coordinators on PostgreSQL then use.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, TextIO

from backend.cli_store import DATABASE_URL_ENV
from backend.store.factory import DB_FILE

COPY_HELP = (
    "copy every table of the SQLite store in --data into the empty PostgreSQL database at "
    "--database-url (migrated first), in one transaction: all of it or nothing. The SQLite "
    "file is locked for the whole copy, so it refuses while a coordinator (or any other "
    "command) has the folder open: stop the coordinator first. The SQLite file is left as "
    "it was; the blobs and project keys stay in the data folder, which the coordinators on "
    "PostgreSQL must use (the same folder, or a copy of it)."
)
MIGRATE_HELP = (
    "apply the schema migrations the store lacks and print its version before and after: "
    "PostgreSQL at --database-url, else SQLite in --data. Idempotent; run it once before "
    "starting several coordinators on one database."
)


def add_database_parsers(sub: Any, data: argparse.ArgumentParser) -> None:
    """The ``database`` subcommands, on the CLI's subparsers (``data`` gives ``--data`` and
    ``--database-url``)."""
    database = sub.add_parser(
        "database", help="migrate the store's schema; copy an embedded coordinator to PostgreSQL"
    )
    dsub = database.add_subparsers(dest="action", required=True)
    dsub.add_parser(
        "migrate",
        parents=[data],
        help="apply the schema migrations the store lacks (before starting coordinators)",
        description=MIGRATE_HELP,
    )
    dsub.add_parser(
        "copy",
        parents=[data],
        help="copy the SQLite store in --data into an empty PostgreSQL database",
        description=COPY_HELP,
    )


def run_database(args: argparse.Namespace, data_dir: Path, out: TextIO) -> int:
    """Run ``database migrate`` or ``database copy``; refusals raise ValueError (the CLI
    prints it and exits with 2)."""
    try:
        if args.action == "migrate":
            return _migrate(args.database_url, data_dir, out)
        return _copy(args.database_url, data_dir, out)
    except RuntimeError as exc:  # PostgresStore's "cannot connect …", "needs a GRANT …"
        raise ValueError(str(exc)) from None


def _migrate(url: str | None, data_dir: Path, out: TextIO) -> int:
    import sqlite3

    from backend.store.factory import make_store
    from backend.store.migrations import LATEST_VERSION

    database_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    if url:
        import psycopg

        from backend.store.postgres import redacted
        from backend.store.sqlite_to_postgres import connect_postgres, postgres_schema_version

        database_errors += (psycopg.Error,)
        with connect_postgres(url) as conn:
            before = postgres_schema_version(conn)
        where = f"PostgreSQL {redacted(url)}"
    else:
        path = data_dir / DB_FILE
        if not path.is_file():
            raise ValueError(
                f"{data_dir} holds no coordinator data ({DB_FILE} is missing): check --data "
                f"(a typo?), or pass --database-url (or set {DATABASE_URL_ENV}) for PostgreSQL"
            )
        uri = path.resolve().as_uri() + "?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as lite:
                before = int(lite.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise ValueError(f"cannot read {path} as SQLite: {exc}") from exc
        where = f"SQLite {path}"
    if before > LATEST_VERSION:
        raise ValueError(
            f"{where} is at schema version {before}, newer than this barnraise's "
            f"{LATEST_VERSION}: run the barnraise that made it"
        )
    try:
        store = make_store(data_dir, url)
    except database_errors as exc:
        raise ValueError(
            f"{where}: a migration failed and was rolled back ({' '.join(str(exc).split())}); "
            "check that the coordinator's role may create tables there"
        ) from exc
    try:
        after = store.schema_version()
    finally:
        store.close()
    if after == before:
        print(f"{where}: schema version {after}, up to date (nothing to apply)", file=out)
    else:
        applied = f"{after - before} migration(s) applied"
        print(f"{where}: schema version {before} -> {after} ({applied})", file=out)
    return 0


def _copy(url: str | None, data_dir: Path, out: TextIO) -> int:
    from backend.store.sqlite_to_postgres import copy_sqlite_to_postgres

    if not url:
        raise ValueError(
            f"database copy needs the target: pass --database-url postgresql://USER@HOST/DBNAME "
            f"(or set {DATABASE_URL_ENV}) naming an empty database"
        )
    report = copy_sqlite_to_postgres(data_dir / DB_FILE, url)
    print(
        f"copied {report.sqlite_path} (schema version {report.schema_version}) into PostgreSQL "
        f"{report.target}, in one transaction:",
        file=out,
    )
    width = max(map(len, report.rows), default=0)
    for table, count in report.rows.items():
        print(f"  {table:<{width}}  {count} row(s)", file=out)
    if report.next_ids:
        ids = ", ".join(f"{name} from {value}" for name, value in report.next_ids.items())
        print(f"new rows continue the ids: {ids}", file=out)
    print(
        f"The blobs and project keys stay in {data_dir} (blobs/, keys/), not in the database: "
        f"serve with `barnraise-backend serve --data {data_dir} --database-url URL`, every "
        "coordinator on this database using that folder (shared, or a copy of it). "
        f"{report.sqlite_path} is left as it was: serve it no more, or the two histories part.",
        file=out,
    )
    return 0
