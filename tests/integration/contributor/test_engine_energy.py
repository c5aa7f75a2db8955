"""Energy given, end to end (issue 16): a real engine trains a task against a real
coordinator on loopback; the energy its trainer measured or estimated goes out signed with
the update and comes back in the receipt, the leaderboard, ``me`` and the local ledger."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from engine_e2e_helpers import Coordinator, EventLog, make_controller, running_settings

from app.contributor.events import TaskFinished
from backend.services.standings import receipt

pytestmark = pytest.mark.slow


def test_the_energy_of_a_task_is_reported_with_its_update(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    c = make_controller(tmp_path / "c", settings=running_settings(cpu_tdp_watts=40.0))
    c.join(f"{coordinator.url}/p/digits", display_name="watt")
    events = EventLog()
    c.subscribe(events)
    c.start()
    try:
        done = events.wait_for(lambda e: isinstance(e, TaskFinished), timeout=180)
        assert done.accepted, done
    finally:
        c.stop()
        assert c.wait(60)

    co = coordinator.app.coordinator
    project = co.project("digits")
    with co.store.read() as tx:
        [update] = tx.updates(project.id)
        client = tx.client(update.client_id)
    assert client is not None
    # Measured where this machine lets a user read RAPL (or NVML), else estimated.
    assert update.energy_method in ("rapl", "nvml", "rapl+nvml", "estimated")
    assert update.energy_joules is not None and update.energy_joules > 0
    signed = json.loads(base64.b64decode(update.manifest_b64))
    assert signed["energy_joules"] == update.energy_joules  # signed with the update
    assert signed["energy_method"] == update.energy_method
    assert receipt(update).energy_joules == update.energy_joules

    [row] = coordinator.leaderboard()["contributors"]
    assert row["energy_joules"] == pytest.approx(update.energy_joules)
    measured = 0.0 if update.energy_method == "estimated" else update.energy_joules
    assert row["energy_measured_joules"] == pytest.approx(measured)
    me = co.services.standings.me(project, client)
    assert me.energy_joules == pytest.approx(update.energy_joules)

    [key] = c.ledger.projects()
    totals = c.ledger.totals(key)
    assert totals.energy_joules == pytest.approx(update.energy_joules)
    assert totals.energy_measured_joules == pytest.approx(measured)
    [task] = c.ledger.recent(key)
    assert task.energy_method == update.energy_method
