"""The SQL of writes on PostgreSQL: ``WriteTx``, ``sqlite_writes``' statements but a few.

``PostgresTx`` is what ``PostgresStore.read()`` and ``write()`` yield: ``SQLiteTx``'s reads
and writes (with those of ``sqlite_admin``, ``sqlite_clients``, ``sqlite_privacy``,
``sqlite_retention`` and ``sqlite_updates``), every statement run through ``PostgresReads``' helpers (``?`` to
``%s``, rows read as ``sqlite3.Row``, ids by ``RETURNING id``). Written here are only the
statements that differ on PostgreSQL: the order of expired leases, a refused claim in a
savepoint, and digests asked a list at a time (``= ANY``). It runs inside the transaction
``postgres`` opened, holding the writer lock, and never commits, locks or syncs itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from backend.store.postgres_reads import PostgresReads
from backend.store.sqlite_writes import SQLiteTx, claim_conflict


class PostgresTx(PostgresReads, SQLiteTx):
    """Reads and (on the writer connection) writes; implements ``ReadTx`` and ``WriteTx``."""

    _GREATEST = "GREATEST"

    def expire_leases(self, now: float) -> list[int]:
        # SQLite meets them in its (status, deadline) index: by deadline, each project once.
        rows = self._all(
            """SELECT project_id FROM tasks WHERE status = 'leased' AND deadline < ?
               GROUP BY project_id ORDER BY MIN(deadline), project_id""",
            now,
        )
        if rows:
            self._run(
                "UPDATE tasks SET status = 'expired' WHERE status = 'leased' AND deadline < ?",
                now,
            )
        return [int(r[0]) for r in rows]

    def _insert_claim(self, project_id: int, base_version: int, owner: str, now: float) -> int:
        # A statement that fails aborts a PostgreSQL transaction (SQLite undoes that
        # statement alone), and callers go on from a refused claim. So it is asked first,
        # under the writer lock, and a refused claim takes no id (a sequence never gives
        # one back, and SQLite's ids have no gaps from refusals); the index is the
        # backstop, in a savepoint, so that its refusal does not abort the transaction.
        if self.aggregation_running(project_id):
            raise claim_conflict(project_id)
        self._pg.execute("SAVEPOINT claim_aggregation")
        try:
            claim_id = super()._insert_claim(project_id, base_version, owner, now)
        except psycopg.errors.IntegrityError:
            self._pg.execute("ROLLBACK TO SAVEPOINT claim_aggregation")
            self._pg.execute("RELEASE SAVEPOINT claim_aggregation")
            raise claim_conflict(project_id) from None
        self._pg.execute("RELEASE SAVEPOINT claim_aggregation")
        return claim_id

    def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        wanted = sorted(set(digests))
        if not wanted:
            return set()
        # Two statements for the whole list (SQLite asks once per digest; same answer).
        in_use = {
            str(r[0])
            for r in self._all(
                """SELECT DISTINCT payload_digest FROM updates
                   WHERE payload_digest = ANY(?) AND payload_state = 'kept'""",
                wanted,
            )
        }
        rest = [d for d in wanted if d not in in_use]
        if rest:  # never an accepted payload (its format tag differs), but blobs are shared
            for row in self._all(
                """SELECT digest, strategy_state_digest FROM versions
                   WHERE digest = ANY(?) OR strategy_state_digest = ANY(?)""",
                rest,
                rest,
            ):
                in_use |= set(rest) & {row[0], row[1]}
        return in_use
