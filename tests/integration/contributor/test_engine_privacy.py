"""Differential privacy end to end (issue 14): real engines, with their real training
child, against a real coordinator on loopback. A dp-sgd contributor trains with DP-SGD,
reports the epsilon spent on its own data and no losses, and stops by itself when its
budget would be passed; a dp-fedavg project closes when its budget is spent and the
contributor stops; a task whose terms differ from those consented to is refused unsent."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_e2e_helpers import EventLog, make_controller

from app.contributor.events import Error, TaskFinished
from app.contributor.privacy import PRIVACY_FILE
from backend.demo_headless import DEMO_HPARAMS
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app
from federated.privacy.accounting import Spend, epsilon_spent

RECORD_LEVEL = {
    "mode": "async",
    "buffer_size": 1,
    "codec": "int8",
    "privacy": "dp-sgd",
    "dp_epsilon": 4.7,  # two 30-step tasks at q = 16/240 spend 4.35; a third 5.09
    "dp_noise_multiplier": 1.0,
    "dp_clip_norm": 1.0,
    "spot_check_rate": 0,
    "fit_tasks": False,
}
USER_LEVEL = {
    "mode": "sync",
    "clients_per_round": 1,
    "min_updates": 1,
    "codec": "int8",
    "privacy": "dp-fedavg",
    "dp_epsilon": 8.0,  # two aggregates at noise 1 spend 7.08; a third 9.01
    "dp_noise_multiplier": 1.0,
    "dp_clip_norm": 1.0,
    "spot_check_rate": 0,
    "max_loss_regression": 0,
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    app = create_app(tmp_path / "backend", rate=None)
    for name, settings in (("records", RECORD_LEVEL), ("users", USER_LEVEL)):
        app.coordinator.create_project(
            name, recipe="digits-mlp", hparams=DEMO_HPARAMS, settings=settings
        )
    server = make_server(app, "127.0.0.1", 0, threads=16)
    start_in_thread(server)
    yield app, f"http://127.0.0.1:{bound_port(server)}"
    server.stop()
    app.close()


def _updates(app: Any, project: str) -> list[Any]:
    co = app.coordinator
    with co.store.read() as tx:
        return list(tx.updates(co.project(project).id))


def _task_statuses(tmp_path: Path, project: str) -> list[str]:
    with sqlite3.connect(tmp_path / "backend" / "barnraise.sqlite3") as db:
        rows = db.execute(
            "SELECT t.status FROM tasks t JOIN projects p ON p.id = t.project_id"
            " WHERE p.name = ? ORDER BY t.issued_at",
            (project,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def _privacy_file(root: Path) -> dict[str, Any]:
    found = list((root / "state").rglob(PRIVACY_FILE))
    assert len(found) == 1
    data: dict[str, Any] = json.loads(found[0].read_text())
    return data


def _run_until(controller: Any, stop_when: Any, timeout: float = 240) -> EventLog:
    events = EventLog()
    controller.subscribe(events)
    controller.start()
    try:
        events.wait_for(stop_when, timeout)
    finally:
        controller.stop()
        assert controller.wait(60)
    return events


def test_a_record_level_contributor_stops_itself_when_its_budget_is_spent(
    served: tuple[Any, str], tmp_path: Path
) -> None:
    app, url = served
    c = make_controller(tmp_path / "c")
    c.join(f"{url}/p/records", display_name="hospital")
    events = _run_until(c, lambda e: isinstance(e, Error) and e.code == "privacy_budget_spent")
    accepted = [e for e in events.events if isinstance(e, TaskFinished) and e.accepted]
    assert len(accepted) == 2
    updates = _updates(app, "records")
    assert len(updates) == 2
    for update in updates:
        assert "loss_before" not in update.metrics and "loss_after" not in update.metrics
        assert 0 < update.metrics["dp_epsilon"] <= 4.7
    kept = _privacy_file(tmp_path / "c")
    assert kept["terms"]["mechanism"] == "dp-sgd" and kept["terms"]["epsilon"] == 4.7
    spends = [Spend.from_json(s) for s in kept["spends"]]
    assert len(spends) == 2 and all(s.noise_multiplier == 1.0 for s in spends)
    assert kept["epsilon"] == pytest.approx(epsilon_spent(spends, 1e-5))
    assert max(u.metrics["dp_epsilon"] for u in updates) == pytest.approx(kept["epsilon"])
    view = app.coordinator.project_view(app.coordinator.project("records"))
    assert view["privacy_spent"]["epsilon"] == pytest.approx(kept["epsilon"])
    # The third task was given back untrained, and the project is off for this machine.
    assert sorted(_task_statuses(tmp_path, "records")) == ["answered", "answered", "released"]
    status = c.status()
    assert status.projects[0].disabled and "epsilon" in status.projects[0].disabled
    assert "epsilon spent on your data" in (status.projects[0].privacy or "")


def test_a_user_level_project_closes_when_its_budget_is_spent_and_the_contributor_stops(
    served: tuple[Any, str], tmp_path: Path
) -> None:
    app, url = served
    c = make_controller(tmp_path / "c")
    c.join(f"{url}/p/users", display_name="volunteer")
    _run_until(c, lambda e: isinstance(e, Error) and e.code == "privacy_budget_spent")
    project = app.coordinator.project("users")
    assert project.current_version == 2 and project.status == "closed"
    updates = _updates(app, "users")
    assert len(updates) == 2
    for update in updates:
        assert update.metrics["dp_within_clip"] in (0.0, 1.0)
        assert "loss_after" not in update.metrics
    spent = app.coordinator.project_view(project)["privacy_spent"]
    assert spent["steps"] == 2 and spent["exhausted"]
    assert spent["epsilon"] == pytest.approx(epsilon_spent([Spend(1.0, 1.0, 2)], 1e-5))


def test_a_task_whose_terms_differ_from_the_consent_is_refused_unsent(
    served: tuple[Any, str], tmp_path: Path
) -> None:
    app, url = served
    c = make_controller(tmp_path / "c")
    c.join(f"{url}/p/users", display_name="careful")
    consent = next((tmp_path / "c" / "state").rglob(PRIVACY_FILE))
    kept = json.loads(consent.read_text())
    kept["terms"]["epsilon"] = 1.0  # what the volunteer agreed to: not what tasks carry
    consent.write_text(json.dumps(kept))
    events = _run_until(c, lambda e: isinstance(e, Error) and e.code == "privacy_terms_changed")
    refusal = next(
        e for e in events.events if isinstance(e, Error) and e.code == "privacy_terms_changed"
    )
    assert "epsilon 1.0" in refusal.message and "epsilon 8.0" in refusal.message
    assert _updates(app, "users") == []
    assert _task_statuses(tmp_path, "users") == ["released"]
