"""The SQL of an accepted update: its row, and the energy its contributor reported added
to the client's sums (migration 10, issue 16).

``SQLiteUpdateWrites`` is a base of ``sqlite_writes.SQLiteTx``; like it, it runs inside the
transaction ``sqlite_writer`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.base import UpdateRecord
from backend.store.sqlite_reads import SQLiteReads
from backend.store.sqlite_rows import dump

ESTIMATED = "estimated"
"""The energy method that is not a measurement (``federated.protocol.EnergyMethod``)."""


class SQLiteUpdateWrites(SQLiteReads):
    """Accepting an update's part of ``WriteTx``."""

    def insert_update(self, update: UpdateRecord) -> None:
        """Insert ``update``; the energy it reports (if any) is added to its client's
        ``energy_joules``, and to ``energy_measured_joules`` unless it was estimated."""
        self._run(
            """INSERT INTO updates (id, project_id, task_id, client_id, base_version, payload_digest,
                 num_examples, max_examples, credit, accepted_at, manifest_b64, signature, metrics,
                 status, aggregation_id, norm, source_net, credit_state, energy_joules,
                 energy_method) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            update.id,
            update.project_id,
            update.task_id,
            update.client_id,
            update.base_version,
            update.payload_digest,
            update.num_examples,
            update.max_examples,
            update.credit,
            update.accepted_at,
            update.manifest_b64,
            update.signature,
            dump(update.metrics),
            update.status,
            update.aggregation_id,
            update.norm,
            update.source_net,
            update.credit_state,
            update.energy_joules,
            update.energy_method,
        )
        joules = update.energy_joules
        if joules:
            measured = 0.0 if update.energy_method == ESTIMATED else joules
            self._run(
                "UPDATE clients SET energy_joules = energy_joules + ?,"
                " energy_measured_joules = energy_measured_joules + ? WHERE id = ?",
                joules,
                measured,
                update.client_id,
            )
