"""The SQL of the organiser's writes on PostgreSQL (``sqlite_admin``): bans, setting
updates aside and the action log.

``PostgresAdminWrites`` is a base of ``postgres_writes.PostgresTx``; it runs inside the
transaction ``postgres`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.base import ActionRecord
from backend.store.postgres_reads import PostgresReads


class PostgresAdminWrites(PostgresReads):
    """The organiser's part of ``WriteTx``."""

    def set_client_ban(self, client_id: str, banned_at: float | None, reason: str | None) -> None:
        self._run(
            "UPDATE clients SET banned_at = %s, ban_reason = %s WHERE id = %s",
            banned_at,
            reason,
            client_id,
        )

    def end_client_leases(self, project_id: int, client_id: str) -> int:
        return self._run(
            """UPDATE tasks SET status = 'cancelled'
               WHERE project_id = %s AND client_id = %s AND status = 'leased'""",
            project_id,
            client_id,
        )

    def set_aside_updates(
        self, update_ids: list[str], verdict: str, detail: str, now: float
    ) -> list[str]:
        done: list[str] = []
        for uid in update_ids:
            rows = self._values(
                """UPDATE updates SET status = 'rejected', verdict = %s, verdict_detail = %s
                   WHERE id = %s AND status = 'pending' RETURNING task_id""",
                verdict,
                detail[:500],
                uid,
            )
            if not rows:
                continue
            # Its task no longer answers its round: a sync round waits for another update.
            self._run(
                """UPDATE tasks SET status = 'rejected', rejected_code = %s, rejected_at = %s
                   WHERE id = %s AND status = 'answered'""",
                verdict,
                now,
                rows[0][0],
            )
            done.append(uid)
        return done

    def insert_action(self, action: ActionRecord) -> int:
        rows = self._values(
            """INSERT INTO actions (project_id, at, action, target, reason, detail)
               VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
            action.project_id,
            action.at,
            action.action,
            action.target,
            action.reason,
            action.detail,
        )
        return int(rows[0][0])
