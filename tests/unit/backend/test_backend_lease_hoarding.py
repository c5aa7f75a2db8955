"""Hoarded leases cannot stall a round (issue 12, "lease hoarding").

Measured against a real coordinator: as many throwaway identities as a sync round has
leases (``leases_per_round``) took every one of them and kept them alive with heartbeats;
the round never completed. Now a lease lives at most ``lease_life_s`` from its issue,
heartbeats or not, and once a lease of a full sync round has been out for
``round_deadline_s`` without an update, its shard is offered again to another contributor
(the hoarder keeps its lease, the work is re-issued), at most ``leases_per_round`` more
leases at once, so that over-provisioning cannot flood a round either. Honest
contributors see no change."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.settings import ProjectSettings
from backend.testing import (
    IN_PROCESS_URL,
    FakeClock,
    upload_small_delta,
)

API = f"{IN_PROCESS_URL}/api/v1/projects"


def upload(http: requests.Session, co: Coordinator, who: DemoContributor, task: Any) -> Any:
    return upload_small_delta(http, co, who, task)


def heartbeat(http: requests.Session, who: DemoContributor, task: dict[str, Any]) -> Any:
    return http.post(
        f"{API}/{task['project']}/tasks/{task['task_id']}/heartbeat",
        headers={"Authorization": f"Bearer {who.token}"},
    )


def error_code(r: requests.Response) -> str:
    return str(r.json()["error"]["code"])


def live_leases(coordinator: Coordinator, project: str) -> int:
    return int(coordinator.stats(coordinator.project(project))["live_leases"])


def keep_alive(
    http: requests.Session,
    clock: FakeClock,
    held: list[tuple[DemoContributor, dict[str, Any]]],
    seconds: float,
    step: float = 30.0,
) -> None:
    """Advance the clock by ``seconds``, every lease in ``held`` heartbeating each ``step``."""
    done = 0.0
    while done < seconds:
        clock.advance(min(step, seconds - done))
        done += min(step, seconds - done)
        for who, task in held:
            assert heartbeat(http, who, task).status_code == 200


def hoard(
    join: Any, project: str, n: int, name: str = "Hoarder"
) -> list[tuple[DemoContributor, dict[str, Any]]]:
    held = []
    for i in range(n):
        who = join(project, f"{name} {i}")
        task = who.lease(0)
        assert task is not None
        held.append((who, task))
    return held


def test_hoarders_of_every_lease_do_not_stall_a_sync_round(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p")  # 2 per round, 3 leases per round, deadline 120 s
    settings = ProjectSettings.from_dict(coordinator.project("p").settings)
    assert settings.leases_per_round == 3 and settings.round_deadline_s == 120.0
    held = hoard(join, "p", settings.leases_per_round)
    hoarded_shards = sorted(t["shard_index"] for _, t in held)
    ada, bob = join("p", "Ada"), join("p", "Bob")
    assert ada.lease(0) is None  # every lease of the round is out
    keep_alive(http, clock, held, 90.0)
    assert ada.lease(0) is None and bob.lease(0) is None  # before the deadline: as before
    keep_alive(http, clock, held, 30.0)
    # Out for round_deadline_s without an update: their shards are offered again.
    ta, tb = ada.lease(0), bob.lease(0)
    assert ta is not None and tb is not None
    assert ta["base_version"] == tb["base_version"] == 0
    assert ta["shard_index"] in hoarded_shards and tb["shard_index"] in hoarded_shards
    assert ta["shard_index"] != tb["shard_index"]
    for who, task in held:  # the hoarders keep their leases meanwhile
        assert heartbeat(http, who, task).status_code == 200
    assert upload(http, coordinator, ada, ta).status_code == 201
    assert upload(http, coordinator, bob, tb).status_code == 201
    assert coordinator.worker.run_once()
    stats = coordinator.stats(coordinator.project("p"))
    assert coordinator.project("p").current_version == 1
    assert stats["versions"][1]["updates"] == 2 and stats["versions"][1]["contributors"] == 2
    for who, task in held:  # the round closed: the hoarded leases are over
        r = heartbeat(http, who, task)
        assert r.status_code == 409 and error_code(r) == "wrong_base"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_heartbeats_cannot_keep_a_lease_beyond_its_longest_life(
    coordinator: Coordinator,
    http: requests.Session,
    clock: FakeClock,
    make_project: Any,
    join: Any,
    mode: str,
) -> None:
    # One lease at a time, and a round deadline far away: only the lease's life ends it.
    make_project(
        "p",
        mode=mode,
        clients_per_round=1,
        min_updates=1,
        overprovision=1.0,
        max_concurrent_leases=1,
        round_deadline_s=100_000.0,
        lease_s=400.0,
    )
    settings = ProjectSettings.from_dict(coordinator.project("p").settings)
    assert settings.lease_life_s == 4800.0  # 12 x lease_s
    assert ProjectSettings().lease_life_s == 3600.0  # an hour at the default lease_s ...
    assert ProjectSettings(lease_s=8.0).lease_life_s == 3600.0  # ... and at least an hour
    hoarder, bob = join("p", "Hoarder"), join("p", "Bob")
    task = hoarder.lease(0)
    assert task is not None and bob.lease(0) is None
    life_end = task["issued_at"] + settings.lease_life_s
    deadlines = []
    while True:
        clock.advance(300.0)
        r = heartbeat(http, hoarder, task)
        if r.status_code != 200:
            break
        deadlines.append(r.json()["deadline"])
        assert clock() < life_end + 300.0
    assert r.status_code == 410 and error_code(r) == "lease_expired"
    assert "longest life" in r.json()["error"]["message"]
    assert max(deadlines) == life_end and clock() > life_end
    assert deadlines[0] == int(task["issued_at"] + 300.0 + 400.0)  # extended as before until then
    # Its task is back in the pool: another contributor gets one; the hoarded one is over.
    again = bob.lease(0)
    assert again is not None and again["task_id"] != task["task_id"]
    with coordinator.store.read() as tx:
        row = tx.task(task["task_id"])
    assert row is not None and row.status == "expired"
    late = upload(http, coordinator, hoarder, task)
    assert late.status_code == 410 and error_code(late) == "lease_expired"


def test_an_honest_contributor_within_the_bound_is_credited_as_before(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", clients_per_round=1, min_updates=1, lease_s=400.0)  # life: 4800 s
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    for _ in range(15):  # 4500 s of training, long past the round deadline, within the life
        clock.advance(300.0)
        r = heartbeat(http, ada, task)
        assert r.status_code == 200
        assert r.json()["deadline"] == min(int(clock() + 400.0), task["issued_at"] + 4800)
    again = ada.lease(0)
    assert again is not None and again["task_id"] == task["task_id"]  # its own lease
    receipt = upload(http, coordinator, ada, task)
    assert receipt.status_code == 201
    assert coordinator.worker.run_once()
    assert coordinator.project("p").current_version == 1
    me = http.get(f"{API}/p/me", headers={"Authorization": f"Bearer {ada.token}"}).json()
    assert me["updates_accepted"] == 1
    assert me["credit"] == pytest.approx(receipt.json()["credit"]) and me["credit"] > 0


def test_re_issues_are_bounded_so_over_provisioning_cannot_flood_a_round(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p")  # 3 leases per round
    first = hoard(join, "p", 3)
    hoarded_shards = sorted(t["shard_index"] for _, t in first)
    keep_alive(http, clock, first, 120.0)
    # Past the deadline: at most one re-issue per hoarded lease, leases_per_round in all.
    second = hoard(join, "p", 3, "Sybil")
    assert sorted(t["shard_index"] for _, t in second) == hoarded_shards
    assert join("p", "Late").lease(0) is None
    assert live_leases(coordinator, "p") == 6
    # The re-issues become overdue too, but the round never holds more than twice its leases.
    keep_alive(http, clock, first + second, 120.0)
    assert live_leases(coordinator, "p") == 6
    assert join("p", "Later").lease(0) is None
    assert live_leases(coordinator, "p") == 6


def test_a_client_still_holds_at_most_one_lease_per_round(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", clients_per_round=3, min_updates=3)  # 4 leases per round
    held = hoard(join, "p", 4)
    keep_alive(http, clock, held, 120.0)
    for who, task in held:  # a hoarder gets its own lease back, never a re-issue
        again = who.lease(0)
        assert again is not None and again["task_id"] == task["task_id"]
    assert live_leases(coordinator, "p") == 4
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    again = ada.lease(0)
    assert again is not None and again["task_id"] == task["task_id"]
    assert upload(http, coordinator, ada, task).status_code == 201
    assert ada.lease(0) is None  # answered this round: no second task in it
    assert live_leases(coordinator, "p") == 4


def test_a_hoarded_shard_answered_twice_is_two_updates_of_the_round(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p")
    held = hoard(join, "p", 3)
    keep_alive(http, clock, held, 120.0)
    ada = join("p", "Ada")
    reissued = ada.lease(0)
    assert reissued is not None
    (slow, original) = next((w, t) for w, t in held if t["shard_index"] == reissued["shard_index"])
    # The re-issue and the slow original of the same shard are separate tasks: both count,
    # and a retry of either is still the same update.
    assert upload(http, coordinator, ada, reissued).status_code == 201
    assert upload(http, coordinator, slow, original).status_code == 201
    assert upload(http, coordinator, ada, reissued).status_code == 200
    assert coordinator.worker.run_once()
    stats = coordinator.stats(coordinator.project("p"))
    assert stats["versions"][1]["updates"] == 2 and stats["versions"][1]["contributors"] == 2
