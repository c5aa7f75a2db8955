"""Aggregation cannot be stopped by input (issue 11, first step).

Measured on the first wave: three updates reporting ``loss_after: 1.5e308`` overflowed the
version's averaged loss, the version could not be saved, and the worker retried the same
updates every 5 s forever without ever reaching the projects after the poisoned one. A
stale aggregation claim was released only when a process started. Here: a project's failed
aggregation never delays another; the update that breaks aggregation is quarantined with
its reason and the rest go on; a claim whose owner went away is taken over by time in any
running process; and the coordinator says when a project's aggregation is overdue."""

from __future__ import annotations

import json
from typing import Any

import requests

from backend.coordinator import Coordinator
from backend.settings import AGGREGATION_CLAIM_TTL_S
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request
from federated.codec import encode_update


def accept_round(
    http: requests.Session,
    coordinator: Coordinator,
    join: Any,
    project: str,
    n: int = 2,
    scale: float = 1e-3,
) -> list[str]:
    """``n`` contributors lease and upload; the update ids, in order."""
    spec = coordinator.runtime(coordinator.project(project)).spec
    for i in range(n):
        who = join(project, f"{project}-{i}")
        task = who.lease(0)
        assert task is not None
        r = upload_request(
            http,
            IN_PROCESS_URL,
            project=project,
            token=who.token,
            key=who.key,
            task=task,
            client_id=who.client_id,
            payload=encode_update(small_delta(spec, scale * (i + 1)), "int8").payload,
        )
        assert r.status_code == 201, r.text
    with coordinator.store.read() as tx:
        return [u.id for u in tx.updates(coordinator.project(project).id)]


def update_row(coordinator: Coordinator, update_id: str) -> Any:
    with coordinator.store.read() as tx:
        project_ids = [p.id for p in tx.projects()]
        for pid in project_ids:
            for u in tx.updates(pid):
                if u.id == update_id:
                    return u
    raise AssertionError(update_id)


def test_huge_client_metrics_already_stored_cannot_break_a_version(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    ids = accept_round(http, coordinator, join, "digits")
    with coordinator.store.write() as tx:  # as if accepted before uploads bounded metrics
        tx._c.executemany(  # type: ignore[attr-defined]
            "UPDATE updates SET metrics = ? WHERE id = ?",
            [(json.dumps({"loss_after": 1.5e308}), uid) for uid in ids],
        )
    assert coordinator.worker.run_once()
    project = coordinator.project("digits")
    assert project.current_version == 1
    with coordinator.store.read() as tx:
        metrics = tx.version(project.id, 1).metrics  # type: ignore[union-attr]
    json.dumps(metrics, allow_nan=False)  # a record any reader can load


def test_one_projects_broken_update_is_quarantined_and_never_delays_another(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("aaa", clients_per_round=3, min_updates=3)
    make_project("bbb")
    bad_ids = accept_round(http, coordinator, join, "aaa", n=3)
    accept_round(http, coordinator, join, "bbb", scale=2e-3 / 3)  # payloads of their own
    broken = update_row(coordinator, bad_ids[0])
    coordinator.blobs.path(broken.payload_digest).write_bytes(b"\x00torn on disk")

    for _ in range(3):  # no exception escapes; each pass does what it can
        coordinator.worker.run_once()
    assert coordinator.project("bbb").current_version == 1
    row = update_row(coordinator, bad_ids[0])
    assert row.status == "quarantined"
    assert row.quarantine_reason and "payload" in row.quarantine_reason
    # The round goes on without it: the other two are aggregated, none is lost.
    assert coordinator.project("aaa").current_version == 1
    assert [update_row(coordinator, uid).status for uid in bad_ids[1:]] == ["aggregated"] * 2
    with coordinator.store.read() as tx:
        assert tx.version(coordinator.project("aaa").id, 1).updates == 2  # type: ignore[union-attr]
    stats = coordinator.stats(coordinator.project("aaa"))
    assert stats["updates_quarantined"] == 1


def test_a_stale_claim_is_taken_over_by_time_without_a_restart(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    clock: FakeClock,
) -> None:
    make_project("digits")
    ids = accept_round(http, coordinator, join, "digits")
    project = coordinator.project("digits")
    with coordinator.store.write() as tx:  # a process on another host claimed it and died
        tx.claim_aggregation(project.id, 0, "otherhost:4242:deadbeef0000", clock(), ids)
    assert not coordinator.worker.run_once()
    assert coordinator.project("digits").current_version == 0
    assert coordinator.overdue_projects() == []

    clock.advance(AGGREGATION_CLAIM_TTL_S + 1)
    assert coordinator.overdue_projects() == ["digits"]
    assert coordinator.worker.run_once()
    assert coordinator.project("digits").current_version == 1
    assert coordinator.overdue_projects() == []


def test_healthz_says_which_projects_are_overdue(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    clock: FakeClock,
) -> None:
    make_project("digits")
    ids = accept_round(http, coordinator, join, "digits")
    project = coordinator.project("digits")
    with coordinator.store.write() as tx:
        tx.claim_aggregation(project.id, 0, "otherhost:4242:deadbeef0000", clock(), ids)
    assert http.get(f"{IN_PROCESS_URL}/healthz").json() == {
        "status": "ok",
        "aggregation_overdue": [],
        "storage_full": False,
    }
    clock.advance(AGGREGATION_CLAIM_TTL_S + 1)
    r = http.get(f"{IN_PROCESS_URL}/healthz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "degraded",
        "aggregation_overdue": ["digits"],
        "storage_full": False,
    }
    metrics = http.get(f"{IN_PROCESS_URL}/metrics").text
    assert 'barnraise_aggregation_overdue{project="digits"} 1.0' in metrics


def test_non_physical_client_metrics_are_refused_at_upload(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    who = join("digits", "Mallory")
    task = who.lease(0)
    assert task is not None
    spec = coordinator.runtime(coordinator.project("digits")).spec
    r = upload_request(
        http,
        IN_PROCESS_URL,
        project="digits",
        token=who.token,
        key=who.key,
        task=task,
        client_id=who.client_id,
        payload=encode_update(small_delta(spec), "int8").payload,
        manifest_overrides={"metrics": {"loss_after": 1.5e308}},
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "manifest_mismatch" and "$.metrics" in error["message"]


def test_a_pause_that_is_over_does_not_make_the_worker_spin(
    coordinator: Coordinator, make_project: Any, clock: FakeClock
) -> None:
    make_project("digits")
    worker = coordinator.worker
    worker._failing[coordinator.project("digits").id] = clock() + 30.0
    assert 29.0 < worker._next_wake_s() <= 30.01  # wakes when the pause ends
    clock.advance(60.0)  # the pause is over, and the project has no complete round
    assert worker._next_wake_s() > 1.0
