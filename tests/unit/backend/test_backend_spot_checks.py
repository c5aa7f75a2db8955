"""Spot checks: the coordinator trains a task again and keeps out an upload that differs.

Honest contributors here train for real (``DemoContributor.train_and_upload``, the task's
seed); the cheat uploads noise as long as an honest delta, which no norm test can tell
apart. Before spot checks it was aggregated and credited like the others.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import torch

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.services import replication
from backend.testing import IN_PROCESS_URL, FakeClock, upload_request
from federated.codec import encode_update
from federated.tensors import l2_norm

API = f"{IN_PROCESS_URL}/api/v1/projects"
TINY = {"num_shards": 3, "hidden": 8, "local_epochs": 1.0, "batch_size": 64}


def make(coordinator: Coordinator, **settings: Any) -> None:
    coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        hparams=TINY,
        settings={"clients_per_round": 3, "min_updates": 3, "codec": "int8", **settings},
    )


def noise_like(coordinator: Coordinator, norm: float, seed: int) -> dict[str, torch.Tensor]:
    spec = coordinator.runtime(coordinator.project("digits")).spec
    g = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(shape, generator=g) for k, (shape, _) in spec.items()}
    scale = norm / l2_norm(noise)
    return {k: v * scale for k, v in noise.items()}


def cheat(
    http: requests.Session, coordinator: Coordinator, c: DemoContributor, norm: float, seed: int
) -> dict[str, Any]:
    task = c.lease(0)
    assert task is not None
    r = upload_request(
        http,
        IN_PROCESS_URL,
        project="digits",
        token=c.token,
        key=c.key,
        task=task,
        client_id=c.client_id,
        payload=encode_update(noise_like(coordinator, norm, seed), "int8").payload,
    )
    assert r.status_code == 201, r.text  # nothing at upload can tell
    body: dict[str, Any] = r.json()
    return body


def honest_round(coordinator: Coordinator, people: list[DemoContributor]) -> list[dict[str, Any]]:
    receipts = []
    for c in people:
        task = c.lease(0)
        assert task is not None
        receipts.append(c.train_and_upload(task))
    return receipts


def last_norm(coordinator: Coordinator) -> float:
    with coordinator.store.read() as tx:
        norm = tx.updates(coordinator.project("digits").id)[-1].norm
    assert norm is not None
    return norm


def me(http: requests.Session, c: DemoContributor) -> dict[str, Any]:
    body: dict[str, Any] = http.get(
        f"{API}/digits/me", headers={"Authorization": f"Bearer {c.token}"}
    ).json()
    return body


def update_status(http: requests.Session, c: DemoContributor, update_id: str) -> dict[str, Any]:
    body: dict[str, Any] = http.get(
        f"{API}/digits/updates/{update_id}", headers={"Authorization": f"Bearer {c.token}"}
    ).json()
    return body


def test_noise_as_long_as_an_honest_update_is_caught_by_re_execution(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    make(coordinator)
    ada, bob, mallory = join("digits", "Ada"), join("digits", "Bob"), join("digits", "Mallory")
    receipts = honest_round(coordinator, [ada, bob])
    forged = cheat(http, coordinator, mallory, last_norm(coordinator), seed=1)
    assert coordinator.worker.run_once()  # newcomers: every update is re-executed
    for c, r in zip((ada, bob), receipts, strict=True):
        st = update_status(http, c, r["update_id"])
        assert st["status"] == "aggregated" and st["credit_state"] == "granted"
    st = update_status(http, mallory, forged["update_id"])
    assert st["status"] == "rejected" and st["verdict"] == "replication_mismatch"
    assert st["credit_state"] == "withheld" and me(http, mallory)["credit"] == 0
    with coordinator.store.read() as tx:
        records = {c.display_name: tx.client(c.client_id) for c in (ada, bob, mallory)}
        honest_errors = [tx.update(r["update_id"]) for r in receipts]
    assert all(u is not None and u.check_error is not None for u in honest_errors)
    assert max(u.check_error for u in honest_errors if u and u.check_error is not None) < 0.05
    assert records["Ada"] is not None and records["Ada"].checks_passed == 1
    assert records["Mallory"] is not None and records["Mallory"].checks_failed == 1
    version = http.get(f"{API}/digits/stats").json()["versions"][-1]
    assert version["updates"] == 2 and version["contributors"] == 2
    assert coordinator.metrics.verification_gflop.labels(project="digits")._value.get() > 0


def test_a_caught_cheat_loses_the_credit_it_earned_since_its_last_clean_check(
    coordinator: Coordinator,
    http: requests.Session,
    join: Any,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make(coordinator)
    ada, bob, mallory = join("digits", "Ada"), join("digits", "Bob"), join("digits", "Mallory")
    honest_round(coordinator, [ada, bob, mallory])
    assert coordinator.worker.run_once()  # all checked (newcomers), all clean
    earned_clean = me(http, mallory)["credit"]
    assert earned_clean > 0
    # Round 2: nobody is drawn for a check; Mallory's noise goes through and is credited.
    monkeypatch.setattr(replication, "chosen_for_check", lambda update_id, p: False)
    clock.advance(60)
    honest_round(coordinator, [ada, bob])
    cheat(http, coordinator, mallory, last_norm(coordinator), seed=2)
    assert coordinator.worker.run_once()
    assert me(http, mallory)["credit"] > earned_clean
    # Round 3: checked, caught: round 2's credit goes too, round 1's (checked clean) stays.
    monkeypatch.setattr(replication, "chosen_for_check", lambda update_id, p: True)
    clock.advance(60)
    honest_round(coordinator, [ada, bob])
    cheat(http, coordinator, mallory, last_norm(coordinator), seed=3)
    assert coordinator.worker.run_once()
    row = me(http, mallory)
    assert row["credit"] == pytest.approx(earned_clean) and row["credit_pending"] == 0
    with coordinator.store.read() as tx:
        states = [
            u.credit_state
            for u in tx.updates(coordinator.project("digits").id)
            if u.client_id == mallory.client_id
        ]
    assert states == ["granted", "revoked", "withheld"]


def test_a_contributor_caught_twice_is_banned_by_the_coordinator(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    make(coordinator)
    ada, bob, mallory = join("digits", "Ada"), join("digits", "Bob"), join("digits", "Mallory")
    for seed in (1, 2):
        honest_round(coordinator, [ada, bob])
        cheat(http, coordinator, mallory, last_norm(coordinator), seed=seed)
        assert coordinator.worker.run_once()
    r = http.post(
        f"{API}/digits/tasks/lease?wait=0", headers={"Authorization": f"Bearer {mallory.token}"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "banned"
    actions = http.get(f"{API}/digits/stats").json()["actions"]
    assert actions[0]["action"] == "ban" and "spot checks" in actions[0]["reason"]
    assert ada.lease(0) is not None  # the honest ones go on
