"""The SQL of the privacy ledger's writes on PostgreSQL (``sqlite_privacy``, migration 9).

``PostgresPrivacyWrites`` is a base of ``postgres_writes.PostgresTx``; it runs inside the
transaction ``postgres`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.postgres_reads import PostgresReads


class PostgresPrivacyWrites(PostgresReads):
    """The privacy ledger's part of ``WriteTx``."""

    def record_privacy_spend(
        self,
        project_id: int,
        at: float,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        client_id: str | None = None,
        epsilon: float | None = None,
    ) -> None:
        self._run(
            """INSERT INTO privacy_spend
               (project_id, at, client_id, noise_multiplier, sample_rate, steps, epsilon)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            project_id,
            at,
            client_id,
            noise_multiplier,
            sample_rate,
            steps,
            epsilon,
        )
