"""The SQL of retention (``backend.services.retention``): which update payloads may go, and
their state from ``kept`` through ``pruning`` to ``pruned`` (migration 7).

``SQLiteRetention`` is a base of ``sqlite_writes.SQLiteTx``; like it, it runs inside the
transaction ``sqlite_writer`` opened and never commits itself (its writes only on the
writer connection).
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.store.sqlite_reads import SQLiteReads


class SQLiteRetention(SQLiteReads):
    """Retention's part of ``ReadTx`` and ``WriteTx``."""

    def mark_payloads_pruning(
        self, project_id: int, settled_up_to: int, now: float, limit: int
    ) -> int:
        # Final statuses only: nothing aggregates, checks or decodes such an update again
        # (a pending or claimed one is waiting for, or in, an aggregation). Its fate was
        # settled at the version its claim was to publish (the claim's base + 1); one never
        # claimed (dropped as stale, set aside) at its own base + 1.
        return self._run(
            """UPDATE updates SET payload_state = 'pruning', payload_pruned_at = ?
               WHERE seq IN (
                 SELECT u.seq FROM updates u LEFT JOIN aggregations a ON a.id = u.aggregation_id
                 WHERE u.project_id = ? AND u.payload_state = 'kept'
                   AND u.status IN ('aggregated', 'rejected', 'quarantined', 'dropped')
                   AND COALESCE(a.base_version, u.base_version) + 1 <= ?
                 ORDER BY u.seq LIMIT ?)""",
            now,
            project_id,
            settled_up_to,
            limit,
        )

    def payloads_pruning(self, project_id: int, limit: int) -> list[tuple[str, str]]:
        rows = self._all(
            """SELECT id, payload_digest FROM updates
               WHERE project_id = ? AND payload_state = 'pruning' ORDER BY seq LIMIT ?""",
            project_id,
            limit,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        in_use = {
            d
            for d in set(digests)
            if self._one(
                "SELECT 1 FROM updates WHERE payload_digest = ? AND payload_state = 'kept' LIMIT 1",
                d,
            )
        }
        rest = set(digests) - in_use
        if rest:  # never an accepted payload (its format tag differs), but blobs are shared
            for row in self._all("SELECT digest, strategy_state_digest FROM versions"):
                in_use |= rest & {row[0], row[1]}
        return in_use

    def set_payloads_pruned(self, update_ids: Sequence[str]) -> None:
        self._many(
            "UPDATE updates SET payload_state = 'pruned' WHERE id = ? AND payload_state = 'pruning'",
            [(uid,) for uid in update_ids],
        )
