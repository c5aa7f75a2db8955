"""The SQL of reads on PostgreSQL: ``sqlite_reads``' queries, run on a psycopg connection.

``PostgresReads`` inherits every query of ``SQLiteReads`` and runs it through its own
``_one``/``_all``/``_run``/``_many``: the ``?`` placeholders become ``%s`` (and a literal
``%`` becomes ``%%``), once per statement text, and rows read as ``sqlite3.Row`` does
(``postgres_rows.sqlite_row``). Only the queries whose SQL must differ are written here.
Where SQLite's answer depends on more than the SQL says, the order is written out: text
sorts as SQLite's BINARY collation does (``COLLATE "C"``, whatever the database's locale),
and rows that SQLite returns in an index's order (running claims by project, members by
insertion) get that ORDER BY. Which connection, in which transaction, is ``postgres``'s
business.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, LiteralString, cast

import psycopg

from backend.store.base import ActionRecord, ClientRecord, ProjectRecord
from backend.store.postgres_rows import (
    SELECT_PROJECTS,
    PgRow,
    action_from_row,
    client_from_row,
    project_from_row,
    sqlite_row,
)
from backend.store.sqlite_reads import SQLiteReads
from backend.store.sqlite_rows import Row


@lru_cache(maxsize=1024)
def to_pg(sql: str) -> LiteralString:
    """A statement of the SQLite store in psycopg's placeholders: ``?`` to ``%s``."""
    return cast(LiteralString, sql.replace("%", "%%").replace("?", "%s"))


class PostgresReads(SQLiteReads):
    """The queries of ``ReadTx``, on one connection inside a transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._pg = conn
        self._c = conn  # type: ignore[assignment]  # the raw connection, as SQLiteReads' (tests)

    def _cursor(self) -> psycopg.Cursor[PgRow]:
        return self._pg.cursor(row_factory=sqlite_row)

    def _one(self, sql: str, *args: Any) -> PgRow | None:
        return self._cursor().execute(to_pg(sql), args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[Row]:
        return list[Row](self._cursor().execute(to_pg(sql), args).fetchall())

    def _run(self, sql: str, *args: Any) -> int:
        return self._pg.execute(to_pg(sql), args).rowcount

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._pg.cursor().executemany(to_pg(sql), rows)  # pipelined: one round trip

    def _insert_id(self, sql: str, *args: Any) -> int:
        rows = self._all(sql + " RETURNING id", *args)
        return int(rows[0][0])

    # --- reads whose SQL differs -----------------------------------------------------------
    def projects(self) -> list[ProjectRecord]:
        rows = self._all(SELECT_PROJECTS + ' ORDER BY name COLLATE "C"')
        return [project_from_row(r) for r in rows]

    def clients(self, project_id: int) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = ? ORDER BY created_at, rowid", project_id
        )
        return [client_from_row(r) for r in rows]

    def live_round_leases(
        self, project_id: int, base_version: int, now: float
    ) -> list[tuple[int, float]]:
        rows = self._all(
            """SELECT shard_index, issued_at FROM tasks
               WHERE project_id = ? AND base_version = ? AND status = 'leased' AND deadline >= ?
               ORDER BY issued_at, id COLLATE "C"
            """,
            project_id,
            base_version,
            now,
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    def actions(self, project_id: int, limit: int | None) -> list[ActionRecord]:
        rows = self._all(  # LIMIT NULL: all of them (SQLite's LIMIT -1)
            "SELECT * FROM actions WHERE project_id = ? ORDER BY id DESC LIMIT ?",
            project_id,
            limit,
        )
        return [action_from_row(r) for r in rows]
