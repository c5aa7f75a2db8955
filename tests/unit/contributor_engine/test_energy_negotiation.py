"""Energy goes into an update's manifest only where the task said the coordinator takes it:
a coordinator from before the energy fields leaves ``report_energy`` out of its tasks and
would refuse them as unknown fields, ending the task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.contributor.energy import Energy
from app.contributor.task_flow import TaskFlow
from app.contributor.trainer import TrainOutcome
from federated import protocol

DIGEST = "ab" * 32


@pytest.mark.parametrize(("flag", "sent"), [(True, True), (False, False), (None, False)])
def test_energy_is_reported_only_to_a_coordinator_that_takes_it(
    flag: bool | None, sent: bool
) -> None:
    manifest = {"base_digest": DIGEST, **({} if flag is None else {"report_energy": flag})}
    project = SimpleNamespace(
        ref=SimpleNamespace(project="digits"), creds=SimpleNamespace(client_id="c" * 22)
    )
    task = SimpleNamespace(task_id="t" * 22, manifest=manifest)
    outcome = TrainOutcome(
        task_id=task.task_id,
        done=True,
        payload_digest=DIGEST,
        codec="int8",
        num_examples=100,
        energy=Energy(joules=41.5, method="estimated"),
    )
    flow = object.__new__(TaskFlow)  # _update_manifest uses none of the flow's own state
    update = flow._update_manifest(project, task, outcome)  # type: ignore[arg-type]
    assert (update.energy_joules, update.energy_method) == (
        (41.5, "estimated") if sent else (None, None)
    )
    wire = protocol.encode_canonical(update)
    assert (b"energy_joules" in wire) is sent
