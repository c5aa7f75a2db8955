"""The SQL of retention on PostgreSQL (``sqlite_retention``): which update payloads may
go, and their state from ``kept`` through ``pruning`` to ``pruned`` (migration 7).

``PostgresRetention`` is a base of ``postgres_writes.PostgresTx``; it runs inside the
transaction ``postgres`` opened and never commits itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.store.postgres_reads import PostgresReads


class PostgresRetention(PostgresReads):
    """Retention's part of ``ReadTx`` and ``WriteTx``."""

    def mark_payloads_pruning(
        self, project_id: int, settled_up_to: int, now: float, limit: int
    ) -> int:
        # As on SQLite: final statuses only, settled at the claim's base + 1 (or, never
        # claimed, at the update's own base + 1), oldest first.
        return self._run(
            """UPDATE updates SET payload_state = 'pruning', payload_pruned_at = %s
               WHERE seq IN (
                 SELECT u.seq FROM updates u LEFT JOIN aggregations a ON a.id = u.aggregation_id
                 WHERE u.project_id = %s AND u.payload_state = 'kept'
                   AND u.status IN ('aggregated', 'rejected', 'quarantined', 'dropped')
                   AND COALESCE(a.base_version, u.base_version) + 1 <= %s
                 ORDER BY u.seq LIMIT %s)""",
            now,
            project_id,
            settled_up_to,
            limit,
        )

    def payloads_pruning(self, project_id: int, limit: int) -> list[tuple[str, str]]:
        rows = self._values(
            """SELECT id, payload_digest FROM updates
               WHERE project_id = %s AND payload_state = 'pruning' ORDER BY seq LIMIT %s""",
            project_id,
            limit,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        wanted = sorted(set(digests))
        if not wanted:
            return set()
        # Two statements for the whole list (SQLite asks once per digest; same answer).
        in_use = {
            str(r[0])
            for r in self._values(
                """SELECT DISTINCT payload_digest FROM updates
                   WHERE payload_digest = ANY(%s) AND payload_state = 'kept'""",
                wanted,
            )
        }
        rest = [d for d in wanted if d not in in_use]
        if rest:  # never an accepted payload (its format tag differs), but blobs are shared
            for row in self._values(
                """SELECT digest, strategy_state_digest FROM versions
                   WHERE digest = ANY(%s) OR strategy_state_digest = ANY(%s)""",
                rest,
                rest,
            ):
                in_use |= set(rest) & {row[0], row[1]}
        return in_use

    def set_payloads_pruned(self, update_ids: Sequence[str]) -> None:
        self._many(
            """UPDATE updates SET payload_state = 'pruned'
               WHERE id = %s AND payload_state = 'pruning'""",
            [(uid,) for uid in update_ids],
        )
