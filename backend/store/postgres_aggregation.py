"""The SQL of aggregation on PostgreSQL (``sqlite_writes``' claims and versions): claiming
a round's updates once, keeping some out, publishing the version, releasing dead claims.

``PostgresAggregationWrites`` is a base of ``postgres_writes.PostgresTx``; it runs inside
the transaction ``postgres`` opened, holding the writer lock, and never commits itself.
A statement that fails aborts a PostgreSQL transaction (SQLite undoes that statement
alone): the one failure callers expect and go on from, a second claim
(``ClaimConflict``), is therefore asked first and backed by the index in a savepoint.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from backend.store.base import AggregationClaim, ClaimConflict, VersionRecord
from backend.store.postgres_reads import PostgresReads
from backend.store.postgres_rows import dump, update_from_row


class PostgresAggregationWrites(PostgresReads):
    """Aggregation's part of ``WriteTx``: versions and claims."""

    def insert_version(self, version: VersionRecord) -> None:
        self._run(
            """INSERT INTO versions (project_id, version, digest, created_at, signature,
                 metrics, updates, contributors, strategy_state_digest, parent_digest,
                 parent_manifest_digest, updates_root)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            version.project_id,
            version.version,
            version.digest,
            version.created_at,
            version.signature,
            dump(version.metrics),
            version.updates,
            version.contributors,
            version.strategy_state_digest,
            version.parent_digest,
            version.parent_manifest_digest,
            version.updates_root,
        )
        self._many(
            """INSERT INTO version_updates (project_id, version, position, update_id,
                 payload_digest) VALUES (%s, %s, %s, %s, %s)""",
            [
                (version.project_id, version.version, i, update_id, digest)
                for i, (update_id, digest) in enumerate(version.leaves)
            ],
        )

    def claim_aggregation(
        self, project_id: int, base_version: int, owner: str, now: float, update_ids: list[str]
    ) -> AggregationClaim:
        # Asked first, under the writer lock, so a refused claim takes no id (a sequence
        # never gives one back, and SQLite's ids have no gaps from refusals); the index
        # is the backstop, in a savepoint: its refusal must not abort the caller's
        # transaction (SQLite undoes only the failed INSERT, and callers go on from it).
        if self.aggregation_running(project_id):
            raise ClaimConflict(f"an aggregation of project {project_id} is already running")
        self._c.execute("SAVEPOINT claim_aggregation")
        try:
            rows = self._values(
                """INSERT INTO aggregations (project_id, base_version, status, owner, claimed_at)
                   VALUES (%s, %s, 'running', %s, %s) RETURNING id""",
                project_id,
                base_version,
                owner,
                now,
            )
        except psycopg.errors.IntegrityError:
            self._c.execute("ROLLBACK TO SAVEPOINT claim_aggregation")
            self._c.execute("RELEASE SAVEPOINT claim_aggregation")
            raise ClaimConflict(
                f"an aggregation of project {project_id} is already running"
            ) from None
        self._c.execute("RELEASE SAVEPOINT claim_aggregation")
        claim_id = int(rows[0][0])
        self._many(
            "UPDATE updates SET status = 'claimed', aggregation_id = %s"
            " WHERE id = %s AND status = 'pending'",
            [(claim_id, uid) for uid in update_ids],
        )
        claimed = self._all(
            "SELECT * FROM updates WHERE aggregation_id = %s ORDER BY seq", claim_id
        )
        return AggregationClaim(
            id=claim_id,
            project_id=project_id,
            base_version=base_version,
            owner=owner,
            claimed_at=now,
            updates=[update_from_row(r) for r in claimed],
        )

    def cancel_round_leases(self, project_id: int, base_version: int) -> int:
        return self._run(
            """UPDATE tasks SET status = 'cancelled'
               WHERE project_id = %s AND base_version = %s AND status = 'leased'""",
            project_id,
            base_version,
        )

    def aggregation_owner(self, aggregation_id: int) -> str | None:
        rows = self._values(
            "SELECT owner FROM aggregations WHERE id = %s AND status = 'running'", aggregation_id
        )
        return str(rows[0][0]) if rows else None

    def reject_updates(self, claim_id: int, verdicts: dict[str, tuple[str, str]]) -> None:
        """Keep these claimed updates out of the aggregate, each with its reason."""
        self._many(
            """UPDATE updates SET status = 'rejected', verdict = %s, verdict_detail = %s
               WHERE id = %s AND aggregation_id = %s AND status = 'claimed'""",
            [(code, detail[:500], uid, claim_id) for uid, (code, detail) in verdicts.items()],
        )

    def quarantine_updates(self, claim_id: int, reasons: dict[str, str]) -> None:
        self._many(
            """UPDATE updates SET status = 'quarantined', quarantine_reason = %s
               WHERE id = %s AND aggregation_id = %s AND status = 'claimed'""",
            [(reason[:500], uid, claim_id) for uid, reason in reasons.items()],
        )

    def finish_aggregation(
        self, claim: AggregationClaim, version: VersionRecord, dropped: list[str]
    ) -> None:
        self.insert_version(version)
        self._run(
            "UPDATE projects SET current_version = %s WHERE id = %s",
            version.version,
            claim.project_id,
        )
        self._run(
            "UPDATE updates SET status = 'aggregated'"
            " WHERE aggregation_id = %s AND status = 'claimed'",
            claim.id,
        )
        self._many(
            "UPDATE updates SET status = 'dropped' WHERE id = %s AND aggregation_id = %s",
            [(uid, claim.id) for uid in dropped],
        )
        self._run("UPDATE aggregations SET status = 'done' WHERE id = %s", claim.id)

    def publish_version(self, version: VersionRecord, expected_current: int) -> bool:
        if (
            self._run(
                "UPDATE projects SET current_version = %s WHERE id = %s AND current_version = %s",
                version.version,
                version.project_id,
                expected_current,
            )
            != 1
        ):
            return False
        self.insert_version(version)
        return True

    def release_stale_claims(self, is_stale: Callable[[str, float], bool]) -> int:
        rows = self._values(  # by project, as SQLite reads them (one_running_aggregation)
            "SELECT id, owner, claimed_at FROM aggregations WHERE status = 'running'"
            " ORDER BY project_id"
        )
        released = 0
        for claim_id, owner, claimed_at in rows:
            if not is_stale(str(owner), float(claimed_at)):
                continue
            self._run(
                """UPDATE updates SET status = 'pending', aggregation_id = NULL
                   WHERE aggregation_id = %s AND status = 'claimed'""",
                claim_id,
            )
            self._run("UPDATE aggregations SET status = 'abandoned' WHERE id = %s", claim_id)
            released += 1
        return released
