"""Rules about one task that leasing and uploads share: ownership, liveness, pace samples,
and that a banned contributor gets none."""

from __future__ import annotations

from typing import Any

from backend import pacing
from backend.errors import api_error
from backend.ids import check_server_id
from backend.services.context import ServiceContext
from backend.store import ClientRecord, ProjectRecord, TaskRecord, WriteTx
from federated.training import total_steps_for


def owned_task(
    ctx: ServiceContext, project: ProjectRecord, client: ClientRecord, task_id: str
) -> TaskRecord:
    """The task ``task_id`` of ``project``, if it is leased to ``client`` (else 404/403)."""
    check_server_id(task_id, "task id")
    with ctx.store.read() as tx:
        task = tx.task(task_id)
    if task is None or task.project_id != project.id:
        raise api_error("unknown_task", f"there is no task {task_id!r} in project {project.name!r}")
    if task.client_id != client.id:
        raise api_error("not_your_task", f"task {task_id!r} is leased to another contributor")
    return task


def check_not_banned(project: ProjectRecord, client: ClientRecord | None) -> None:
    """403 ``banned`` for a contributor the organiser banned (``backend.services.admin``):
    it may not lease, heartbeat, upload or rejoin; not a final refusal of any task."""
    if client is not None and client.banned_at is not None:
        raise api_error(
            "banned",
            f"the organiser of {project.name!r} banned this contributor "
            f"({(client.ban_reason or 'no reason given')[:200]}); it takes no more work from it",
        )


def check_live(task: TaskRecord, now: float) -> None:
    """Raise unless the task is leased and its lease has not ended."""
    if task.status == "rejected":
        raise api_error(
            "task_rejected",
            f"task {task.id!r} was refused for good ({task.rejected_code}); its update cannot "
            "be used, lease a new task",
        )
    if task.status == "cancelled":
        raise api_error(
            "wrong_base", "the round of this task has been aggregated; lease a new task"
        )
    if task.status != "leased" or task.deadline < now:
        raise api_error(
            "lease_expired", f"the lease on task {task.id!r} has ended; lease a new task"
        )


def full_task_steps(hparams: dict[str, Any], examples: int | None) -> int | None:
    """Training steps of a full task on ``examples`` local examples (None if unknown)."""
    if int(hparams.get("max_steps", 0) or 0) > 0:
        return int(hparams["max_steps"])
    if not examples:
        return None
    return total_steps_for(hparams, examples)


def record_pace(
    tx: WriteTx,
    client_id: str,
    task: TaskRecord,
    num_examples: int,
    now: float,
    client: ClientRecord | None = None,
) -> None:
    """Add this upload's turnaround (lease to now) to the client's pace (``backend.pacing``)."""
    hparams = task.manifest.get("hparams")
    steps = full_task_steps(hparams, num_examples) if isinstance(hparams, dict) else None
    client = client or tx.client(client_id)
    if steps is None or client is None:
        return
    pace = pacing.next_pace(
        pacing.pace_of(client),
        seconds=now - task.issued_at,
        steps=steps,
        examples=num_examples,
        now=now,
    )
    tx.set_client_pace(client_id, pace.s_per_step, pace.dev, pace.samples, pace.at, pace.examples)
