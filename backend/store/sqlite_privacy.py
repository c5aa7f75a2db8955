"""The SQL of the privacy ledger's writes (``backend.services.privacy``, migration 9).

``SQLitePrivacyWrites`` is a base of ``sqlite_writes.SQLiteTx``; like it, it runs inside
the transaction ``sqlite_writer`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.sqlite_reads import SQLiteReads


class SQLitePrivacyWrites(SQLiteReads):
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
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            project_id,
            at,
            client_id,
            noise_multiplier,
            sample_rate,
            steps,
            epsilon,
        )
