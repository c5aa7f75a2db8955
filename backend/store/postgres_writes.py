"""The SQL of writes on PostgreSQL: ``WriteTx``, statement for statement ``sqlite_writes``.

``PostgresTx`` is what ``PostgresStore.read()`` and ``write()`` yield: the reads of
``PostgresReads`` plus the statements of every write transaction: leases, uploads and credit here;
aggregation's in ``postgres_aggregation``, the organiser's in ``postgres_admin``,
retention's in ``postgres_retention``, membership's in ``postgres_clients``, the privacy
ledger's in ``postgres_privacy``. It runs inside the transaction ``postgres`` opened,
holding the writer lock, and never commits, locks or syncs itself.
"""

from __future__ import annotations

from typing import Any

from backend.store.base import ProjectRecord, TaskRecord, UpdateRecord
from backend.store.postgres_admin import PostgresAdminWrites
from backend.store.postgres_aggregation import PostgresAggregationWrites
from backend.store.postgres_clients import PostgresClientWrites
from backend.store.postgres_privacy import PostgresPrivacyWrites
from backend.store.postgres_retention import PostgresRetention
from backend.store.postgres_rows import dump, task_from_row

INFINITE_CHECK_ERROR = 1e300
"""What a spot check's infinite difference is stored as: the number SQLite's store writes."""


class PostgresTx(
    PostgresAggregationWrites,
    PostgresAdminWrites,
    PostgresRetention,
    PostgresClientWrites,
    PostgresPrivacyWrites,
):
    """Reads and (on the writer connection) writes; implements ``ReadTx`` and ``WriteTx``."""

    def insert_project(self, project: ProjectRecord) -> int:
        rows = self._values(
            """INSERT INTO projects (name, description, recipe, recipe_version, hparams,
                 strategy, settings, status, current_version, public_key, created_at,
                 shard_sizes)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            project.name,
            project.description,
            project.recipe,
            project.recipe_version,
            dump(project.hparams),
            dump(project.strategy),
            dump(project.settings),
            project.status,
            project.current_version,
            project.public_key,
            project.created_at,
            dump(project.shard_sizes) if project.shard_sizes is not None else None,
        )
        return int(rows[0][0])

    def set_project_status(self, project_id: int, status: str) -> None:
        self._run("UPDATE projects SET status = %s WHERE id = %s", status, project_id)

    def insert_challenge(self, project_id: int, challenge: str, expires_at: float) -> None:
        self._run(
            "INSERT INTO challenges (challenge, project_id, expires_at) VALUES (%s, %s, %s)",
            challenge,
            project_id,
            expires_at,
        )

    def consume_challenge(self, project_id: int, challenge: str, now: float) -> bool:
        return (
            self._run(
                """UPDATE challenges SET used = 1
                   WHERE challenge = %s AND project_id = %s AND used = 0 AND expires_at >= %s""",
                challenge,
                project_id,
                now,
            )
            == 1
        )

    def delete_spent_challenges(self, now: float) -> int:
        return self._run("DELETE FROM challenges WHERE used = 1 OR expires_at < %s", now)

    def insert_invite(
        self, project_id: int, code_hash: str, created_at: float, max_uses: int
    ) -> None:
        self._run(
            "INSERT INTO invites (code_hash, project_id, created_at, max_uses)"
            " VALUES (%s, %s, %s, %s)",
            code_hash,
            project_id,
            created_at,
            max_uses,
        )

    def consume_invite(self, project_id: int, code_hash: str) -> bool:
        return (
            self._run(
                """UPDATE invites SET uses = uses + 1
                   WHERE code_hash = %s AND project_id = %s AND uses < max_uses""",
                code_hash,
                project_id,
            )
            == 1
        )

    def expire_leases(self, now: float) -> list[int]:
        # SQLite meets them in its (status, deadline) index: by deadline, each project once.
        rows = self._values(
            """SELECT project_id FROM tasks WHERE status = 'leased' AND deadline < %s
               GROUP BY project_id ORDER BY MIN(deadline), project_id""",
            now,
        )
        if rows:
            self._run(
                "UPDATE tasks SET status = 'expired' WHERE status = 'leased' AND deadline < %s",
                now,
            )
        return [int(r[0]) for r in rows]

    def live_task_for_client(
        self, project_id: int, client_id: str, now: float
    ) -> TaskRecord | None:
        row = self._one(
            """SELECT * FROM tasks WHERE project_id = %s AND client_id = %s AND status = 'leased'
               AND deadline >= %s ORDER BY issued_at DESC LIMIT 1""",
            project_id,
            client_id,
            now,
        )
        return task_from_row(row) if row else None

    def client_has_task(self, project_id: int, client_id: str, base_version: int) -> bool:
        rows = self._values(
            """SELECT 1 FROM tasks WHERE project_id = %s AND client_id = %s
                 AND base_version = %s AND status IN ('leased', 'answered', 'rejected')
               LIMIT 1""",
            project_id,
            client_id,
            base_version,
        )
        return bool(rows)

    def next_shard(self, project_id: int, num_shards: int) -> int:
        rows = self._values(
            "UPDATE projects SET next_shard = next_shard %% %s + 1 WHERE id = %s"
            " RETURNING next_shard",
            max(1, num_shards),
            project_id,
        )
        assert rows
        return int(rows[0][0]) - 1

    def insert_task(self, task: TaskRecord) -> None:
        self._run(
            """INSERT INTO tasks (id, project_id, client_id, base_version, shard_index, status,
                 issued_at, deadline, max_examples, manifest, signature)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            task.id,
            task.project_id,
            task.client_id,
            task.base_version,
            task.shard_index,
            task.status,
            task.issued_at,
            task.deadline,
            task.max_examples,
            dump(task.manifest),
            task.signature,
        )

    def set_task_lease(
        self, task_id: str, deadline: float, manifest: dict[str, Any], signature: str
    ) -> None:
        self._run(
            "UPDATE tasks SET deadline = %s, manifest = %s, signature = %s WHERE id = %s",
            deadline,
            dump(manifest),
            signature,
            task_id,
        )

    def set_task_status(self, task_id: str, status: str) -> None:
        self._run("UPDATE tasks SET status = %s WHERE id = %s", status, task_id)

    def reject_task(
        self, task_id: str, project_id: int, client_id: str, code: str, now: float
    ) -> bool:
        return (
            self._run(
                """UPDATE tasks SET status = 'rejected', rejected_code = %s, rejected_at = %s
                   WHERE id = %s AND project_id = %s AND client_id = %s AND status = 'leased'""",
                code,
                now,
                task_id,
                project_id,
                client_id,
            )
            == 1
        )

    def set_client_pace(
        self,
        client_id: str,
        s_per_step: float,
        dev: float,
        samples: int,
        at: float,
        examples: int,
    ) -> None:
        self._run(
            """UPDATE clients SET pace_s_per_step = %s, pace_dev = %s, pace_samples = %s,
                 pace_at = %s, pace_examples = %s WHERE id = %s""",
            s_per_step,
            dev,
            samples,
            at,
            examples,
            client_id,
        )

    def insert_update(self, update: UpdateRecord) -> None:
        self._run(
            """INSERT INTO updates (id, project_id, task_id, client_id, base_version,
                 payload_digest, num_examples, max_examples, credit, accepted_at, manifest_b64,
                 signature, metrics, status, aggregation_id, norm, source_net, credit_state)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
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
        )

    def drop_updates(self, update_ids: list[str]) -> None:
        self._many(
            "UPDATE updates SET status = 'dropped' WHERE id = %s AND status = 'pending'",
            [(uid,) for uid in update_ids],
        )

    def add_pending_credit(self, client_id: str, credit: float, now: float) -> None:
        self._run(
            """UPDATE clients SET credit_pending = credit_pending + %s, accepted = accepted + 1,
                 refused_in_a_row = 0, last_seen = %s WHERE id = %s""",
            credit,
            now,
            client_id,
        )

    def settle_credit(self, update_ids: list[str], state: str) -> list[tuple[str, float]]:
        """Mark the pending credit of these updates ``state`` (granted or withheld) and
        take it off their contributors' pending sums; returns (client id, credit) of the
        updates that were pending (each settles once: the state changes in the statement
        that reads it, under the writer lock)."""
        settled: list[tuple[str, float]] = []
        for uid in update_ids:
            rows = self._values(
                """UPDATE updates SET credit_state = %s WHERE id = %s AND credit_state = 'pending'
                   RETURNING client_id, credit""",
                state,
                uid,
            )
            if not rows:
                continue
            client_id, credit = str(rows[0][0]), float(rows[0][1])
            self._run(
                "UPDATE clients SET credit_pending = GREATEST(0, credit_pending - %s)"
                " WHERE id = %s",
                credit,
                client_id,
            )
            settled.append((client_id, credit))
        return settled

    def grant_credit(self, client_id: str, credit: float, recent_sum: float, now: float) -> None:
        self._run(
            "UPDATE clients SET credit = credit + %s, recent_sum = %s, recent_time = %s"
            " WHERE id = %s",
            credit,
            recent_sum,
            now,
            client_id,
        )

    def record_check(
        self, client_id: str, update_id: str, error: float, passed: bool, now: float
    ) -> None:
        self._run(
            "UPDATE updates SET check_error = %s WHERE id = %s",
            error if error != float("inf") else INFINITE_CHECK_ERROR,
            update_id,
        )
        if passed:
            self._run(
                """UPDATE clients SET checks_passed = checks_passed + 1,
                     last_check_passed_at = %s WHERE id = %s""",
                now,
                client_id,
            )
        else:
            self._run(
                "UPDATE clients SET checks_failed = checks_failed + 1 WHERE id = %s", client_id
            )

    def revoke_credit(
        self, client_id: str, update_ids: list[str], credit: float, recent_sum: float, now: float
    ) -> None:
        self._many(
            "UPDATE updates SET credit_state = 'revoked'"
            " WHERE id = %s AND credit_state = 'granted'",
            [(uid,) for uid in update_ids],
        )
        self._run(
            """UPDATE clients SET credit = GREATEST(0, credit - %s), recent_sum = %s,
                 recent_time = %s WHERE id = %s""",
            credit,
            recent_sum,
            now,
            client_id,
        )

    def count_rejection(self, client_id: str, now: float, *, in_a_row: bool = False) -> None:
        self._run(
            """UPDATE clients SET rejected = rejected + 1, last_seen = %s,
                 refused_in_a_row = refused_in_a_row + %s,
                 refused_at = CASE WHEN %s THEN %s ELSE refused_at END WHERE id = %s""",
            now,
            int(in_a_row),
            bool(in_a_row),
            now,
            client_id,
        )
