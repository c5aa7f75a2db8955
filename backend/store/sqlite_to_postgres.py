"""Copy an embedded coordinator's SQLite database into an empty PostgreSQL one (issue 15),
so that a project that starts small can grow onto several processes without losing history.

What ``copy_sqlite_to_postgres`` promises:

- **Every table, every column.** Tables and columns are read from the two databases
  themselves (``sqlite_master`` and ``PRAGMA table_info``; ``information_schema``), never
  from a list kept here: a table or column on one side only stops the copy and is named
  (``SchemaMismatch``), as is a column whose types do not map (``PG_TYPE_OF_SQLITE``).
  PostgreSQL's one extra column, ``clients.rowid`` (``postgres_migrations``), is filled
  from SQLite's implicit rowid: any PostgreSQL column named ``rowid`` that SQLite does not
  declare is. PostgreSQL's own bookkeeping (``barnraise_migrations``) and SQLite's
  (``sqlite_*``) are not copied: the target records its migrations as it applies them.
- **Values exactly.** Primary keys are kept; floats travel as Python floats (their
  shortest exact text), NULLs as NULLs, text (JSON included) byte for byte. A value
  PostgreSQL's column cannot hold as it is (a fraction in an integer column, text in a
  number column, a NUL character in text) stops the copy naming its table, column and row,
  rather than being rounded or cast.
- **All or nothing.** Both sides are at this code's schema version (the target is migrated
  first; the source must already be: an older file is to be opened with this version
  first, ``barnraise-backend database migrate``). The rows go in foreign-key order in one
  PostgreSQL transaction, holding the coordinators' writer lock
  (``postgres_migrations.WRITER_LOCK_KEY``); a target that holds any row is refused, and so
  is every error after it: PostgreSQL then holds none of the copy.
- **Nobody writes meanwhile.** The SQLite file is opened in exclusive locking mode and
  its write lock taken (``BEGIN IMMEDIATE``) for the whole copy: if any other connection
  has the file open (a coordinator serving it, a CLI command), the lock is refused within
  ``SQLITE_LOCK_WAIT_S`` and so is the copy; while the copy runs, a coordinator started on
  the folder waits (and then fails) instead of writing what the copy would miss.
- **Ids carry on.** Every identity or serial sequence of the target is moved past the
  largest id copied (and past SQLite's ``sqlite_sequence``, which remembers ids of deleted
  rows that ``AUTOINCREMENT`` never hands out again), so new rows continue the history.

The SQLite file is left as it was. The blobs and project keys are not in either database:
they stay in the data folder, which every coordinator on the PostgreSQL database must use.
"""

from __future__ import annotations

import contextlib
import graphlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from backend.store.factory import is_database_url
from backend.store.migrations import LATEST_VERSION
from backend.store.postgres import CONNECT_TIMEOUT_S, redacted
from backend.store.postgres_migrations import LOCK_WRITER, apply_migrations

SQLITE_LOCK_WAIT_S = 2.0
"""How long the copy waits for the SQLite file's exclusive lock before concluding that
something else (a running coordinator) holds the file open."""

PG_TYPE_OF_SQLITE = {
    "INTEGER": "bigint",
    "REAL": "double precision",
    "TEXT": "text",
    "BLOB": "bytea",
    "BOOLEAN": "boolean",
}
"""The PostgreSQL column type that holds each declared SQLite type (SQLite's INTEGER is
64-bit). No column is BLOB or BOOLEAN today; the mapping says how one would travel."""

IMPLICIT_ROWID = "rowid"
"""A PostgreSQL column of this name that SQLite does not declare takes SQLite's rowid."""

PG_BOOKKEEPING = frozenset({"barnraise_migrations"})
"""PostgreSQL tables that are the store's own bookkeeping, not coordinator data."""


class CopyRefused(ValueError):
    """The copy did not happen (nothing was written, or it was all rolled back); the
    message says why and what to do. A ValueError: the CLI prints it and exits with 2."""


class SchemaMismatch(CopyRefused):
    """The two schemas differ: a table or column on one side only, or types that do not
    map. Both are at the same version, so the migrations of the two stores disagree."""


@dataclass(frozen=True)
class TableCopy:
    """How one table travels: PostgreSQL's columns, what SQLite selects for each, and
    the PostgreSQL type each value must fit."""

    name: str
    columns: tuple[str, ...]
    sqlite_exprs: tuple[str, ...]
    pg_types: tuple[str, ...]
    order_by: tuple[str, ...]
    rowid_column: str | None
    """The PostgreSQL column that holds SQLite's rowid (an INTEGER PRIMARY KEY, or the
    implicit one), whose sequence must also pass SQLite's ``sqlite_sequence``."""


@dataclass(frozen=True)
class CopyReport:
    """What was copied: rows per table in copy order, and each sequence's next value."""

    sqlite_path: Path
    target: str
    """The PostgreSQL connection string without its password."""
    schema_version: int
    rows: dict[str, int]
    next_ids: dict[str, int]
    """``"table.column"`` -> the value the sequence hands out next."""


def copy_sqlite_to_postgres(sqlite_path: Path, url: str) -> CopyReport:
    """Copy the SQLite database at ``sqlite_path`` into the empty PostgreSQL database at
    ``url`` (migrated first), as the module docstring promises.

    Raises ``CopyRefused`` (a ValueError, its message free of the URL's password) for
    anything that stops it: the file missing, locked by another process or at another
    schema version; the server unreachable; the target holding rows; the schemas
    differing; a value that does not fit; any database error during the copy."""
    target = redacted(url)
    with open_sqlite_exclusively(sqlite_path) as lite:
        version = int(lite.execute("PRAGMA user_version").fetchone()[0])
        check_sqlite_version(sqlite_path, version)
        with connect_postgres(url) as pg:
            try:
                _refuse_rows(pg, target)  # before migrating: a refused target stays as it was
                apply_migrations(pg)
                pg_version = postgres_schema_version(pg)
                if pg_version != LATEST_VERSION:
                    raise CopyRefused(
                        f"the PostgreSQL database {target} is at schema version {pg_version}, "
                        f"newer than this barnraise's {LATEST_VERSION}: copy with the "
                        "barnraise that made it, or into a new, empty database; nothing was "
                        "copied"
                    )
                plan = plan_copy(lite, pg)
                floors = _sqlite_sequences(lite)
                with pg.transaction():
                    pg.execute(LOCK_WRITER)
                    _refuse_rows(pg, target)  # again, under the lock: a copy racing this one
                    rows = {table.name: _copy_table(lite, pg, table) for table in plan}
                    next_ids = _move_sequences_on(pg, plan, floors)
            except (psycopg.Error, sqlite3.Error) as exc:
                raise CopyRefused(
                    f"the copy into {target} failed and was rolled back (PostgreSQL holds none "
                    f"of its rows): {' '.join(str(exc).split())}"
                ) from exc
    return CopyReport(sqlite_path, target, version, rows, next_ids)


@contextlib.contextmanager
def open_sqlite_exclusively(path: Path) -> Iterator[sqlite3.Connection]:
    """The SQLite database at ``path``, in exclusive locking mode with its write lock held
    (``BEGIN IMMEDIATE``) until the block ends; nothing is written (it ends in ROLLBACK).

    Raises ``CopyRefused`` when the file is missing or another connection holds it open."""
    if not path.is_file():
        raise CopyRefused(
            f"{path.parent} holds no coordinator data ({path.name} is missing): check --data "
            "(a typo?); nothing was copied"
        )
    uri = path.resolve().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=SQLITE_LOCK_WAIT_S)
    except sqlite3.Error as exc:
        raise CopyRefused(f"cannot open {path}: {exc}; nothing was copied") from exc
    try:
        try:
            # Exclusive mode before the first read: the lock then waits for every other
            # connection to the file to close, instead of only for the current writer.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise CopyRefused(
                f"{path} is open elsewhere (a coordinator serving {path.parent}?), or locked "
                f"({exc}): stop that coordinator, then copy again; nothing was copied"
            ) from exc
        except sqlite3.Error as exc:  # not a database, say
            raise CopyRefused(f"cannot read {path}: {exc}; nothing was copied") from exc
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def check_sqlite_version(path: Path, version: int) -> None:
    """Refuse a SQLite database at another schema version than this code's."""
    if version < LATEST_VERSION:
        raise CopyRefused(
            f"{path} is at schema version {version}, this barnraise's is {LATEST_VERSION}: "
            f"migrate it first (`barnraise-backend database migrate --data {path.parent}`, "
            "or open it once with this version), then copy; nothing was copied"
        )
    if version > LATEST_VERSION:
        raise CopyRefused(
            f"{path} is at schema version {version}, newer than this barnraise's "
            f"{LATEST_VERSION}: copy it with the barnraise that made it; nothing was copied"
        )


@contextlib.contextmanager
def connect_postgres(url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to ``url``; ``CopyRefused`` (without the password) when
    the URL cannot be read or the server cannot be reached."""
    if not is_database_url(url):
        raise CopyRefused(  # the URL itself is not echoed: it may hold a password
            "the database URL is not PostgreSQL's: give postgresql://USER@HOST/DBNAME "
            "(or libpq's host=… dbname=…)"
        )
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        raise CopyRefused(
            "the database URL cannot be read: give postgresql://USER@HOST/DBNAME "
            "(or libpq's host=… dbname=…)"
        ) from None
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())  # libpq's lines and tabs, as one line
        if password:
            reason = reason.replace(str(password), "***")
        raise CopyRefused(
            f"cannot connect to PostgreSQL at {redacted(url)}: {reason}; check the database "
            "URL and that the server is running"
        ) from None
    with conn:
        yield conn


def postgres_schema_version(conn: psycopg.Connection[Any]) -> int:
    """The highest migration applied to the database; 0 where none ever was."""
    row = conn.execute("SELECT to_regclass('barnraise_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM barnraise_migrations").fetchone()
    return 0 if row is None else int(row[0])


# --- the schemas -------------------------------------------------------------------------


def sqlite_tables(lite: sqlite3.Connection) -> dict[str, list[tuple[str, str, int]]]:
    """Each coordinator table of the SQLite database: its columns as (name, declared type
    upper-cased, position in the primary key or 0), in their order."""
    names = [
        r[0]
        for r in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    return {
        name: [
            (str(c[1]), str(c[2]).upper(), int(c[5]))
            for c in lite.execute(f"PRAGMA table_info({_quote(name)})")
        ]
        for name in names
    }


def postgres_tables(pg: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str]]]:
    """Each coordinator table of the PostgreSQL database: its columns as (name, type)."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in pg.execute(
        """SELECT c.table_name, c.column_name, c.data_type
           FROM information_schema.columns c JOIN information_schema.tables t
             ON t.table_schema = c.table_schema AND t.table_name = c.table_name
           WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
           ORDER BY c.table_name, c.ordinal_position"""
    ):
        if table not in PG_BOOKKEEPING:
            tables.setdefault(table, []).append((column, data_type))
    return tables


def plan_copy(lite: sqlite3.Connection, pg: psycopg.Connection[Any]) -> list[TableCopy]:
    """How each table travels, in foreign-key order (a table after those it references).

    Raises ``SchemaMismatch`` naming every table and column on one side only and every
    column whose types do not map."""
    lite_tables, pg_tables = sqlite_tables(lite), postgres_tables(pg)
    problems = [
        f"table {t} is in the {where} database only"
        for t, where in [
            *((t, "SQLite") for t in sorted(lite_tables.keys() - pg_tables.keys())),
            *((t, "PostgreSQL") for t in sorted(pg_tables.keys() - lite_tables.keys())),
        ]
    ]
    plans: dict[str, TableCopy] = {}
    for name in sorted(lite_tables.keys() & pg_tables.keys()):
        lite_columns = {c: (kind, pk) for c, kind, pk in lite_tables[name]}
        pk = [c for c, _, position in sorted(lite_tables[name], key=lambda c: c[2]) if position]
        alias = pk[0] if len(pk) == 1 and lite_columns[pk[0]][0] == "INTEGER" else None
        columns, exprs, types = [], [], []
        rowid_column = alias
        for column, pg_type in pg_tables[name]:
            if column not in lite_columns:
                if column == IMPLICIT_ROWID and alias is None:
                    columns.append(column)
                    exprs.append("rowid")
                    types.append(pg_type)
                    rowid_column = column
                else:
                    problems.append(f"column {name}.{column} is in the PostgreSQL database only")
                continue
            kind = lite_columns[column][0]
            if PG_TYPE_OF_SQLITE.get(kind) != pg_type:
                problems.append(
                    f"column {name}.{column} is {kind or 'untyped'} on SQLite and {pg_type} "
                    "on PostgreSQL, which does not hold the same values"
                )
            columns.append(column)
            exprs.append(_quote(column))
            types.append(pg_type)
        pg_columns = {c for c, _ in pg_tables[name]}
        problems.extend(
            f"column {name}.{c} is in the SQLite database only"
            for c, _, _ in lite_tables[name]
            if c not in pg_columns
        )
        plans[name] = TableCopy(
            name, tuple(columns), tuple(exprs), tuple(types), tuple(pk), rowid_column
        )
    if problems:
        raise SchemaMismatch(
            "the SQLite and PostgreSQL schemas differ, so a copy would lose data: "
            + "; ".join(problems)
            + f" (both are at schema version {LATEST_VERSION}: the two stores' migrations "
            "disagree, a bug to report); nothing was copied"
        )
    order = graphlib.TopologicalSorter({name: set() for name in plans})
    for table, referenced in _foreign_keys(pg):
        if table in plans and referenced in plans and table != referenced:
            order.add(table, referenced)
    try:
        return [plans[name] for name in order.static_order()]
    except graphlib.CycleError as exc:  # no table of the schema references itself in a ring
        raise SchemaMismatch(f"the tables' foreign keys form a cycle: {exc.args[1]}") from None


def _foreign_keys(pg: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(table, the table it references) for every foreign key of the target."""
    return [
        (str(r[0]), str(r[1]))
        for r in pg.execute(
            """SELECT t.relname, r.relname FROM pg_constraint c
               JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
               WHERE c.contype = 'f' AND n.nspname = current_schema()
               ORDER BY 1, 2"""
        )
    ]


# --- the copy ----------------------------------------------------------------------------


def _refuse_rows(pg: psycopg.Connection[Any], target: str) -> None:
    """Refuse a target any of whose tables holds a row (whatever the tables are)."""
    full = [
        table
        for table in sorted(postgres_tables(pg))
        if pg.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
        ).fetchone()
        == (True,)
    ]
    if full:
        raise CopyRefused(
            f"the PostgreSQL database {target} is not empty ({', '.join(full)} hold rows): "
            "copy into a new, empty database (`createdb NAME` owned by the coordinator's "
            "role); nothing was copied"
        )


def _copy_table(lite: sqlite3.Connection, pg: psycopg.Connection[Any], table: TableCopy) -> int:
    """Stream one table's rows from SQLite into PostgreSQL (COPY); how many."""
    convert = [_CONVERTERS[t] for t in table.pg_types]
    order = ", ".join(_quote(c) for c in table.order_by) or "rowid"
    # Quoted names read from the schema itself, never user input.
    select = f"SELECT {', '.join(table.sqlite_exprs)} FROM {_quote(table.name)} ORDER BY {order}"  # noqa: S608
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns))
    )
    count = 0
    with pg.cursor().copy(statement) as copy:
        for row in lite.execute(select):
            values = []
            for column, value, fit in zip(table.columns, row, convert, strict=True):
                try:
                    values.append(None if value is None else fit(value))
                except _Unfit as exc:
                    key = dict(zip(table.columns, row, strict=True))
                    where = ", ".join(f"{c}={key[c]!r}" for c in table.order_by) or f"#{count}"
                    raise CopyRefused(
                        f"{table.name}.{column} of the row {where} holds {value!r}, which "
                        f"PostgreSQL's {exc} column cannot hold as it is; nothing was copied"
                    ) from None
            copy.write_row(values)
            count += 1
    return count


def _sqlite_sequences(lite: sqlite3.Connection) -> dict[str, int]:
    """SQLite's ``AUTOINCREMENT`` high-water marks (ids of deleted rows count too)."""
    has = lite.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    if not has:
        return {}
    return {
        str(name): int(seq) for name, seq in lite.execute("SELECT name, seq FROM sqlite_sequence")
    }


def _move_sequences_on(
    pg: psycopg.Connection[Any], plan: list[TableCopy], floors: dict[str, int]
) -> dict[str, int]:
    """Set every identity or serial sequence of the copied tables past the largest id;
    ``"table.column"`` -> the id it hands out next."""
    next_ids: dict[str, int] = {}
    for table in plan:
        for column in table.columns:
            row = pg.execute(
                "SELECT pg_get_serial_sequence(%s, %s)",
                (sql.Identifier(table.name).as_string(pg), column),
            ).fetchone()
            if row is None or row[0] is None:
                continue
            top = pg.execute(
                sql.SQL("SELECT COALESCE(MAX({}), 0) FROM {}").format(
                    sql.Identifier(column), sql.Identifier(table.name)
                )
            ).fetchone()
            last = int(top[0]) if top else 0
            if column == table.rowid_column:
                last = max(last, floors.get(table.name, 0))
            if last >= 1:
                pg.execute("SELECT setval(%s, %s, true)", (row[0], last))
            else:
                pg.execute("SELECT setval(%s, 1, false)", (row[0],))
            next_ids[f"{table.name}.{column}"] = max(last, 0) + 1
    return next_ids


class _Unfit(Exception):
    """A value that its PostgreSQL column cannot hold unchanged; the argument is the type."""


def _integer(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Unfit("bigint")


def _double(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    raise _Unfit("double precision")


def _text(value: Any) -> str:
    if isinstance(value, str) and "\x00" not in value:
        return value
    raise _Unfit("text")


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    raise _Unfit("bytea")


def _boolean(value: Any) -> bool:
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Unfit("boolean")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bigint": _integer,
    "double precision": _double,
    "text": _text,
    "bytea": _bytes,
    "boolean": _boolean,
}


def _quote(name: str) -> str:
    """An SQLite identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'
