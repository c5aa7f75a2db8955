"""Tasks sized to arrive while they are still useful (issue 9, "volunteer compute is not
wasted"): the pure estimates of ``backend.pacing`` and what a lease does with them."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend import pacing
from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.pacing import Pace, fit_steps, next_pace, useful_until, version_interval
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request
from federated.codec import encode_update
from federated.training import total_steps_for

# --- the estimates --------------------------------------------------------------------------


def test_the_second_sample_replaces_the_first_and_later_ones_are_averaged() -> None:
    """The first task also paid for starting the trainer and loading the data."""
    first = next_pace(None, seconds=60.0, steps=10, examples=300, now=100.0)
    assert first == Pace(s_per_step=6.0, samples=1, at=100.0, examples=300, dev=3.0)
    second = next_pace(first, seconds=20.0, steps=10, examples=300, now=200.0)
    assert second == Pace(s_per_step=2.0, samples=2, at=200.0, examples=300, dev=1.0)
    third = next_pace(second, seconds=40.0, steps=10, examples=300, now=300.0)
    w, dw = pacing.PACE_WEIGHT, pacing.PACE_DEV_WEIGHT
    assert third.s_per_step == pytest.approx((1 - w) * 2.0 + w * 4.0) and third.samples == 3
    assert third.dev == pytest.approx((1 - dw) * 1.0 + dw * 2.0)


def test_a_slow_outlier_moves_the_pace_a_bounded_amount() -> None:
    settled = Pace(s_per_step=1.0, samples=5, at=0.0, examples=100)
    paused = next_pace(settled, seconds=10_000.0, steps=10, examples=100, now=1.0)
    w = pacing.PACE_WEIGHT
    assert paused.s_per_step == pytest.approx((1 - w) + w * pacing.PACE_CLIP)
    quick = next_pace(settled, seconds=0.0, steps=10, examples=100, now=1.0)
    assert quick.s_per_step == pytest.approx((1 - w) * 1.0 + w * pacing.PACE_FLOOR_S)
    provisional = Pace(s_per_step=1.0, samples=1, at=0.0, examples=100)
    slower = next_pace(provisional, seconds=10_000.0, steps=10, examples=100, now=1.0)
    assert slower.s_per_step == pytest.approx(pacing.PACE_CLIP)


def test_version_interval_is_the_median_gap() -> None:
    assert version_interval([]) is None
    assert version_interval([5.0]) is None
    assert version_interval([0.0, 10.0]) == pytest.approx(10.0)
    assert version_interval([0.0, 10.0, 20.0, 40.0]) == pytest.approx(10.0)
    assert version_interval([0.0, 10.0, 30.0, 40.0, 60.0]) == pytest.approx(15.0)
    # The long wait for the first contributors does not stretch later windows.
    assert version_interval([0.0, 300.0, 302.0, 304.0, 306.0]) == pytest.approx(2.0)


def _until(mode: str, **kw: Any) -> float:
    args: dict[str, Any] = {
        "mode": mode,
        "version_created_at": 100.0,
        "interval": 10.0,
        "now": 105.0,
        "max_staleness": 4,
        "round_deadline_s": 120.0,
        "lease_s": 300.0,
    }
    args.update(kw)
    return useful_until(**args)


def test_async_useful_until_is_when_the_update_would_be_too_stale() -> None:
    # Version 1 expected at 110; the update is refused once version 1 + 4 is out: 150.
    assert _until("async") == pytest.approx(150.0)
    assert _until("async", max_staleness=0) == pytest.approx(110.0)
    # A version current for 30 s: versions take at least that long now, the next one is
    # expected half of that from now (a stalled project widens the window again).
    assert _until("async", now=130.0) == pytest.approx(145.0 + 4 * 30.0)
    # Versions in the same instant are taken as INTERVAL_FLOOR_S apart.
    floor = pacing.INTERVAL_FLOOR_S
    assert _until("async", interval=0.0, now=100.0) == pytest.approx(100.0 + 5 * floor)
    # No history yet: a lease's worth of time per version the update may lag.
    assert _until("async", interval=None) == pytest.approx(105.0 + 300.0 * 5)


def test_sync_useful_until_is_when_the_round_is_expected_to_close() -> None:
    # A task the round needs to close at all is useful until the round's deadline...
    assert _until("sync", interval=30.0) == pytest.approx(220.0)
    assert _until("sync", interval=30.0, now=230.0) == pytest.approx(230.0 + 300.0)
    # ... an over-provisioned one until the round is expected to close.
    spare: dict[str, Any] = {"round_needs_it": False}
    assert _until("sync", interval=30.0, **spare) == pytest.approx(130.0)
    assert _until("sync", interval=500.0, **spare) == pytest.approx(220.0)  # the deadline
    assert _until("sync", interval=None, **spare) == pytest.approx(220.0)
    assert _until("sync", interval=30.0, now=140.0, **spare) == pytest.approx(220.0)  # late
    assert _until("sync", interval=30.0, now=230.0, **spare) == pytest.approx(230.0 + 300.0)


def test_a_sync_round_that_cannot_close_without_the_task_waits_for_it() -> None:
    waits: dict[str, Any] = {"round_waits_for_it": True}
    assert _until("sync", **waits) == pytest.approx(220.0 + pacing.ROUND_WAITS_S)
    # Past its deadline the round still waits: the update is useful whenever it comes.
    assert _until("sync", now=400.0, **waits) == pytest.approx(400.0 + pacing.ROUND_WAITS_S)


def test_fit_steps_sizes_or_withholds() -> None:
    pace = Pace(s_per_step=1.0, samples=3, at=0.0, examples=100)
    m = pacing.PACE_MARGIN
    assert fit_steps(full_steps=100, pace=None, now=0.0, useful_until=1.0) == 100  # optimistic
    assert fit_steps(full_steps=100, pace=pace, now=0.0, useful_until=100 * m) == 100
    assert fit_steps(full_steps=100, pace=pace, now=0.0, useful_until=99 * m) == 50
    assert fit_steps(full_steps=100, pace=pace, now=0.0, useful_until=25 * m) == 25
    assert fit_steps(full_steps=100, pace=pace, now=0.0, useful_until=24 * m) is None
    assert fit_steps(full_steps=1, pace=pace, now=0.0, useful_until=1 * m) == 1
    forgotten = pacing.PACE_FORGET_S + 1.0
    assert fit_steps(full_steps=100, pace=pace, now=forgotten, useful_until=forgotten) == 100


def test_a_contributor_whose_turnarounds_vary_gets_shorter_work() -> None:
    steady = Pace(s_per_step=1.0, samples=5, at=0.0, examples=100, dev=0.0)
    erratic = Pace(s_per_step=1.0, samples=5, at=0.0, examples=100, dev=1.0)
    assert fit_steps(full_steps=100, pace=steady, now=0.0, useful_until=200.0) == 100
    # (1 + 2 x 1) s a step: 300 s for the full task, 150 for half.
    assert fit_steps(full_steps=100, pace=erratic, now=0.0, useful_until=200.0) == 50
    assert fit_steps(full_steps=100, pace=erratic, now=0.0, useful_until=300.0) == 100


def test_one_provisional_sample_never_withholds() -> None:
    once = Pace(s_per_step=1.0, samples=1, at=0.0, examples=100)
    assert fit_steps(full_steps=100, pace=once, now=0.0, useful_until=1.0) == 25


def test_an_unconfirmed_pace_decays_so_a_withheld_contributor_is_tried_again() -> None:
    pace = Pace(s_per_step=1.0, samples=3, at=0.0, examples=100)
    m = pacing.PACE_MARGIN
    assert fit_steps(full_steps=100, pace=pace, now=0.0, useful_until=12 * m) is None
    later = pacing.PACE_HALF_LIFE_S  # counts as half as slow: 0.5 s a step
    assert fit_steps(full_steps=100, pace=pace, now=later, useful_until=later + 12.5 * m) == 25


# --- leases ---------------------------------------------------------------------------------

API = f"{IN_PROCESS_URL}/api/v1/projects"


def upload(http: requests.Session, co: Coordinator, who: DemoContributor, task: Any) -> Any:
    spec = co.runtime(co.project(task["project"])).spec
    return upload_request(
        http,
        IN_PROCESS_URL,
        project=task["project"],
        token=who.token,
        key=who.key,
        task=task,
        client_id=who.client_id,
        payload=encode_update(small_delta(spec), "int8").payload,
    )


def full_steps(co: Coordinator, task: dict[str, Any]) -> int:
    project = co.project(task["project"])
    assert project.shard_sizes is not None
    return total_steps_for(project.hparams, project.shard_sizes[task["shard_index"]])


def steps_of(task: dict[str, Any], co: Coordinator) -> int:
    project = co.project(task["project"])
    assert project.shard_sizes is not None
    return total_steps_for(task["hparams"], project.shard_sizes[task["shard_index"]])


def publish_versions(
    co: Coordinator, http: requests.Session, clock: FakeClock, quick: DemoContributor, n: int
) -> None:
    """``n`` versions, one every 10 s (buffer_size 1), from a quick contributor."""
    for _ in range(n):
        clock.advance(10.0)
        task = quick.lease(0)
        assert task is not None
        assert upload(http, co, quick, task).status_code == 201
        assert co.worker.run_once()


def test_a_new_contributor_gets_a_full_task_that_says_until_when_it_is_useful(
    coordinator: Coordinator, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async", buffer_size=1, max_staleness=2)
    ada = join("p", "Ada")
    task = ada.lease(0)  # the demo client verifies the signature over the whole manifest
    assert task is not None
    assert isinstance(task["useful_until"], int) and task["useful_until"] >= task["issued_at"]
    assert task["hparams"] == coordinator.project("p").hparams  # the full task


def test_the_pace_is_measured_from_lease_to_upload(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async", buffer_size=5)
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    clock.advance(24.0)
    assert upload(http, coordinator, ada, task).status_code == 201
    with coordinator.store.read() as tx:
        client = tx.client(ada.client_id)
    assert client is not None and client.pace_samples == 1
    assert client.pace_s_per_step == pytest.approx(24.0 / steps_of(task, coordinator), rel=0.05)


def test_a_slow_contributor_is_withheld_a_task_it_could_not_return_in_time(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async", buffer_size=1, max_staleness=1)
    quick, slow = join("p", "Quick"), join("p", "Slow")
    stale = slow.lease(0)
    assert stale is not None
    publish_versions(coordinator, http, clock, quick, 10)  # one version per 10 s
    refused = upload(http, coordinator, slow, stale)  # 100 s after its lease: far too late
    assert refused.json()["error"]["code"] == "wrong_base"
    with coordinator.store.read() as tx:
        client = tx.client(slow.client_id)
    assert client is not None and client.pace_samples == 1  # a late update is a sample too
    # One sample is provisional (it may include starting the trainer): a small task.
    small = slow.lease(0)
    assert small is not None and steps_of(small, coordinator) < full_steps(coordinator, small)
    publish_versions(coordinator, http, clock, quick, 10)
    assert upload(http, coordinator, slow, small).json()["error"]["code"] == "wrong_base"
    # Its pace: 100 s for a quarter task; a fresh task stays useful for ~2 intervals (20 s).
    assert slow.lease(0) is None
    r = requests_lease(http, slow)
    assert r.status_code == 204 and int(r.headers["Retry-After"]) >= 1
    assert quick.lease(0) is not None  # others still get work


def test_a_middling_contributor_gets_a_smaller_task(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async", buffer_size=1, max_staleness=6)
    quick, mid = join("p", "Quick"), join("p", "Mid")
    publish_versions(coordinator, http, clock, quick, 4)  # one version per 10 s
    task = mid.lease(0)
    assert task is not None
    publish_versions(coordinator, http, clock, quick, 6)
    # 60 s for a full task, 6 versions behind: accepted. A fresh task is useful for 70 s,
    # less than the full task needs with the margin.
    assert upload(http, coordinator, mid, task).status_code == 201
    assert mid.lease(0) is None  # its update waits for the buffer: its share of it
    assert coordinator.worker.run_once()
    small = mid.lease(0)
    assert small is not None
    full = full_steps(coordinator, small)
    assert small["hparams"]["max_steps"] in (max(1, full // 2), max(1, full // 4))
    assert steps_of(small, coordinator) < full
    assert {k: v for k, v in small["hparams"].items() if k != "max_steps"} == {
        k: v for k, v in coordinator.project("p").hparams.items() if k != "max_steps"
    }


def test_with_fit_tasks_off_everyone_gets_the_full_task(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async", buffer_size=1, max_staleness=1, fit_tasks=False)
    quick, slow = join("p", "Quick"), join("p", "Slow")
    stale = slow.lease(0)
    assert stale is not None
    publish_versions(coordinator, http, clock, quick, 10)
    assert upload(http, coordinator, slow, stale).json()["error"]["code"] == "wrong_base"
    again = slow.lease(0)
    assert again is not None and again["hparams"] == coordinator.project("p").hparams
    assert "useful_until" in again


def test_a_sync_task_is_useful_until_the_round_is_expected_to_close(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("p", clients_per_round=1, min_updates=1, overprovision=2.0, round_deadline_s=60.0)
    ada, bob = join("p", "Ada"), join("p", "Bob")
    for _ in range(3):  # rounds of 20 s
        task = ada.lease(0)
        assert task is not None
        clock.advance(20.0)
        assert upload(http, coordinator, ada, task).status_code == 201
        assert coordinator.worker.run_once()
    clock.advance(1.0)
    created = coordinator.stats(coordinator.project("p"))["versions"][-1]["created_at"]
    needed = bob.lease(0)  # the round cannot close without it: it waits for it
    assert needed is not None
    assert needed["useful_until"] == pytest.approx(created + 60 + pacing.ROUND_WAITS_S, abs=1.5)
    spare = ada.lease(0)  # over-provisioned: until rounds usually close
    assert spare is not None and spare["useful_until"] == pytest.approx(created + 20, abs=1.5)


def requests_lease(http: requests.Session, who: DemoContributor) -> requests.Response:
    return http.post(
        f"{API}/{who.project}/tasks/lease?wait=0",
        headers={"Authorization": f"Bearer {who.token}"},
    )
