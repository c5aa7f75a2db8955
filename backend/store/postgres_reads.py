"""The SQL of reads: ``ReadTx`` on a PostgreSQL connection, statement for statement the
queries of ``sqlite_reads``.

Where SQLite's answer depends on more than the SQL says, the order is written out: text
sorts as SQLite's BINARY collation does (``COLLATE "C"``, whatever the database's locale),
and rows that SQLite returns in an index's order (running claims by project, members by
insertion) get that ORDER BY. ``PostgresReads`` only runs statements on the connection
it is given; which connection, in which transaction, is ``postgres``'s business.
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from psycopg.rows import tuple_row

from backend.store.base import (
    ActionRecord,
    ClientRecord,
    ProjectRecord,
    RoundCounts,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)
from backend.store.postgres_rows import (
    SELECT_PROJECTS,
    Row,
    action_from_row,
    client_from_row,
    project_from_row,
    task_from_row,
    update_from_row,
    version_from_row,
)


class PostgresReads:
    """The queries of ``ReadTx``, on one connection inside a transaction."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._c = conn

    def _one(self, sql: LiteralString, *args: Any) -> Row | None:
        return self._c.execute(sql, args).fetchone()

    def _all(self, sql: LiteralString, *args: Any) -> list[Row]:
        return self._c.execute(sql, args).fetchall()

    def _values(self, sql: LiteralString, *args: Any) -> list[tuple[Any, ...]]:
        """Rows as tuples, for the queries of one or two unnamed values."""
        return self._c.cursor(row_factory=tuple_row).execute(sql, args).fetchall()

    def _run(self, sql: LiteralString, *args: Any) -> int:
        return self._c.execute(sql, args).rowcount

    def _many(self, sql: LiteralString, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._c.cursor().executemany(sql, rows)  # pipelined: one round trip, not one each

    def _count(self, sql: LiteralString, *args: Any) -> int:
        rows = self._values(sql, *args)
        return int(rows[0][0]) if rows else 0

    # --- reads -----------------------------------------------------------------------------
    def projects(self) -> list[ProjectRecord]:
        rows = self._all(SELECT_PROJECTS + ' ORDER BY name COLLATE "C"')
        return [project_from_row(r) for r in rows]

    def project_by_name(self, name: str) -> ProjectRecord | None:
        row = self._one(SELECT_PROJECTS + " WHERE name = %s", name)
        return project_from_row(row) if row else None

    def project_by_id(self, project_id: int) -> ProjectRecord | None:
        row = self._one(SELECT_PROJECTS + " WHERE id = %s", project_id)
        return project_from_row(row) if row else None

    def version(self, project_id: int, version: int) -> VersionRecord | None:
        row = self._one(
            "SELECT * FROM versions WHERE project_id = %s AND version = %s", project_id, version
        )
        return version_from_row(row) if row else None

    def versions(self, project_id: int) -> list[VersionRecord]:
        rows = self._all(
            "SELECT * FROM versions WHERE project_id = %s ORDER BY version", project_id
        )
        return [version_from_row(r) for r in rows]

    def version_leaves(self, project_id: int, version: int) -> list[tuple[str, str]]:
        rows = self._values(
            """SELECT update_id, payload_digest FROM version_updates
               WHERE project_id = %s AND version = %s ORDER BY position""",
            project_id,
            version,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def leaves_matching(self, project_id: int, update: str) -> list[tuple[int, str, str]]:
        rows = self._values(
            """SELECT version, update_id, payload_digest FROM version_updates
               WHERE project_id = %s AND (update_id = %s OR payload_digest = %s)
               ORDER BY version, position LIMIT 100""",
            project_id,
            update,
            update,
        )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def client(self, client_id: str) -> ClientRecord | None:
        row = self._one("SELECT * FROM clients WHERE id = %s", client_id)
        return client_from_row(row) if row else None

    def client_by_key(self, project_id: int, public_key: str) -> ClientRecord | None:
        row = self._one(
            "SELECT * FROM clients WHERE project_id = %s AND public_key = %s",
            project_id,
            public_key,
        )
        return client_from_row(row) if row else None

    def clients(self, project_id: int) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = %s ORDER BY created_at, rowid", project_id
        )
        return [client_from_row(r) for r in rows]

    def clients_named(self, project_id: int, name_key: str) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = %s AND name_key = %s ORDER BY rowid",
            project_id,
            name_key,
        )
        return [client_from_row(r) for r in rows]

    def team_spelling(self, project_id: int, team_key: str) -> str | None:
        rows = self._values(
            "SELECT team FROM clients WHERE project_id = %s AND team_key = %s"
            " ORDER BY created_at, rowid LIMIT 1",
            project_id,
            team_key,
        )
        return str(rows[0][0]) if rows else None

    def clients_without_name_keys(self, project_id: int) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = %s AND name_key IS NULL ORDER BY rowid",
            project_id,
        )
        return [client_from_row(r) for r in rows]

    def task(self, task_id: str) -> TaskRecord | None:
        row = self._one("SELECT * FROM tasks WHERE id = %s", task_id)
        return task_from_row(row) if row else None

    def update_for_task(self, task_id: str) -> UpdateRecord | None:
        row = self._one("SELECT * FROM updates WHERE task_id = %s", task_id)
        return update_from_row(row) if row else None

    def update(self, update_id: str) -> UpdateRecord | None:
        row = self._one("SELECT * FROM updates WHERE id = %s", update_id)
        return update_from_row(row) if row else None

    def update_with_payload(self, project_id: int, digest: str) -> UpdateRecord | None:
        row = self._one(
            "SELECT * FROM updates WHERE project_id = %s AND payload_digest = %s"
            " ORDER BY seq LIMIT 1",
            project_id,
            digest,
        )
        return update_from_row(row) if row else None

    def granted_updates_since(self, client_id: str, since: float) -> list[UpdateRecord]:
        rows = self._all(
            """SELECT * FROM updates WHERE client_id = %s AND credit_state = 'granted'
                 AND accepted_at > %s ORDER BY seq""",
            client_id,
            since,
        )
        return [update_from_row(r) for r in rows]

    def recent_norms(self, project_id: int, limit: int) -> list[float]:
        rows = self._values(
            """SELECT norm FROM updates WHERE project_id = %s AND norm IS NOT NULL
                 AND status = 'aggregated' ORDER BY seq DESC LIMIT %s""",
            project_id,
            limit,
        )
        return [float(r[0]) for r in rows]

    def updates(self, project_id: int) -> list[UpdateRecord]:
        rows = self._all("SELECT * FROM updates WHERE project_id = %s ORDER BY seq", project_id)
        return [update_from_row(r) for r in rows]

    def round_counts(self, project_id: int, base_version: int, now: float) -> RoundCounts:
        rows = self._values(
            """SELECT
                 COUNT(*) FILTER (WHERE status = 'leased' AND deadline >= %s),
                 COUNT(*) FILTER (WHERE status = 'answered')
               FROM tasks WHERE project_id = %s AND base_version = %s""",
            now,
            project_id,
            base_version,
        )
        return RoundCounts(live_leases=int(rows[0][0]), answered=int(rows[0][1]))

    def live_round_leases(
        self, project_id: int, base_version: int, now: float
    ) -> list[tuple[int, float]]:
        rows = self._values(
            """SELECT shard_index, issued_at FROM tasks
               WHERE project_id = %s AND base_version = %s AND status = 'leased'
                 AND deadline >= %s
               ORDER BY issued_at, id COLLATE "C"
            """,
            project_id,
            base_version,
            now,
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    def live_leases(self, project_id: int, now: float) -> int:
        return self._count(
            "SELECT COUNT(*) FROM tasks WHERE project_id = %s AND status = 'leased'"
            " AND deadline >= %s",
            project_id,
            now,
        )

    def pending_updates(self, project_id: int) -> int:
        return self._count(
            "SELECT COUNT(*) FROM updates WHERE project_id = %s AND status = 'pending'",
            project_id,
        )

    def client_pending_updates(self, project_id: int, client_id: str) -> int:
        return self._count(
            """SELECT COUNT(*) FROM updates WHERE project_id = %s AND client_id = %s
                 AND status IN ('pending', 'claimed')""",
            project_id,
            client_id,
        )

    def pending_update_records(
        self, project_id: int, base_version: int | None, limit: int | None
    ) -> list[UpdateRecord]:
        sql: LiteralString = "SELECT * FROM updates WHERE project_id = %s AND status = 'pending'"
        args: list[Any] = [project_id]
        if base_version is not None:
            sql += " AND base_version = %s"
            args.append(base_version)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        rows = self._all(sql, *args)
        return [update_from_row(r) for r in rows]

    def next_deadline(self, now: float) -> float | None:
        rows = self._values("SELECT MIN(deadline) FROM tasks WHERE status = 'leased'")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def version_times(self, project_id: int, limit: int) -> list[float]:
        rows = self._values(
            "SELECT created_at FROM versions WHERE project_id = %s ORDER BY version DESC LIMIT %s",
            project_id,
            limit,
        )
        return [float(r[0]) for r in reversed(rows)]

    def rejected_tasks(self, project_id: int) -> int:
        return self._count(
            "SELECT COUNT(*) FROM tasks WHERE status = 'rejected' AND project_id = %s",
            project_id,
        )

    def updates_with_status(self, project_id: int, status: str) -> int:
        return self._count(
            "SELECT COUNT(*) FROM updates WHERE project_id = %s AND status = %s",
            project_id,
            status,
        )

    def aggregation_running(self, project_id: int) -> bool:
        rows = self._values(
            "SELECT 1 FROM aggregations WHERE project_id = %s AND status = 'running'",
            project_id,
        )
        return bool(rows)

    def running_claims(self) -> list[tuple[int, str, float]]:
        rows = self._values(  # SQLite reads them through one_running_aggregation: by project
            "SELECT project_id, owner, claimed_at FROM aggregations WHERE status = 'running'"
            " ORDER BY project_id"
        )
        return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    def oldest_pending_at(self, project_id: int) -> float | None:
        rows = self._values(
            "SELECT MIN(accepted_at) FROM updates WHERE project_id = %s AND status = 'pending'",
            project_id,
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def invite_count(self, project_id: int) -> int:
        return self._count("SELECT COUNT(*) FROM invites WHERE project_id = %s", project_id)

    def challenge_valid(self, project_id: int, challenge: str, now: float) -> bool:
        rows = self._values(
            """SELECT 1 FROM challenges
               WHERE challenge = %s AND project_id = %s AND used = 0 AND expires_at >= %s""",
            challenge,
            project_id,
            now,
        )
        return bool(rows)

    def client_updates(self, client_id: str, credit_state: str) -> list[UpdateRecord]:
        rows = self._all(
            "SELECT * FROM updates WHERE client_id = %s AND credit_state = %s ORDER BY seq",
            client_id,
            credit_state,
        )
        return [update_from_row(r) for r in rows]

    def actions(self, project_id: int, limit: int | None) -> list[ActionRecord]:
        rows = self._all(  # LIMIT NULL: all of them (SQLite's LIMIT -1)
            "SELECT * FROM actions WHERE project_id = %s ORDER BY id DESC LIMIT %s",
            project_id,
            limit,
        )
        return [action_from_row(r) for r in rows]

    def privacy_spends(self, project_id: int) -> list[tuple[float, float, int]]:
        rows = self._values(
            """SELECT noise_multiplier, sample_rate, SUM(steps) FROM privacy_spend
               WHERE project_id = %s AND client_id IS NULL
               GROUP BY noise_multiplier, sample_rate ORDER BY MIN(id)""",
            project_id,
        )
        return [(float(r[0]), float(r[1]), int(r[2])) for r in rows]

    def reported_epsilon(self, project_id: int) -> tuple[float | None, int]:
        rows = self._values(
            """SELECT MAX(epsilon), COUNT(*) FROM privacy_spend
               WHERE project_id = %s AND client_id IS NOT NULL""",
            project_id,
        )
        if not rows or rows[0][1] == 0:
            return None, 0
        return (None if rows[0][0] is None else float(rows[0][0])), int(rows[0][1])
