"""The SQL of writes: ``WriteTx`` on the writer connection.

``SQLiteTx`` is what ``SQLiteStore.read()`` and ``write()`` yield: the reads of
``SQLiteReads`` plus the statements of every write transaction (the organiser's in
``sqlite_admin``, retention's in ``sqlite_retention``). It runs inside the
transaction ``sqlite_writer`` opened and never commits, locks or syncs itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from backend.store.base import (
    AggregationClaim,
    ClaimConflict,
    ProjectRecord,
    TaskRecord,
    VersionRecord,
)
from backend.store.sqlite_admin import SQLiteAdminWrites
from backend.store.sqlite_clients import SQLiteClientWrites
from backend.store.sqlite_privacy import SQLitePrivacyWrites
from backend.store.sqlite_retention import SQLiteRetention
from backend.store.sqlite_rows import dump, task_from_row, update_from_row
from backend.store.sqlite_updates import SQLiteUpdateWrites

INFINITE_CHECK_ERROR = 1e300
"""What a spot check's infinite difference is stored as (a float column holds no inf)."""


def claim_conflict(project_id: int) -> ClaimConflict:
    return ClaimConflict(f"an aggregation of project {project_id} is already running")


class SQLiteTx(
    SQLiteAdminWrites,
    SQLiteRetention,
    SQLiteClientWrites,
    SQLitePrivacyWrites,
    SQLiteUpdateWrites,
):
    """Reads and (on the writer connection) writes; implements ``ReadTx`` and ``WriteTx``."""

    _GREATEST = "MAX"
    """The larger of two values: SQLite's scalar MAX (PostgreSQL's GREATEST)."""

    # --- writes ----------------------------------------------------------------------------
    def insert_project(self, project: ProjectRecord) -> int:
        return self._insert_id(
            """INSERT INTO projects (name, description, recipe, recipe_version, hparams, strategy,
                 settings, status, current_version, public_key, created_at, shard_sizes)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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

    def set_project_status(self, project_id: int, status: str) -> None:
        self._run("UPDATE projects SET status = ? WHERE id = ?", status, project_id)

    def set_project_config(
        self, project_id: int, settings: dict[str, Any], hparams: dict[str, Any]
    ) -> None:
        self._run(
            "UPDATE projects SET settings = ?, hparams = ? WHERE id = ?",
            dump(settings),
            dump(hparams),
            project_id,
        )

    def insert_version(self, version: VersionRecord) -> None:
        self._run(
            """INSERT INTO versions (project_id, version, digest, created_at, signature, metrics,
                 updates, contributors, strategy_state_digest, parent_digest,
                 parent_manifest_digest, updates_root)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
                 payload_digest) VALUES (?, ?, ?, ?, ?)""",
            [
                (version.project_id, version.version, i, update_id, digest)
                for i, (update_id, digest) in enumerate(version.leaves)
            ],
        )

    def insert_challenge(self, project_id: int, challenge: str, expires_at: float) -> None:
        self._run(
            "INSERT INTO challenges (challenge, project_id, expires_at) VALUES (?, ?, ?)",
            challenge,
            project_id,
            expires_at,
        )

    def consume_challenge(self, project_id: int, challenge: str, now: float) -> bool:
        return (
            self._run(
                """UPDATE challenges SET used = 1
                   WHERE challenge = ? AND project_id = ? AND used = 0 AND expires_at >= ?""",
                challenge,
                project_id,
                now,
            )
            == 1
        )

    def delete_spent_challenges(self, now: float) -> int:
        return self._run("DELETE FROM challenges WHERE used = 1 OR expires_at < ?", now)

    def insert_invite(
        self, project_id: int, code_hash: str, created_at: float, max_uses: int
    ) -> None:
        self._run(
            "INSERT INTO invites (code_hash, project_id, created_at, max_uses) VALUES (?, ?, ?, ?)",
            code_hash,
            project_id,
            created_at,
            max_uses,
        )

    def consume_invite(self, project_id: int, code_hash: str) -> bool:
        return (
            self._run(
                """UPDATE invites SET uses = uses + 1
                   WHERE code_hash = ? AND project_id = ? AND uses < max_uses""",
                code_hash,
                project_id,
            )
            == 1
        )

    def expire_leases(self, now: float) -> list[int]:
        rows = self._all(
            "SELECT DISTINCT project_id FROM tasks WHERE status = 'leased' AND deadline < ?", now
        )
        if rows:
            self._run(
                "UPDATE tasks SET status = 'expired' WHERE status = 'leased' AND deadline < ?", now
            )
        return [int(r[0]) for r in rows]

    def live_task_for_client(
        self, project_id: int, client_id: str, now: float
    ) -> TaskRecord | None:
        row = self._one(
            """SELECT * FROM tasks WHERE project_id = ? AND client_id = ? AND status = 'leased'
               AND deadline >= ? ORDER BY issued_at DESC LIMIT 1""",
            project_id,
            client_id,
            now,
        )
        return task_from_row(row) if row else None

    def client_has_task(self, project_id: int, client_id: str, base_version: int) -> bool:
        row = self._one(
            """SELECT 1 FROM tasks WHERE project_id = ? AND client_id = ? AND base_version = ?
               AND status IN ('leased', 'answered', 'rejected') LIMIT 1""",
            project_id,
            client_id,
            base_version,
        )
        return row is not None

    def next_shard(self, project_id: int, num_shards: int) -> int:
        # One statement (the counter is only ever read here): RETURNING gives the new value.
        rows = self._all(  # fetch all: the statement must run to its end before COMMIT
            "UPDATE projects SET next_shard = next_shard % ? + 1 WHERE id = ? RETURNING next_shard",
            max(1, num_shards),
            project_id,
        )
        assert rows
        return int(rows[0][0]) - 1

    def insert_task(self, task: TaskRecord) -> None:
        self._run(
            """INSERT INTO tasks (id, project_id, client_id, base_version, shard_index, status,
                 issued_at, deadline, max_examples, manifest, signature)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
            "UPDATE tasks SET deadline = ?, manifest = ?, signature = ? WHERE id = ?",
            deadline,
            dump(manifest),
            signature,
            task_id,
        )

    def set_task_status(self, task_id: str, status: str) -> None:
        self._run("UPDATE tasks SET status = ? WHERE id = ?", status, task_id)

    def reject_task(
        self, task_id: str, project_id: int, client_id: str, code: str, now: float
    ) -> bool:
        return (
            self._run(
                """UPDATE tasks SET status = 'rejected', rejected_code = ?, rejected_at = ?
                   WHERE id = ? AND project_id = ? AND client_id = ? AND status = 'leased'""",
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
            """UPDATE clients SET pace_s_per_step = ?, pace_dev = ?, pace_samples = ?,
                 pace_at = ?, pace_examples = ? WHERE id = ?""",
            s_per_step,
            dev,
            samples,
            at,
            examples,
            client_id,
        )

    def drop_updates(self, update_ids: list[str]) -> None:
        self._many(
            "UPDATE updates SET status = 'dropped' WHERE id = ? AND status = 'pending'",
            [(uid,) for uid in update_ids],
        )

    def add_pending_credit(self, client_id: str, credit: float, now: float) -> None:
        self._run(
            """UPDATE clients SET credit_pending = credit_pending + ?, accepted = accepted + 1,
                 refused_in_a_row = 0, last_seen = ? WHERE id = ?""",
            credit,
            now,
            client_id,
        )

    def settle_credit(self, update_ids: list[str], state: str) -> list[tuple[str, float]]:
        """Mark the pending credit of these updates ``state`` (granted or withheld) and
        take it off their contributors' pending sums; returns (client id, credit) of the
        updates that were pending (each settles once: its state changes in the statement that
        reads it)."""
        settled: list[tuple[str, float]] = []
        for uid in update_ids:
            rows = self._all(  # fetch all: the statement must run to its end before COMMIT
                """UPDATE updates SET credit_state = ? WHERE id = ? AND credit_state = 'pending'
                   RETURNING client_id, credit""",
                state,
                uid,
            )
            if not rows:
                continue
            client_id, credit = str(rows[0][0]), float(rows[0][1])
            self._run(  # _GREATEST: a function's name, the dialect's, not data
                f"""UPDATE clients SET credit_pending = {self._GREATEST}(0, credit_pending - ?)
                   WHERE id = ?""",  # noqa: S608
                credit,
                client_id,
            )
            settled.append((client_id, credit))
        return settled

    def grant_credit(self, client_id: str, credit: float, recent_sum: float, now: float) -> None:
        self._run(
            "UPDATE clients SET credit = credit + ?, recent_sum = ?, recent_time = ? WHERE id = ?",
            credit,
            recent_sum,
            now,
            client_id,
        )

    def record_check(
        self, client_id: str, update_id: str, error: float, passed: bool, now: float
    ) -> None:
        self._run(
            "UPDATE updates SET check_error = ? WHERE id = ?",
            error if error != float("inf") else INFINITE_CHECK_ERROR,
            update_id,
        )
        if passed:
            self._run(
                """UPDATE clients SET checks_passed = checks_passed + 1,
                     last_check_passed_at = ? WHERE id = ?""",
                now,
                client_id,
            )
        else:
            self._run(
                "UPDATE clients SET checks_failed = checks_failed + 1 WHERE id = ?", client_id
            )

    def revoke_credit(
        self, client_id: str, update_ids: list[str], credit: float, recent_sum: float, now: float
    ) -> None:
        self._many(
            "UPDATE updates SET credit_state = 'revoked' WHERE id = ? AND credit_state = 'granted'",
            [(uid,) for uid in update_ids],
        )
        self._run(  # _GREATEST: a function's name, as in settle_credit
            f"""UPDATE clients SET credit = {self._GREATEST}(0, credit - ?), recent_sum = ?,
                 recent_time = ? WHERE id = ?""",  # noqa: S608
            credit,
            recent_sum,
            now,
            client_id,
        )

    def reject_updates(self, claim_id: int, verdicts: dict[str, tuple[str, str]]) -> None:
        """Keep these claimed updates out of the aggregate, each with its reason."""
        self._many(
            """UPDATE updates SET status = 'rejected', verdict = ?, verdict_detail = ?
               WHERE id = ? AND aggregation_id = ? AND status = 'claimed'""",
            [(code, detail[:500], uid, claim_id) for uid, (code, detail) in verdicts.items()],
        )

    def count_rejection(self, client_id: str, now: float, *, in_a_row: bool = False) -> None:
        self._run(
            """UPDATE clients SET rejected = rejected + 1, last_seen = ?,
                 refused_in_a_row = refused_in_a_row + ?,
                 refused_at = CASE WHEN ? THEN ? ELSE refused_at END WHERE id = ?""",
            now,
            int(in_a_row),
            bool(in_a_row),
            now,
            client_id,
        )

    def claim_aggregation(
        self, project_id: int, base_version: int, owner: str, now: float, update_ids: list[str]
    ) -> AggregationClaim:
        claim_id = self._insert_claim(project_id, base_version, owner, now)
        self._many(
            "UPDATE updates SET status = 'claimed', aggregation_id = ? WHERE id = ? AND status = 'pending'",
            [(claim_id, uid) for uid in update_ids],
        )
        rows = self._all("SELECT * FROM updates WHERE aggregation_id = ? ORDER BY seq", claim_id)
        return AggregationClaim(
            id=claim_id,
            project_id=project_id,
            base_version=base_version,
            owner=owner,
            claimed_at=now,
            updates=[update_from_row(r) for r in rows],
        )

    def _insert_claim(self, project_id: int, base_version: int, owner: str, now: float) -> int:
        """The new claim's id; ``ClaimConflict`` where one of the project is running (the
        unique partial index ``one_running_aggregation`` refuses it)."""
        try:
            return self._insert_id(
                """INSERT INTO aggregations (project_id, base_version, status, owner, claimed_at)
                   VALUES (?, ?, 'running', ?, ?)""",
                project_id,
                base_version,
                owner,
                now,
            )
        except sqlite3.IntegrityError:
            raise claim_conflict(project_id) from None

    def cancel_round_leases(self, project_id: int, base_version: int) -> int:
        return self._run(
            """UPDATE tasks SET status = 'cancelled'
               WHERE project_id = ? AND base_version = ? AND status = 'leased'""",
            project_id,
            base_version,
        )

    def aggregation_owner(self, aggregation_id: int) -> str | None:
        row = self._one(
            "SELECT owner FROM aggregations WHERE id = ? AND status = 'running'", aggregation_id
        )
        return str(row[0]) if row else None

    def finish_aggregation(
        self, claim: AggregationClaim, version: VersionRecord, dropped: list[str]
    ) -> None:
        self.insert_version(version)
        self._run(
            "UPDATE projects SET current_version = ? WHERE id = ?",
            version.version,
            claim.project_id,
        )
        self._run(
            "UPDATE updates SET status = 'aggregated' WHERE aggregation_id = ? AND status = 'claimed'",
            claim.id,
        )
        self._many(
            "UPDATE updates SET status = 'dropped' WHERE id = ? AND aggregation_id = ?",
            [(uid, claim.id) for uid in dropped],
        )
        self._run("UPDATE aggregations SET status = 'done' WHERE id = ?", claim.id)

    def publish_version(self, version: VersionRecord, expected_current: int) -> bool:
        if (
            self._run(
                "UPDATE projects SET current_version = ? WHERE id = ? AND current_version = ?",
                version.version,
                version.project_id,
                expected_current,
            )
            != 1
        ):
            return False
        self.insert_version(version)
        return True

    def quarantine_updates(self, claim_id: int, reasons: dict[str, str]) -> None:
        self._many(
            """UPDATE updates SET status = 'quarantined', quarantine_reason = ?
               WHERE id = ? AND aggregation_id = ? AND status = 'claimed'""",
            [(reason[:500], uid, claim_id) for uid, reason in reasons.items()],
        )

    def release_stale_claims(self, is_stale: Callable[[str, float], bool]) -> int:
        rows = self._all(  # in one_running_aggregation's order, written out for PostgreSQL
            "SELECT id, owner, claimed_at FROM aggregations WHERE status = 'running'"
            " ORDER BY project_id"
        )
        released = 0
        for row in rows:
            if not is_stale(str(row["owner"]), float(row["claimed_at"])):
                continue
            self._run(
                """UPDATE updates SET status = 'pending', aggregation_id = NULL
                   WHERE aggregation_id = ? AND status = 'claimed'""",
                row["id"],
            )
            self._run("UPDATE aggregations SET status = 'abandoned' WHERE id = ?", row["id"])
            released += 1
        return released
