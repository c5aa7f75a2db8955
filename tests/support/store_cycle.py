"""Comparing stores. ``run_cycle(store)``: one lease -> upload -> claim -> finish history
through every ``ReadTx``/``WriteTx`` method, checking the guarantees on the way and
returning what each call answered, typed (an int is not a float here, a tuple not a
list). ``StoreOpener``: stores of one kind on one database, as several processes open it.

Used by ``tests/unit/backend/test_backend_store_postgres.py``: the same transcript from SQLite and
PostgreSQL means every method answers alike, in the same order, with the same types.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from backend.store import (
    ActionRecord,
    ClaimConflict,
    ClientRecord,
    NameKeys,
    Store,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)
from backend.store.postgres import PostgresStore
from backend.store.sqlite import SQLiteStore
from backend.testing import bare_project_record

NOW = 1_764_000_000.0


class StoreOpener:
    """Opens stores on one database, each call another "process": PostgreSQL at ``url``
    when given, else SQLite at ``path``. ``close_all()`` closes what it opened."""

    def __init__(self, path: Path, url: str | None) -> None:
        self.path, self.url = path, url
        self.opened: list[Any] = []

    def __call__(self) -> Any:
        store = SQLiteStore(self.path) if self.url is None else PostgresStore(self.url, pool_size=4)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def typed(value: Any) -> Any:
    """``value`` with every leaf tagged by its type, records as (class name, fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, typed(dataclasses.asdict(value)))
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return (type(value).__name__, [typed(v) for v in items])
    return (type(value).__name__, value)


def _client(i: int, project_id: int, name: str, team: str | None, at: float = NOW) -> ClientRecord:
    return ClientRecord(
        id=f"c{i}",
        project_id=project_id,
        display_name=name,
        team=team,
        public_key=f"key{i}",
        token_hash="hash",
        created_at=at,
        last_seen=at,
    )


def _task(i: int, project_id: int, client: int, base: int, shard: int) -> TaskRecord:
    return TaskRecord(
        id=f"t{i}",
        project_id=project_id,
        client_id=f"c{client}",
        base_version=base,
        shard_index=shard,
        status="leased",
        issued_at=NOW + i,
        deadline=NOW + 100,
        max_examples=10,
        manifest={"task_id": f"t{i}", "hparams": {"lr": 0.1}},
        signature="sig",
    )


def _update(i: int, project_id: int, client: int, base: int) -> UpdateRecord:
    return UpdateRecord(
        id=f"u{i}",
        project_id=project_id,
        task_id=f"t{i}",
        client_id=f"c{client}",
        base_version=base,
        payload_digest=f"p{i}",
        num_examples=10,
        max_examples=10,
        credit=1.5,
        accepted_at=NOW + 10 + i,
        manifest_b64="bWFuaWZlc3Q=",
        signature="sig",
        metrics={"loss": 1.25},
        norm=0.5 + i,
        source_net="10.0.0.0/24",
    )


def _version(project_id: int, version: int, leaves: tuple[tuple[str, str], ...]) -> VersionRecord:
    return VersionRecord(
        project_id=project_id,
        version=version,
        digest=f"d{version}",
        created_at=NOW + 50 * version,
        signature=f"s{version}",
        metrics={"loss": 2.0 - version / 10},
        updates=len(leaves),
        contributors=len(leaves),
        parent_digest=f"d{version - 1}" if version else None,
        updates_root="root" if leaves else None,
        leaves=leaves,
    )


def _reads(tx: Any, pid: int) -> list[tuple[str, Any]]:
    """Every read of ``ReadTx`` that takes no more than the project (and a few ids)."""
    return [
        ("projects", tx.projects()),
        ("project_by_name", tx.project_by_name("p")),
        ("project_by_id", tx.project_by_id(pid)),
        ("project_by_name missing", tx.project_by_name("nope")),
        ("versions", tx.versions(pid)),
        ("version 0", tx.version(pid, 0)),
        ("version missing", tx.version(pid, 9)),
        ("version_leaves 1", tx.version_leaves(pid, 1)),
        ("leaves_matching u0", tx.leaves_matching(pid, "u0")),
        ("leaves_matching p1", tx.leaves_matching(pid, "p1")),
        ("clients", tx.clients(pid)),
        ("client c1", tx.client("c1")),
        ("client missing", tx.client("nope")),
        ("client_by_key", tx.client_by_key(pid, "key2")),
        ("clients_named", tx.clients_named(pid, "bob")),
        ("team_spelling", tx.team_spelling(pid, "t")),
        ("team_spelling missing", tx.team_spelling(pid, "x")),
        ("clients_without_name_keys", tx.clients_without_name_keys(pid)),
        ("task t0", tx.task("t0")),
        ("task missing", tx.task("nope")),
        ("update_for_task t1", tx.update_for_task("t1")),
        ("updates", tx.updates(pid)),
        ("round_counts", tx.round_counts(pid, 0, NOW)),
        ("live_leases", tx.live_leases(pid, NOW)),
        ("live_round_leases", tx.live_round_leases(pid, 0, NOW)),
        ("pending_updates", tx.pending_updates(pid)),
        ("client_pending_updates", tx.client_pending_updates(pid, "c0")),
        ("pending all", tx.pending_update_records(pid, None, None)),
        ("pending base 0", tx.pending_update_records(pid, 0, None)),
        ("pending limit 1", tx.pending_update_records(pid, None, 1)),
        ("next_deadline", tx.next_deadline(NOW)),
        ("version_times", tx.version_times(pid, 8)),
        ("rejected_tasks", tx.rejected_tasks(pid)),
        ("updates aggregated", tx.updates_with_status(pid, "aggregated")),
        ("update u0", tx.update("u0")),
        ("update_with_payload", tx.update_with_payload(pid, "p1")),
        ("granted_updates_since", tx.granted_updates_since("c0", 0.0)),
        ("recent_norms", tx.recent_norms(pid, 32)),
        ("aggregation_running", tx.aggregation_running(pid)),
        ("running_claims", tx.running_claims()),
        ("oldest_pending_at", tx.oldest_pending_at(pid)),
        ("invite_count", tx.invite_count(pid)),
        ("challenge_valid", tx.challenge_valid(pid, "ch-live", NOW)),
        ("client_updates granted", tx.client_updates("c0", "granted")),
        ("client_updates withheld", tx.client_updates("c1", "withheld")),
        ("actions all", tx.actions(pid, None)),
        ("actions 1", tx.actions(pid, 1)),
        ("payloads_pruning", tx.payloads_pruning(pid, 10)),
        ("blobs_in_use", tx.blobs_in_use(["p0", "p1", "p3", "d0", "d1", "state", "nope"])),
        ("privacy_spends", tx.privacy_spends(pid)),
        ("reported_epsilon", tx.reported_epsilon(pid)),
    ]


def run_cycle(store: Store) -> list[tuple[str, Any]]:
    """The history, asserting what must hold on any store; the typed transcript."""
    log: list[tuple[str, Any]] = []

    def rec(name: str, value: Any) -> Any:
        log.append((name, typed(value)))
        return value

    with store.write() as tx:  # a project, joins
        pid = rec("insert_project", tx.insert_project(bare_project_record("p")))
        rec("insert_project 2", tx.insert_project(bare_project_record("another")))
        tx.insert_version(_version(pid, 0, ()))
        tx.insert_challenge(pid, "ch-live", NOW + 60)
        tx.insert_challenge(pid, "ch-used", NOW + 60)
        tx.insert_challenge(pid, "ch-old", NOW - 1)
        assert rec("consume_challenge", tx.consume_challenge(pid, "ch-used", NOW)) is True
        assert rec("consume_challenge twice", tx.consume_challenge(pid, "ch-used", NOW)) is False
        assert rec("consume expired", tx.consume_challenge(pid, "ch-old", NOW)) is False
        assert rec("delete_spent_challenges", tx.delete_spent_challenges(NOW)) == 2
        tx.insert_invite(pid, "code", NOW, 1)
        assert rec("consume_invite", tx.consume_invite(pid, "code")) is True
        assert rec("consume_invite spent", tx.consume_invite(pid, "code")) is False
        # Joined out of id order. Not in one second: SQLite breaks such ties in the order
        # of the index it reads (clients_name_key), PostgreSQL in order of joining.
        joins = [("carol", None, NOW + 2), ("bob", "T", NOW), ("alice", "t", NOW + 1)]
        for i, (name, team, at) in enumerate(joins):
            keys = NameKeys(name, team and team.lower())
            tx.insert_client(_client(i, pid, name, team, at), keys)
        legacy = _client(3, pid, "dave", None, NOW + 3)  # joined before migration 8: no keys
        tx.insert_client(legacy, NameKeys(None, None))  # type: ignore[arg-type]
        tx.touch_client("c0", NOW + 1)
        tx.rejoin_client("c1", "bob", "T", "hash2", NOW + 2, NameKeys("bob", "t"))
        tx.set_name_keys("c2", NameKeys("alice", "t"))

    with store.write(durable=False) as tx:  # leases
        assert rec("expire_leases none", tx.expire_leases(NOW)) == []
        for i in range(3):
            shard = rec(f"next_shard {i}", tx.next_shard(pid, 2))
            tx.insert_task(_task(i, pid, i, 0, shard))
        tx.set_task_lease("t0", NOW + 200, {"task_id": "t0", "renewed": True}, "sig2")
        rec("live_task_for_client", tx.live_task_for_client(pid, "c0", NOW))
        rec("live_task_for_client none", tx.live_task_for_client(pid, "c3", NOW))
        assert rec("client_has_task", tx.client_has_task(pid, "c1", 0)) is True
        assert rec("client_has_task no", tx.client_has_task(pid, "c3", 0)) is False

    with store.write() as tx:  # uploads, a refusal, the privacy ledger
        for i in range(2):
            tx.insert_update(_update(i, pid, i, 0))
            tx.add_pending_credit(f"c{i}", 1.5, NOW + 10)
            tx.set_task_status(f"t{i}", "answered")
            tx.set_client_pace(f"c{i}", 0.25, 0.05, 1, NOW + 10, 100)
        assert rec("reject_task", tx.reject_task("t2", pid, "c2", "free_ride", NOW)) is True
        assert rec("reject_task again", tx.reject_task("t2", pid, "c2", "free_ride", NOW)) is False
        tx.count_rejection("c2", NOW + 3, in_a_row=True)
        tx.count_rejection("c2", NOW + 4)
        for _ in range(2):
            tx.record_privacy_spend(pid, NOW, noise_multiplier=1.1, sample_rate=1.0, steps=3)
        tx.record_privacy_spend(pid, NOW, noise_multiplier=0.9, sample_rate=0.5, steps=1)
        tx.record_privacy_spend(
            pid, NOW, noise_multiplier=1.0, sample_rate=0.1, steps=5, client_id="c0", epsilon=2.5
        )
    with store.read() as rtx:
        log.extend((f"after uploads: {n}", typed(v)) for n, v in _reads(rtx, pid))

    with store.write() as tx:  # the claim, once
        claim = rec("claim_aggregation", tx.claim_aggregation(pid, 0, "me", NOW + 20, ["u0", "u1"]))
        with pytest.raises(ClaimConflict):
            tx.claim_aggregation(pid, 0, "other", NOW + 20, ["u0", "u1"])
        assert rec("aggregation_owner", tx.aggregation_owner(claim.id)) == "me"
        rec("cancel_round_leases", tx.cancel_round_leases(pid, 0))
    assert [u.id for u in claim.updates] == ["u0", "u1"]

    with store.write() as tx:  # the version, credit settled once
        tx.reject_updates(claim.id, {"u1": ("norm_outlier", "its norm " + "x" * 600)})
        tx.quarantine_updates(claim.id, {"u1": "already rejected: unchanged"})
        tx.finish_aggregation(claim, _version(pid, 1, (("u0", "p0"),)), dropped=[])
        granted = rec("settle granted", tx.settle_credit(["u0", "nope"], "granted"))
        assert granted == [("c0", 1.5)]
        assert rec("settle twice", tx.settle_credit(["u0"], "granted")) == []
        rec("settle withheld", tx.settle_credit(["u1"], "withheld"))
        tx.grant_credit("c0", 1.5, 1.5, NOW + 30)
        tx.record_check("c0", "u0", 0.01, True, NOW + 30)
        tx.record_check("c1", "u1", float("inf"), False, NOW + 31)
        rec("insert_action", tx.insert_action(ActionRecord(0, pid, NOW, "ban", "c2", "why")))
        rec("insert_action 2", tx.insert_action(ActionRecord(0, pid, NOW + 1, "unban", "c2", "ok")))
        tx.set_client_ban("c2", NOW + 40, "one machine, three names")
        rec("end_client_leases", tx.end_client_leases(pid, "c2"))

    with store.write() as tx:  # round 2: set aside, dropped, a dead claim, a rollback
        for i, client in ((3, 0), (4, 1), (5, 3)):
            tx.insert_task(_task(i, pid, client, 1, 0))
            tx.set_task_status(f"t{i}", "answered")
            tx.insert_update(_update(i, pid, client, 1))
        assert rec("set_aside", tx.set_aside_updates(["u3", "u9"], "banned", "d", NOW)) == ["u3"]
        tx.drop_updates(["u4"])
        dead = tx.claim_aggregation(pid, 1, "dead", NOW + 60, ["u5"])
        rec("dead claim", dead)
        assert rec("release_stale", tx.release_stale_claims(lambda o, at: o == "dead")) == 1
        assert rec("publish_version", tx.publish_version(_version(pid, 2, ()), 1)) is True
        assert rec("publish_version stale", tx.publish_version(_version(pid, 3, ()), 1)) is False
        tx.revoke_credit("c0", ["u0"], 1.0, 0.5, NOW + 70)
        tx.set_project_status(pid, "paused")
        rec("mark_payloads_pruning", tx.mark_payloads_pruning(pid, 5, NOW + 80, 2))
        rec("payloads_pruning", tx.payloads_pruning(pid, 10))
        tx.set_payloads_pruned(["u0"])
        rec("expire_leases", tx.expire_leases(NOW + 1000))
        rec("updates_with_status dropped", tx.updates_with_status(pid, "dropped"))
    with store.read() as rtx:
        log.extend((f"at the end: {n}", typed(v)) for n, v in _reads(rtx, pid))
    return log
