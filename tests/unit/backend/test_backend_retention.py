"""Retention of update payloads (issue 12): a payload is pruned ``keep_payload_versions``
versions after its update's fate was settled (aggregated, or kept out for good), and
nothing a later step needs goes: an update waiting for aggregation or being aggregated
(its spot check included) keeps its payload, and so does a blob another update or a
version still names. Provenance still verifies after pruning: the version's signed root
and the contributor's signed upload manifest bind each pruned payload's digest. Pruning
marks first (durably), then deletes, so the database never promises a payload that is gone
and an interrupted pass is finished after a restart."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from typing import Any

import pytest
import requests

from backend.cli import main as backend_main
from backend.coordinator import DB_FILE, Coordinator
from backend.demo_clients import DemoContributor
from backend.metrics import BackendMetrics, Registry
from backend.services import retention
from backend.services.aggregation import claim_ready, run_aggregation
from backend.settings import ProjectSettings
from backend.store import UpdateRecord
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request, wsgi_session
from backend.wsgi import App
from federated.codec import encode_update

K = 2
"""``keep_payload_versions`` of these tests: a payload goes two versions after its fate."""

Settings = dict[str, Any]
QUIET: Settings = {"max_loss_regression": 0}  # no version gate: every round publishes


def upload(
    c: Coordinator,
    http: requests.Session,
    who: DemoContributor,
    *,
    project: str = "digits",
    value: float = 1e-3,
    key: str | None = None,
) -> str:
    """Lease a task and upload a small made-up delta for it; the update id."""
    task = who.lease(0)
    assert task is not None
    spec = c.runtime(c.project(project)).spec
    payload = encode_update(small_delta(spec, value, key=key), "int8").payload
    r = upload_request(
        http,
        IN_PROCESS_URL,
        project=project,
        token=who.token,
        key=who.key,
        task=task,
        client_id=who.client_id,
        payload=payload,
    )
    assert r.status_code == 201, r.text
    update_id: str = r.json()["update_id"]
    return update_id


def round_of(
    c: Coordinator, http: requests.Session, people: list[DemoContributor], project: str = "digits"
) -> list[str]:
    """One round: each uploads, then the worker publishes the next version."""
    ids = [upload(c, http, who, project=project) for who in people]
    before = c.project(project).current_version
    assert c.worker.run_once()
    assert c.project(project).current_version == before + 1
    return ids


def record(c: Coordinator, update_id: str) -> UpdateRecord:
    with c.store.read() as tx:
        found = tx.update(update_id)
    assert found is not None
    return found


def assert_pruned(c: Coordinator, ids: list[str]) -> None:
    for uid in ids:
        u = record(c, uid)
        assert u.payload_state == "pruned", (uid, u.status, u.payload_state)
        assert u.payload_pruned_at == c.clock()
        assert not c.blobs.exists(u.payload_digest), uid


def assert_kept(c: Coordinator, ids: list[str]) -> None:
    for uid in ids:
        u = record(c, uid)
        assert u.payload_state == "kept" and u.payload_pruned_at is None, (uid, u.payload_state)
        assert c.blobs.verify(u.payload_digest), uid


def models_all_stored(c: Coordinator, project: str = "digits") -> None:
    with c.store.read() as tx:
        versions = tx.versions(c.project(project).id)
    for v in versions:
        assert c.blobs.verify(v.digest), v.version
        if v.strategy_state_digest:
            assert c.blobs.verify(v.strategy_state_digest), v.version


def reopen(c: Coordinator, clock: FakeClock) -> Coordinator:
    c.close()
    return Coordinator(
        c.data_dir, clock=clock, start_worker=False, metrics=BackendMetrics.create(Registry())
    )


def test_payloads_go_k_versions_after_aggregation_and_recent_ones_stay(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", keep_payload_versions=K, **QUIET)
    people = [join("digits", "Ada"), join("digits", "Bob")]
    v1 = round_of(coordinator, http, people)
    v2 = round_of(coordinator, http, people)
    assert_kept(coordinator, v1 + v2)  # version 2 is current: version 1 is 1 back
    v3 = round_of(coordinator, http, people)
    assert_pruned(coordinator, v1)  # version 3: version 1 is K back
    assert_kept(coordinator, v2 + v3)
    # An update waiting for its round (only Ada has answered round 3) keeps its payload.
    waiting = upload(coordinator, http, people[0])
    assert not coordinator.worker.run_once()
    v4 = [waiting, upload(coordinator, http, people[1])]
    assert coordinator.worker.run_once()
    assert_pruned(coordinator, v1 + v2)
    assert_kept(coordinator, v3 + v4)
    models_all_stored(coordinator)  # every version's model and strategy state stays
    assert coordinator.project("digits").current_version == 4


def test_nothing_a_later_step_needs_is_pruned(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    """A pending update and a claimed one (being aggregated: spot-checked, decoded) keep
    their payloads however old they look, and the spot check then re-executes and compares
    against them."""
    make_project("digits", keep_payload_versions=1, **QUIET)
    people = [join("digits", "Ada"), join("digits", "Bob")]
    for _ in range(3):
        round_of(coordinator, http, people)
    db = sqlite3.connect(coordinator.data_dir / DB_FILE, isolation_level=None)
    pending = upload(coordinator, http, people[0])
    # Make it look ancient: based on version 0, three versions behind (the bound is 2).
    db.execute("UPDATE updates SET base_version = 0 WHERE id = ?", (pending,))
    assert retention.prune(coordinator.context, coordinator.project("digits")).marked == 0
    assert_kept(coordinator, [pending])
    db.execute("UPDATE updates SET base_version = 3 WHERE id = ?", (pending,))
    upload(coordinator, http, people[1])
    claim = claim_ready(coordinator.context, coordinator.project("digits"))
    assert claim is not None and {u.status for u in claim.updates} == {"claimed"}
    db.execute("UPDATE aggregations SET base_version = 0 WHERE id = ?", (claim.id,))
    db.execute("UPDATE updates SET base_version = 0 WHERE aggregation_id = ?", (claim.id,))
    assert retention.prune(coordinator.context, coordinator.project("digits")).marked == 0
    assert_kept(coordinator, [u.id for u in claim.updates])
    db.execute("UPDATE aggregations SET base_version = 3 WHERE id = ?", (claim.id,))
    db.execute("UPDATE updates SET base_version = 3 WHERE aggregation_id = ?", (claim.id,))
    db.close()
    # Spot-check every update of this claim: each is trained again and compared with its
    # payload (made-up deltas: they differ, and are kept out for it).
    rt = coordinator.runtime(coordinator.project("digits"))
    rt.settings = dataclasses.replace(rt.settings, spot_check_rate=1.0)
    assert run_aggregation(coordinator.context, coordinator.project("digits"), claim) is None
    for u in claim.updates:
        checked = record(coordinator, u.id)
        assert checked.check_error is not None and checked.verdict == "replication_mismatch"
        assert checked.payload_state == "kept"


def test_kept_out_updates_are_pruned_after_the_same_bound(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    """An update set aside by the organiser and one kept out of its aggregate (a norm
    outlier) were never aggregated; their payloads go K versions after their round too."""
    project = make_project(
        "digits", clients_per_round=3, min_updates=3, keep_payload_versions=K, **QUIET
    )
    ada, bob, cy, dee = (join("digits", n) for n in ("Ada", "Bob", "Cy", "Dee"))
    revoked = upload(coordinator, http, ada)
    coordinator.services.admin.revoke_update(project, revoked, "testing retention")
    assert record(coordinator, revoked).status == "rejected"
    honest = [upload(coordinator, http, who) for who in (bob, cy)]
    outlier = upload(coordinator, http, dee, value=0.5)
    assert coordinator.worker.run_once()
    assert record(coordinator, outlier).verdict == "norm_outlier"
    assert record(coordinator, outlier).status == "rejected"
    round_of(coordinator, http, [bob, cy, dee])
    assert_kept(coordinator, [revoked, outlier, *honest])
    round_of(coordinator, http, [bob, cy, dee])  # version 3: round 1 is K versions back
    assert_pruned(coordinator, [revoked, outlier, *honest])


def test_provenance_of_old_versions_verifies_after_pruning(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_project("digits", keep_payload_versions=1, **QUIET)
    people = [join("digits", "Ada"), join("digits", "Bob")]
    first = round_of(coordinator, http, people)
    for _ in range(2):
        round_of(coordinator, http, people)
    assert_pruned(coordinator, first)
    audit = coordinator.services.provenance.audit(coordinator.project("digits"))
    assert audit.ok, audit.problems
    assert (audit.updates, audit.pruned) == (6, 4)
    assert coordinator.services.provenance.audit(coordinator.project("digits"), 1).ok
    code = backend_main(["verify", "--data", str(coordinator.data_dir), "--project", "digits"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK: the chain of digits from version 3 back to 0 holds." in out
    assert "4 pruned by retention" in out and "2 update payload(s) stored" in out
    # The proof a volunteer asks for needs no payload.
    r = http.get(f"{IN_PROCESS_URL}/api/v1/projects/digits/proof", params={"update": first[0]})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    # A pruned update is still checked: its contributor's signed upload manifest must name
    # the digest the version lists.
    with coordinator.store.read() as tx:
        leaves = tx.version_leaves(project.id, 1)
    other = "ab" * 32
    with sqlite3.connect(coordinator.data_dir / DB_FILE) as db:
        row = db.execute("SELECT manifest_b64 FROM updates WHERE id = ?", (leaves[0][0],))
        forged = base64.b64decode(row.fetchone()[0]).replace(leaves[0][1].encode(), other.encode())
        db.execute(
            "UPDATE updates SET manifest_b64 = ? WHERE id = ?",
            (base64.b64encode(forged).decode(), leaves[0][0]),
        )
    audit = coordinator.services.provenance.audit(coordinator.project("digits"))
    assert not audit.ok
    assert any("upload manifest" in p and leaves[0][0] in p for p in audit.problems), audit


def test_a_payload_missing_without_being_pruned_still_fails_verification(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", keep_payload_versions=0, **QUIET)
    people = [join("digits", "Ada"), join("digits", "Bob")]
    ids = round_of(coordinator, http, people)
    coordinator.blobs.path(record(coordinator, ids[0]).payload_digest).unlink()
    audit = coordinator.services.provenance.audit(coordinator.project("digits"))
    assert not audit.ok
    assert any(f"the payload of update {ids[0]} is not stored" in p for p in audit.problems)


def test_keep_payload_versions_0_keeps_every_payload(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", keep_payload_versions=0, **QUIET)
    people = [join("digits", "Ada"), join("digits", "Bob")]
    ids = [uid for _ in range(4) for uid in round_of(coordinator, http, people)]
    assert_kept(coordinator, ids)
    assert ProjectSettings().keep_payload_versions == 10
    with pytest.raises(ValueError, match="keep_payload_versions"):
        ProjectSettings(keep_payload_versions=-1).validate()


def test_a_blob_another_update_still_names_is_not_deleted(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    """The blob store is shared: the same bytes uploaded to two projects are one file, and
    it stays while an update that keeps its payload names it."""
    make_project("digits", keep_payload_versions=1, **QUIET)
    make_project("forever", keep_payload_versions=0, **QUIET)
    here = [join("digits", "Ada"), join("digits", "Bob")]
    there = [join("forever", "Ada"), join("forever", "Bob")]
    same = [
        upload(coordinator, http, here[0], key="twice"),
        upload(coordinator, http, there[0], project="forever", key="twice"),
    ]
    digest = record(coordinator, same[0]).payload_digest
    assert record(coordinator, same[1]).payload_digest == digest
    upload(coordinator, http, here[1])
    upload(coordinator, http, there[1], project="forever")
    assert coordinator.worker.run_once()
    assert coordinator.project("forever").current_version == 1
    for _ in range(2):
        round_of(coordinator, http, here)
    u = record(coordinator, same[0])
    assert u.payload_state == "pruned"
    assert coordinator.blobs.verify(digest)  # "forever" still keeps it
    assert coordinator.services.provenance.audit(coordinator.project("digits")).ok
    assert coordinator.services.provenance.audit(coordinator.project("forever")).ok


def test_pruning_is_idempotent_and_an_interrupted_pass_is_finished_after_a_restart(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_project("digits", keep_payload_versions=1, **QUIET)
    people = [join("digits", "Ada"), join("digits", "Bob")]
    first = round_of(coordinator, http, people)

    def crash(*_args: Any) -> int:
        raise OSError("killed between marking and deleting")

    monkeypatch.setattr(coordinator.blobs, "delete", crash)
    second = round_of(coordinator, http, people)  # the worker logs the failed pass
    for uid in first:
        u = record(coordinator, uid)
        # Marked (the database no longer promises it), not deleted yet.
        assert u.payload_state == "pruning" and coordinator.blobs.exists(u.payload_digest)
    assert coordinator.services.provenance.audit(coordinator.project("digits")).ok
    monkeypatch.undo()
    clock.advance(60)
    again = reopen(coordinator, clock)
    try:
        assert not again.worker.run_once()  # nothing to aggregate; the first pass prunes
        for uid in first:
            u = record(again, uid)
            assert u.payload_state == "pruned" and not again.blobs.exists(u.payload_digest)
            assert u.payload_pruned_at is not None and u.payload_pruned_at < again.clock()
        assert_kept(again, second)
        # Again: nothing more to do, nothing changes.
        before = {uid: record(again, uid) for uid in first + second}
        assert retention.prune(again.context, again.project("digits")) == retention.Pruned(0, 0)
        assert {uid: record(again, uid) for uid in first + second} == before
        # Later versions go on pruning in the reopened coordinator.
        http = wsgi_session(App(again, rate=None))
        for p in people:
            p.session = http
        round_of(again, http, people)
        assert_pruned(again, second)
        assert again.services.provenance.audit(again.project("digits")).ok
    finally:
        again.close()
