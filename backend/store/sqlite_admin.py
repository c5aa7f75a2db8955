"""The SQL of the organiser's writes (``backend.services.admin``): bans, setting updates
aside and the action log (``SQLiteTx.publish_version`` publishes a rollback).

``SQLiteAdminWrites`` is a base of ``sqlite_writes.SQLiteTx``; like it, it runs inside the
transaction ``sqlite_writer`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.base import ActionRecord
from backend.store.sqlite_reads import SQLiteReads


class SQLiteAdminWrites(SQLiteReads):
    """The organiser's part of ``WriteTx``."""

    def set_client_ban(self, client_id: str, banned_at: float | None, reason: str | None) -> None:
        self._run(
            "UPDATE clients SET banned_at = ?, ban_reason = ? WHERE id = ?",
            banned_at,
            reason,
            client_id,
        )

    def end_client_leases(self, project_id: int, client_id: str) -> int:
        return self._run(
            """UPDATE tasks SET status = 'cancelled'
               WHERE project_id = ? AND client_id = ? AND status = 'leased'""",
            project_id,
            client_id,
        )

    def set_aside_updates(
        self, update_ids: list[str], verdict: str, detail: str, now: float
    ) -> list[str]:
        done: list[str] = []
        for uid in update_ids:
            rows = self._all(  # fetch all: the statement must run to its end before COMMIT
                """UPDATE updates SET status = 'rejected', verdict = ?, verdict_detail = ?
                   WHERE id = ? AND status = 'pending' RETURNING task_id""",
                verdict,
                detail[:500],
                uid,
            )
            if not rows:
                continue
            # Its task no longer answers its round: a sync round waits for another update.
            self._run(
                """UPDATE tasks SET status = 'rejected', rejected_code = ?, rejected_at = ?
                   WHERE id = ? AND status = 'answered'""",
                verdict,
                now,
                rows[0][0],
            )
            done.append(uid)
        return done

    def insert_action(self, action: ActionRecord) -> int:
        return self._insert_id(
            """INSERT INTO actions (project_id, at, action, target, reason, detail)
               VALUES (?, ?, ?, ?, ?, ?)""",
            action.project_id,
            action.at,
            action.action,
            action.target,
            action.reason,
            action.detail,
        )
