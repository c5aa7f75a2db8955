"""The storage interface: the transactions the coordinator needs (the plain records they
read and write are in ``records``, re-exported here).

Everything outside ``backend/store/`` talks to storage only through ``Store``,
``ReadTx`` and ``WriteTx``; none of it sees SQL. ``Store.write()`` is one serialised
transaction (SQLite: the single writer connection inside ``BEGIN IMMEDIATE``; PostgreSQL:
READ COMMITTED under one advisory lock across every process), so check-then-act
sequences inside it are atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from backend.store.records import (
    ActionRecord,
    AggregationClaim,
    ClientRecord,
    NameKeys,
    ProjectRecord,
    RoundCounts,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)

__all__ = [
    "ActionRecord",
    "AggregationClaim",
    "ClaimConflict",
    "ClientRecord",
    "NameKeys",
    "ProjectRecord",
    "ReadTx",
    "RoundCounts",
    "Store",
    "StoreOpenError",
    "TaskRecord",
    "UpdateRecord",
    "VersionRecord",
    "WriteTx",
]

T = TypeVar("T")


class ClaimConflict(Exception):
    """Another aggregation of the project is already running."""


class StoreOpenError(RuntimeError):
    """The store cannot be opened for a reason its operator can fix (the server cannot be
    reached, a privilege is missing, a newer Barnraise migrated it): the message says which
    and what to do, and the CLI prints it as one line."""


def refuse_newer_schema(found: int, latest: int, where: str) -> None:
    """A schema newer than this code's was migrated by a newer version, whose data this
    one would misread or damage: refuse to open it (never downgrade a coordinator in
    place; docs/deploy.md "Upgrades")."""
    if found > latest:
        raise StoreOpenError(
            f"{where} has schema version {found}, newer than this Barnraise's {latest}: a "
            "newer version migrated it; run that version (or upgrade this one)"
        )


class ReadTx(Protocol):
    """Consistent reads (one snapshot for the life of the transaction)."""

    def projects(self) -> list[ProjectRecord]: ...
    def project_by_name(self, name: str) -> ProjectRecord | None: ...
    def project_by_id(self, project_id: int) -> ProjectRecord | None: ...
    def version(self, project_id: int, version: int) -> VersionRecord | None: ...
    def versions(self, project_id: int) -> list[VersionRecord]: ...
    def version_leaves(self, project_id: int, version: int) -> list[tuple[str, str]]:
        """(update id, payload digest) under the version's ``updates_root``, in tree order."""
        ...

    def leaves_matching(self, project_id: int, update: str) -> list[tuple[int, str, str]]:
        """(version, update id, payload digest) of every leaf whose update id or payload
        digest is ``update``, oldest version first."""
        ...

    def client(self, client_id: str) -> ClientRecord | None: ...
    def client_by_key(self, project_id: int, public_key: str) -> ClientRecord | None: ...
    def clients(self, project_id: int) -> list[ClientRecord]: ...
    def clients_named(self, project_id: int, name_key: str) -> list[ClientRecord]:
        """Members whose display name reads as ``name_key`` (``backend.names``)."""
        ...

    def team_spelling(self, project_id: int, team_key: str) -> str | None:
        """The team reading as ``team_key`` as its first member spelled it."""
        ...

    def clients_without_name_keys(self, project_id: int) -> list[ClientRecord]: ...
    def task(self, task_id: str) -> TaskRecord | None: ...
    def update_for_task(self, task_id: str) -> UpdateRecord | None: ...
    def updates(self, project_id: int) -> list[UpdateRecord]: ...
    def round_counts(self, project_id: int, base_version: int, now: float) -> RoundCounts: ...
    def live_leases(self, project_id: int, now: float) -> int: ...
    def live_round_leases(
        self, project_id: int, base_version: int, now: float
    ) -> list[tuple[int, float]]:
        """(shard index, issued at) of the live leases of round ``base_version``, oldest
        first (sync: at most twice ``leases_per_round`` of them)."""
        ...

    def pending_updates(self, project_id: int) -> int: ...
    def client_pending_updates(self, project_id: int, client_id: str) -> int:
        """The client's updates of the project not aggregated yet (pending or claimed)."""
        ...

    def pending_update_records(
        self, project_id: int, base_version: int | None, limit: int | None
    ) -> list[UpdateRecord]: ...
    def next_deadline(self, now: float) -> float | None: ...
    def version_times(self, project_id: int, limit: int) -> list[float]:
        """``created_at`` of the project's latest ``limit`` versions, oldest first."""
        ...

    def rejected_tasks(self, project_id: int) -> int: ...
    def updates_with_status(self, project_id: int, status: str) -> int: ...
    def update(self, update_id: str) -> UpdateRecord | None: ...
    def update_with_payload(self, project_id: int, digest: str) -> UpdateRecord | None:
        """The project's first update with this payload sha256 (any status)."""
        ...

    def granted_updates_since(self, client_id: str, since: float) -> list[UpdateRecord]:
        """The client's updates accepted after ``since`` whose credit was granted."""
        ...

    def recent_norms(self, project_id: int, limit: int) -> list[float]:
        """Norms of the project's latest ``limit`` aggregated updates, newest first: only
        what passed every check sets what is typical, so no flood of waiting uploads can."""
        ...

    def aggregation_running(self, project_id: int) -> bool: ...
    def running_claims(self) -> list[tuple[int, str, float]]:
        """(project id, owner, claimed at) of every running aggregation."""
        ...

    def oldest_pending_at(self, project_id: int) -> float | None:
        """When the oldest pending update of the project was accepted."""
        ...

    def invite_count(self, project_id: int) -> int: ...
    def challenge_valid(self, project_id: int, challenge: str, now: float) -> bool: ...
    def client_updates(self, client_id: str, credit_state: str) -> list[UpdateRecord]:
        """The client's updates whose credit is in ``credit_state``, oldest first."""
        ...

    def actions(self, project_id: int, limit: int | None) -> list[ActionRecord]:
        """The project's organiser actions, newest first (at most ``limit``)."""
        ...

    def clients_seen_since(self, project_id: int, since: float) -> int: ...  # not banned

    def credit_by_day(
        self, project_id: int, client_id: str | None, team: str | None
    ) -> list[tuple[int, float]]:
        """(UTC day, credit granted) of one client's (or team's) updates by day accepted."""
        ...

    def refusals(
        self, project_id: int, client_id: str, limit: int
    ) -> tuple[dict[str, int], list[tuple[float, str]]]:
        """Refused tasks and kept-out updates: counts by code; the newest ``limit`` (at, code)."""
        ...

    # --- retention (backend.services.retention) -------------------------------------------
    def payloads_pruning(self, project_id: int, limit: int) -> list[tuple[str, str]]:
        """(update id, payload digest) of the project's updates whose payload is being
        pruned (state ``pruning``: marked, its blob maybe not deleted yet), oldest first."""
        ...

    def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        """Those of ``digests`` that an update keeping its payload (of any project) or a
        version (model, strategy state) still names: their blobs must stay."""
        ...

    def privacy_spends(self, project_id: int) -> list[tuple[float, float, int]]:
        """The coordinator's noisy aggregates of a project: (noise multiplier, sample rate,
        steps), one row per distinct pair."""
        ...

    def reported_epsilon(self, project_id: int) -> tuple[float | None, int]:
        """(the largest epsilon a contributor reported, how many reports)."""
        ...


class WriteTx(ReadTx, Protocol):
    """A serialised read-write transaction; committed when the ``with`` block ends cleanly."""

    def insert_project(self, project: ProjectRecord) -> int: ...
    def set_project_status(self, project_id: int, status: str) -> None: ...
    def set_project_config(
        self, project_id: int, settings: dict[str, Any], hparams: dict[str, Any]
    ) -> None:
        """The organiser's change of settings and hyperparameters (``project set``)."""
        ...

    def insert_version(self, version: VersionRecord) -> None: ...
    def insert_challenge(self, project_id: int, challenge: str, expires_at: float) -> None: ...
    def consume_challenge(self, project_id: int, challenge: str, now: float) -> bool: ...
    def delete_spent_challenges(self, now: float) -> int:
        """Delete the challenges used or expired by ``now``; how many."""
        ...

    def insert_invite(
        self, project_id: int, code_hash: str, created_at: float, max_uses: int
    ) -> None: ...
    def consume_invite(self, project_id: int, code_hash: str) -> bool: ...
    def insert_client(self, client: ClientRecord, keys: NameKeys) -> None: ...
    def rejoin_client(
        self,
        client_id: str,
        display_name: str,
        team: str | None,
        token_hash: str,
        now: float,
        keys: NameKeys,
    ) -> None: ...
    def set_name_keys(self, client_id: str, keys: NameKeys) -> None: ...
    def touch_client(self, client_id: str, now: float) -> None: ...
    def expire_leases(self, now: float) -> list[int]: ...
    def live_task_for_client(
        self, project_id: int, client_id: str, now: float
    ) -> TaskRecord | None: ...
    def client_has_task(self, project_id: int, client_id: str, base_version: int) -> bool:
        """Sync rounds: the client holds, answered or was refused a task of that version
        (one attempt per contributor and round)."""
        ...

    def next_shard(self, project_id: int, num_shards: int) -> int: ...
    def insert_task(self, task: TaskRecord) -> None: ...
    def set_task_lease(
        self, task_id: str, deadline: float, manifest: dict[str, Any], signature: str
    ) -> None: ...
    def set_task_status(self, task_id: str, status: str) -> None: ...
    def reject_task(
        self, task_id: str, project_id: int, client_id: str, code: str, now: float
    ) -> bool:
        """End a leased task for good (status ``rejected``, with ``code``); only the task of
        that project leased to that client. True if it was leased and is now rejected."""
        ...

    def set_client_pace(
        self,
        client_id: str,
        s_per_step: float,
        dev: float,
        samples: int,
        at: float,
        examples: int,
    ) -> None: ...
    def insert_update(self, update: UpdateRecord) -> None: ...
    def drop_updates(self, update_ids: list[str]) -> None: ...
    def add_pending_credit(self, client_id: str, credit: float, now: float) -> None:
        """An accepted update: one more accepted, its credit pending until it is settled."""
        ...

    def settle_credit(self, update_ids: list[str], state: str) -> list[tuple[str, float]]:
        """Settle these updates' pending credit as ``granted`` or ``withheld``; returns
        (client id, credit) for each that was still pending."""
        ...

    def grant_credit(
        self, client_id: str, credit: float, recent_sum: float, now: float
    ) -> None: ...
    def record_check(
        self, client_id: str, update_id: str, error: float, passed: bool, now: float
    ) -> None:
        """A spot check of ``update_id``: its difference, and one more in the record."""
        ...

    def revoke_credit(
        self, client_id: str, update_ids: list[str], credit: float, recent_sum: float, now: float
    ) -> None:
        """Take the granted credit of these updates back (state ``revoked``)."""
        ...

    def reject_updates(self, claim_id: int, verdicts: dict[str, tuple[str, str]]) -> None:
        """Keep these claimed updates out of the aggregate (status ``rejected``), each with
        its (reason code, sentence)."""
        ...

    def count_rejection(self, client_id: str, now: float, *, in_a_row: bool = False) -> None:
        """One more refused upload; ``in_a_row``: refused for what it was, not for lateness."""
        ...

    def claim_aggregation(
        self, project_id: int, base_version: int, owner: str, now: float, update_ids: list[str]
    ) -> AggregationClaim: ...
    def cancel_round_leases(self, project_id: int, base_version: int) -> int: ...
    def aggregation_owner(self, aggregation_id: int) -> str | None: ...
    def finish_aggregation(
        self, claim: AggregationClaim, version: VersionRecord, dropped: list[str]
    ) -> None: ...
    def release_stale_claims(self, is_stale: Callable[[str, float], bool]) -> int: ...
    def quarantine_updates(self, claim_id: int, reasons: dict[str, str]) -> None:
        """Set the claim's updates in ``reasons`` aside for good, each with its reason."""
        ...

    # --- organiser actions (backend.services.admin) ---------------------------------------
    def set_client_ban(self, client_id: str, banned_at: float | None, reason: str | None) -> None:
        """Ban the client (a time and a reason) or lift its ban (None, None)."""
        ...

    def end_client_leases(self, project_id: int, client_id: str) -> int:
        """Cancel the client's leased tasks of the project; how many there were."""
        ...

    def set_aside_updates(
        self, update_ids: list[str], verdict: str, detail: str, now: float
    ) -> list[str]:
        """Keep these pending (unclaimed) updates out of every aggregate for good (status
        ``rejected`` with the verdict), and take their tasks out of their round's count
        (status ``rejected``, code ``verdict``); returns the ids that were pending."""
        ...

    def publish_version(self, version: VersionRecord, expected_current: int) -> bool:
        """Insert ``version`` and make it current, if ``expected_current`` still is."""
        ...

    def insert_action(self, action: ActionRecord) -> int: ...
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
        """Add to the privacy ledger (``privacy_spends``, ``reported_epsilon``)."""
        ...

    # --- retention (backend.services.retention) -------------------------------------------
    def mark_payloads_pruning(
        self, project_id: int, settled_up_to: int, now: float, limit: int
    ) -> int:
        """Give up the payloads of at most ``limit`` of the project's updates (oldest
        first) whose fate is final and was settled at version ``settled_up_to`` or before
        (state ``kept`` -> ``pruning``, at ``now``); how many."""
        ...

    def set_payloads_pruned(self, update_ids: Sequence[str]) -> None:
        """These updates' blobs are deleted (state ``pruning`` -> ``pruned``)."""
        ...


class Store(Protocol):
    """Where a coordinator keeps its state. Implementations are thread-safe."""

    def read(self) -> AbstractContextManager[ReadTx]: ...
    def write(self, *, durable: bool = True) -> AbstractContextManager[WriteTx]: ...
    def write_batched(self, work: Callable[[WriteTx], T]) -> T:
        """``work(tx)`` in a non-durable write, possibly sharing one transaction with other
        threads' batched writes; what ``work`` raises undoes only its own changes and is
        raised here. ``work`` must be short, must not wait on other threads and must not call
        the store itself (only ``tx``). A store without batching runs it in
        ``write(durable=False)``."""
        ...

    def wait_durable(self) -> None:
        """Return once every transaction committed so far is durable (a durable ``write()``
        waits for its own; this is for acknowledging what another one wrote)."""
        ...

    def schema_version(self) -> int: ...
    def connect_peers(
        self, owner: str, wake: Callable[[str], None] | None
    ) -> Callable[[str], None] | None:
        """Link this process to the other coordinator processes on the store: returns how to
        send them a project's long-poll wake-up; with ``wake`` (a serving process), also
        mark ``owner`` alive while it runs and call ``wake(project)`` for theirs. None: the
        store has no other processes to tell (SQLite: one host, polls time out)."""
        ...

    def live_owners(self, owners: list[str]) -> set[str] | None:
        """Which of these aggregation-claim owners are alive now; None: the store cannot
        tell (the worker then judges by process id on this host and by the claim's age)."""
        ...

    def close(self) -> None: ...
