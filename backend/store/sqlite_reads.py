"""The SQL of reads: ``ReadTx`` on a SQLite connection.

``SQLiteReads`` only runs statements on the connection it is given; which connection and
in which transaction is ``sqlite_writer``'s business (a per-thread reader in ``read()``,
the one writer in ``write()``). ``sqlite_writes.SQLiteTx`` adds the writes. Every statement
goes through ``_one``/``_all``/``_run``/``_many``/``_insert_id``: the PostgreSQL store
(``postgres_reads``) inherits these queries and overrides only those helpers and the
statements whose SQL differs there.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from backend.store.base import (
    ActionRecord,
    ClientRecord,
    ProjectRecord,
    RoundCounts,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)
from backend.store.sqlite_rows import (
    SELECT_PROJECTS,
    Row,
    action_from_row,
    client_from_row,
    project_from_row,
    task_from_row,
    update_from_row,
    version_from_row,
)

SECONDS_PER_DAY = 86_400
"""A UTC day, for ``credit_by_day``."""


class SQLiteReads:
    """The queries of ``ReadTx``, on one connection inside a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def _one(self, sql: str, *args: Any) -> Row | None:
        row: sqlite3.Row | None = self._c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, *args: Any) -> list[Row]:
        return list(self._c.execute(sql, args).fetchall())

    def _run(self, sql: str, *args: Any) -> int:
        return self._c.execute(sql, args).rowcount

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._c.executemany(sql, rows)

    def _insert_id(self, sql: str, *args: Any) -> int:
        """Run an INSERT; the id of the row it inserted."""
        cur = self._c.execute(sql, args)
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    # --- reads -----------------------------------------------------------------------------
    def projects(self) -> list[ProjectRecord]:
        return [project_from_row(r) for r in self._all(SELECT_PROJECTS + " ORDER BY name")]

    def project_by_name(self, name: str) -> ProjectRecord | None:
        row = self._one(SELECT_PROJECTS + " WHERE name = ?", name)
        return project_from_row(row) if row else None

    def project_by_id(self, project_id: int) -> ProjectRecord | None:
        row = self._one(SELECT_PROJECTS + " WHERE id = ?", project_id)
        return project_from_row(row) if row else None

    def version(self, project_id: int, version: int) -> VersionRecord | None:
        row = self._one(
            "SELECT * FROM versions WHERE project_id = ? AND version = ?", project_id, version
        )
        return version_from_row(row) if row else None

    def versions(self, project_id: int) -> list[VersionRecord]:
        rows = self._all("SELECT * FROM versions WHERE project_id = ? ORDER BY version", project_id)
        return [version_from_row(r) for r in rows]

    def version_leaves(self, project_id: int, version: int) -> list[tuple[str, str]]:
        rows = self._all(
            """SELECT update_id, payload_digest FROM version_updates
               WHERE project_id = ? AND version = ? ORDER BY position""",
            project_id,
            version,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def leaves_matching(self, project_id: int, update: str) -> list[tuple[int, str, str]]:
        rows = self._all(
            """SELECT version, update_id, payload_digest FROM version_updates
               WHERE project_id = ? AND (update_id = ? OR payload_digest = ?)
               ORDER BY version, position LIMIT 100""",
            project_id,
            update,
            update,
        )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def client(self, client_id: str) -> ClientRecord | None:
        row = self._one("SELECT * FROM clients WHERE id = ?", client_id)
        return client_from_row(row) if row else None

    def client_by_key(self, project_id: int, public_key: str) -> ClientRecord | None:
        row = self._one(
            "SELECT * FROM clients WHERE project_id = ? AND public_key = ?", project_id, public_key
        )
        return client_from_row(row) if row else None

    def clients(self, project_id: int) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = ? ORDER BY created_at", project_id
        )
        return [client_from_row(r) for r in rows]

    def clients_named(self, project_id: int, name_key: str) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = ? AND name_key = ? ORDER BY rowid",
            project_id,
            name_key,
        )
        return [client_from_row(r) for r in rows]

    def team_spelling(self, project_id: int, team_key: str) -> str | None:
        row = self._one(
            "SELECT team FROM clients WHERE project_id = ? AND team_key = ?"
            " ORDER BY created_at, rowid LIMIT 1",
            project_id,
            team_key,
        )
        return str(row["team"]) if row else None

    def clients_without_name_keys(self, project_id: int) -> list[ClientRecord]:
        rows = self._all(
            "SELECT * FROM clients WHERE project_id = ? AND name_key IS NULL ORDER BY rowid",
            project_id,
        )
        return [client_from_row(r) for r in rows]

    def task(self, task_id: str) -> TaskRecord | None:
        row = self._one("SELECT * FROM tasks WHERE id = ?", task_id)
        return task_from_row(row) if row else None

    def update_for_task(self, task_id: str) -> UpdateRecord | None:
        row = self._one("SELECT * FROM updates WHERE task_id = ?", task_id)
        return update_from_row(row) if row else None

    def update(self, update_id: str) -> UpdateRecord | None:
        row = self._one("SELECT * FROM updates WHERE id = ?", update_id)
        return update_from_row(row) if row else None

    def update_with_payload(self, project_id: int, digest: str) -> UpdateRecord | None:
        """The first update of the project whose payload has this sha256."""
        row = self._one(
            "SELECT * FROM updates WHERE project_id = ? AND payload_digest = ? ORDER BY seq LIMIT 1",
            project_id,
            digest,
        )
        return update_from_row(row) if row else None

    def granted_updates_since(self, client_id: str, since: float) -> list[UpdateRecord]:
        rows = self._all(
            """SELECT * FROM updates WHERE client_id = ? AND credit_state = 'granted'
                 AND accepted_at > ? ORDER BY seq""",
            client_id,
            since,
        )
        return [update_from_row(r) for r in rows]

    def recent_norms(self, project_id: int, limit: int) -> list[float]:
        rows = self._all(
            """SELECT norm FROM updates WHERE project_id = ? AND norm IS NOT NULL
                 AND status = 'aggregated' ORDER BY seq DESC LIMIT ?""",
            project_id,
            limit,
        )
        return [float(r[0]) for r in rows]

    def updates(self, project_id: int) -> list[UpdateRecord]:
        rows = self._all("SELECT * FROM updates WHERE project_id = ? ORDER BY seq", project_id)
        return [update_from_row(r) for r in rows]

    def round_counts(self, project_id: int, base_version: int, now: float) -> RoundCounts:
        row = self._one(
            """SELECT
                 COALESCE(SUM(CASE WHEN status = 'leased' AND deadline >= ? THEN 1 ELSE 0 END), 0),
                 COALESCE(SUM(CASE WHEN status = 'answered' THEN 1 ELSE 0 END), 0)
               FROM tasks WHERE project_id = ? AND base_version = ?""",
            now,
            project_id,
            base_version,
        )
        assert row is not None
        return RoundCounts(live_leases=int(row[0]), answered=int(row[1]))

    def live_round_leases(
        self, project_id: int, base_version: int, now: float
    ) -> list[tuple[int, float]]:
        rows = self._all(  # the tasks_round index
            """SELECT shard_index, issued_at FROM tasks
               WHERE project_id = ? AND base_version = ? AND status = 'leased' AND deadline >= ?
               ORDER BY issued_at, id""",
            project_id,
            base_version,
            now,
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    def live_leases(self, project_id: int, now: float) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM tasks WHERE project_id = ? AND status = 'leased' AND deadline >= ?",
            project_id,
            now,
        )
        return int(row[0]) if row else 0

    def pending_updates(self, project_id: int) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM updates WHERE project_id = ? AND status = 'pending'", project_id
        )
        return int(row[0]) if row else 0

    def client_pending_updates(self, project_id: int, client_id: str) -> int:
        row = self._one(
            """SELECT COUNT(*) FROM updates WHERE project_id = ? AND client_id = ?
                 AND status IN ('pending', 'claimed')""",
            project_id,
            client_id,
        )
        return int(row[0]) if row else 0

    def pending_update_records(
        self, project_id: int, base_version: int | None, limit: int | None
    ) -> list[UpdateRecord]:
        sql = "SELECT * FROM updates WHERE project_id = ? AND status = 'pending'"
        args: list[Any] = [project_id]
        if base_version is not None:
            sql += " AND base_version = ?"
            args.append(base_version)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [update_from_row(r) for r in self._all(sql, *args)]

    def next_deadline(self, now: float) -> float | None:
        row = self._one("SELECT MIN(deadline) FROM tasks WHERE status = 'leased'")
        return float(row[0]) if row and row[0] is not None else None

    def version_times(self, project_id: int, limit: int) -> list[float]:
        rows = self._all(
            "SELECT created_at FROM versions WHERE project_id = ? ORDER BY version DESC LIMIT ?",
            project_id,
            limit,
        )
        return [float(r[0]) for r in reversed(rows)]

    def rejected_tasks(self, project_id: int) -> int:
        row = self._one(  # the (status, deadline) index: only rejected rows are read
            "SELECT COUNT(*) FROM tasks WHERE status = 'rejected' AND project_id = ?", project_id
        )
        return int(row[0]) if row else 0

    def updates_with_status(self, project_id: int, status: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM updates WHERE project_id = ? AND status = ?", project_id, status
        )
        return int(row[0]) if row else 0

    def aggregation_running(self, project_id: int) -> bool:
        row = self._one(
            "SELECT 1 FROM aggregations WHERE project_id = ? AND status = 'running'", project_id
        )
        return row is not None

    def running_claims(self) -> list[tuple[int, str, float]]:
        rows = self._all(  # in one_running_aggregation's order, written out for PostgreSQL
            "SELECT project_id, owner, claimed_at FROM aggregations WHERE status = 'running'"
            " ORDER BY project_id"
        )
        return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    def oldest_pending_at(self, project_id: int) -> float | None:
        row = self._one(
            "SELECT MIN(accepted_at) FROM updates WHERE project_id = ? AND status = 'pending'",
            project_id,
        )
        return float(row[0]) if row and row[0] is not None else None

    def invite_count(self, project_id: int) -> int:
        row = self._one("SELECT COUNT(*) FROM invites WHERE project_id = ?", project_id)
        return int(row[0]) if row else 0

    def challenge_valid(self, project_id: int, challenge: str, now: float) -> bool:
        row = self._one(
            """SELECT 1 FROM challenges
               WHERE challenge = ? AND project_id = ? AND used = 0 AND expires_at >= ?""",
            challenge,
            project_id,
            now,
        )
        return row is not None

    def client_updates(self, client_id: str, credit_state: str) -> list[UpdateRecord]:
        rows = self._all(
            "SELECT * FROM updates WHERE client_id = ? AND credit_state = ? ORDER BY seq",
            client_id,
            credit_state,
        )
        return [update_from_row(r) for r in rows]

    def actions(self, project_id: int, limit: int | None) -> list[ActionRecord]:
        rows = self._all(
            "SELECT * FROM actions WHERE project_id = ? ORDER BY id DESC LIMIT ?",
            project_id,
            -1 if limit is None else limit,
        )
        return [action_from_row(r) for r in rows]

    def privacy_spends(self, project_id: int) -> list[tuple[float, float, int]]:
        rows = self._all(
            """SELECT noise_multiplier, sample_rate, SUM(steps) FROM privacy_spend
               WHERE project_id = ? AND client_id IS NULL
               GROUP BY noise_multiplier, sample_rate ORDER BY MIN(id)""",
            project_id,
        )
        return [(float(r[0]), float(r[1]), int(r[2])) for r in rows]

    def reported_epsilon(self, project_id: int) -> tuple[float | None, int]:
        row = self._one(
            """SELECT MAX(epsilon), COUNT(*) FROM privacy_spend
               WHERE project_id = ? AND client_id IS NOT NULL""",
            project_id,
        )
        if row is None or row[1] == 0:
            return None, 0
        return (None if row[0] is None else float(row[0])), int(row[1])

    # --- public stats pages and exports ----------------------------------------------------
    def clients_seen_since(self, project_id: int, since: float) -> int:
        """The project's members not banned and seen at ``since`` or later."""
        row = self._one(
            """SELECT COUNT(*) FROM clients
               WHERE project_id = ? AND last_seen >= ? AND banned_at IS NULL""",
            project_id,
            since,
        )
        return int(row[0]) if row else 0

    def credit_by_day(
        self, project_id: int, client_id: str | None, team: str | None
    ) -> list[tuple[int, float]]:
        # Whole seconds, then integer division: both stores truncate the same way (a cast
        # of a float to an integer rounds in PostgreSQL: half a second's difference at most).
        args: tuple[Any, ...]
        if client_id is not None:
            who, args = "client_id = ?", (project_id, client_id)
        else:
            who = "client_id IN (SELECT id FROM clients WHERE project_id = ? AND team = ?)"
            args = (project_id, project_id, team)
        rows = self._all(
            f"""SELECT CAST(accepted_at AS BIGINT) / {SECONDS_PER_DAY} AS day, SUM(credit)
                FROM updates WHERE project_id = ? AND {who} AND credit_state = 'granted'
                GROUP BY day ORDER BY day""",  # noqa: S608 - constants, no user text
            *args,
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    _REFUSALS = """
        SELECT COALESCE(rejected_at, 0) AS refused_at, COALESCE(rejected_code, 'unknown') AS code
          FROM tasks WHERE project_id = ? AND client_id = ? AND status = 'rejected'
        UNION ALL
        SELECT u.accepted_at, COALESCE(u.verdict, 'unknown') FROM updates u
          JOIN tasks t ON t.id = u.task_id
         WHERE u.project_id = ? AND u.client_id = ? AND u.status = 'rejected'
           AND t.status <> 'rejected'"""
    """A task refused for good carries its code; an update kept out of an aggregate after
    it was accepted keeps its task answered, and counts here by its verdict (when it was
    accepted), unless setting it aside also ended its task (then it is counted once)."""

    def refusals(
        self, project_id: int, client_id: str, limit: int
    ) -> tuple[dict[str, int], list[tuple[float, str]]]:
        args = (project_id, client_id, project_id, client_id)
        counts = self._all(
            f"SELECT code, COUNT(*) FROM ({self._REFUSALS}) AS r GROUP BY code",  # noqa: S608
            *args,
        )
        newest = self._all(
            f"SELECT refused_at, code FROM ({self._REFUSALS}) AS r"  # noqa: S608
            " ORDER BY refused_at DESC LIMIT ?",
            *args,
            limit,
        )
        return (
            {str(r[0]): int(r[1]) for r in counts},
            [(float(r[0]), str(r[1])) for r in newest],
        )
