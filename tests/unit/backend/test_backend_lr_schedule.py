"""A learning-rate schedule across versions (issue 13): the coordinator places each task on
it (``schedule_offset`` = base version x the full task's steps, in the signed manifest), a
task pacing shrinks starts where its version starts, projects without such a schedule get
their hyperparameters unchanged, and a spot check re-executes a task at its own offset."""

from __future__ import annotations

from typing import Any

import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.testing import (
    IN_PROCESS_URL,
    FakeClock,
    upload_small_delta,
)
from federated.recipes import get_recipe
from federated.replication import reexecute, relative_difference
from federated.training import total_steps_for

API = f"{IN_PROCESS_URL}/api/v1/projects"
DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}
COSINE = {**DIGITS, "lr_schedule": "cosine", "warmup_steps": 5, "schedule_steps": 10_000}


def create(co: Coordinator, name: str, hparams: dict[str, Any], **settings: Any) -> None:
    co.create_project(
        name,
        recipe="digits-mlp",
        hparams=hparams,
        settings={
            "clients_per_round": 2,
            "min_updates": 2,
            "codec": "int8",
            "spot_check_rate": 0,
            **settings,
        },
    )


def upload(http: requests.Session, co: Coordinator, who: DemoContributor, task: Any) -> Any:
    return upload_small_delta(http, co, who, task)


def full_steps(co: Coordinator, task: dict[str, Any]) -> int:
    project = co.project(task["project"])
    assert project.shard_sizes is not None
    return total_steps_for(project.hparams, project.shard_sizes[task["shard_index"]])


def sync_round(
    co: Coordinator, http: requests.Session, people: list[DemoContributor]
) -> list[dict[str, Any]]:
    tasks = []
    for who in people:
        task = who.lease(0)
        assert task is not None
        assert upload(http, co, who, task).status_code == 201
        tasks.append(task)
    assert co.worker.run_once()
    return tasks


def test_a_cosine_projects_tasks_start_where_their_base_version_stands(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    create(coordinator, "cos", COSINE)
    ada, bob = join("cos", "Ada"), join("cos", "Bob")
    project_hparams = coordinator.project("cos").hparams
    for version in range(3):
        for task in sync_round(coordinator, http, [ada, bob]):
            assert task["base_version"] == version
            assert task["hparams"]["schedule_offset"] == version * full_steps(coordinator, task)
            assert {k: v for k, v in task["hparams"].items() if k != "schedule_offset"} == {
                k: v for k, v in project_hparams.items() if k != "schedule_offset"
            }
    assert coordinator.project("cos").current_version == 3


def test_projects_without_a_schedule_across_versions_get_their_hparams_unchanged(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    per_task = {**DIGITS, "lr_schedule": "cosine", "warmup_steps": 5}  # schedule_steps 0
    for name, hparams in (("flat", DIGITS), ("own", per_task)):
        create(coordinator, name, hparams)
        people = [join(name, "Ada"), join(name, "Bob")]
        sync_round(coordinator, http, people)
        for task in sync_round(coordinator, http, people):  # on version 1
            assert task["base_version"] == 1
            assert task["hparams"] == coordinator.project(name).hparams
            assert task["hparams"]["schedule_offset"] == 0  # the default, not the rule's


def test_with_fit_tasks_off_the_offset_is_set_too(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    create(coordinator, "cos", COSINE, fit_tasks=False)
    ada, bob = join("cos", "Ada"), join("cos", "Bob")
    sync_round(coordinator, http, [ada, bob])
    task = ada.lease(0)
    assert task is not None and task["base_version"] == 1
    assert task["hparams"]["schedule_offset"] == full_steps(coordinator, task)


def test_a_task_pacing_shrinks_starts_at_its_versions_start(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, join: Any
) -> None:
    create(coordinator, "cos", COSINE, mode="async", buffer_size=1, max_staleness=1)
    quick, slow = join("cos", "Quick"), join("cos", "Slow")
    stale = slow.lease(0)
    assert stale is not None and stale["hparams"]["schedule_offset"] == 0
    for _ in range(10):  # ten versions, one every 10 s
        clock.advance(10.0)
        task = quick.lease(0)
        assert task is not None
        assert task["hparams"]["schedule_offset"] == task["base_version"] * full_steps(
            coordinator, task
        )
        assert upload(http, coordinator, quick, task).status_code == 201
        assert coordinator.worker.run_once()
    assert upload(http, coordinator, slow, stale).json()["error"]["code"] == "wrong_base"
    small = slow.lease(0)  # one provisional pace sample: a smaller task
    assert small is not None and small["base_version"] == 10
    full = full_steps(coordinator, small)
    assert 0 < small["hparams"]["max_steps"] < full
    assert small["hparams"]["schedule_offset"] == 10 * full  # not 10 x its own steps


def test_a_spot_check_re_executes_the_task_at_its_offset(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    """Honest uploads on version 1 (offset 8: the decaying half of the schedule) pass their
    check, though a re-execution at offset 0 (warm-up, then the top of it) is far off."""
    hparams = {
        "num_shards": 3,
        "hidden": 8,
        "batch_size": 64,
        "max_steps": 8,
        "lr_schedule": "cosine",
        "warmup_steps": 2,
        "schedule_steps": 16,
    }
    coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        hparams=hparams,
        settings={"clients_per_round": 2, "min_updates": 2, "codec": "int8"},
    )
    ada, bob = join("digits", "Ada"), join("digits", "Bob")
    for who in (ada, bob):
        task = who.lease(0)
        assert task is not None
        who.train_and_upload(task)
    assert coordinator.worker.run_once()
    cid, dee = join("digits", "Cid"), join("digits", "Dee")  # newcomers: always checked
    receipts, tasks = [], []
    for who in (cid, dee):
        task = who.lease(0)
        assert task is not None and task["hparams"]["schedule_offset"] == 8
        tasks.append(task)
        receipts.append(who.train_and_upload(task))
    assert coordinator.worker.run_once()
    with coordinator.store.read() as tx:
        updates = [tx.update(r["update_id"]) for r in receipts]
    for u in updates:
        assert u is not None and u.check_error is not None and u.check_error < 0.05
        assert u.status == "aggregated"
    # The offset matters: the same task re-executed from the schedule's start is far off.
    recipe, task = get_recipe("digits-mlp"), tasks[0]
    hp = recipe.resolve_hparams(task["hparams"])
    rt = coordinator.runtime(coordinator.project("digits"))
    base = rt.recipe.initial_state(hp)  # any base will do: only the rates differ
    data = recipe.load_shard(hp, task["shard_index"])

    def delta(offset: int) -> dict[str, Any]:
        return reexecute(
            recipe,
            {**hp, "schedule_offset": offset},
            base,
            data,
            task_id=task["task_id"],
            max_examples=task["max_examples"],
        )

    assert relative_difference(delta(0), delta(8)) > 0.1 * 3
