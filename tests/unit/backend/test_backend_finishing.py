"""Projects that finish (issue 16): a declared end (versions, a held-out metric, the
compute in the model, a date) or the organiser's `project finish` ends training for good:
leases and joins answer 410 project_finished, the leases out are cancelled, late updates
are dropped with their credit granted, the page thanks the volunteers and offers the final
model, and nothing reopens it (a closed project stays closed too)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import requests
from safetensors.numpy import load as load_safetensors

from backend.cli import main
from backend.coordinator import Coordinator
from backend.testing import IN_PROCESS_URL, FakeClock, upload_small_delta

API = f"{IN_PROCESS_URL}/api/v1/projects"


def one_version(coordinator: Coordinator, http: requests.Session, people: list[Any]) -> None:
    for who in people:
        task = who.lease(0)
        assert task is not None
        assert upload_small_delta(http, coordinator, who, task).status_code == 201
    assert coordinator.worker.run_once()


def refused(response: requests.Response, code: str) -> None:
    assert response.status_code == 410, response.text
    assert response.json()["error"]["code"] == code


def lease(http: requests.Session, who: Any, project: str) -> requests.Response:
    return http.post(
        f"{API}/{project}/tasks/lease", headers={"Authorization": f"Bearer {who.token}"}
    )


def test_a_project_finishes_after_its_versions_and_stops_for_good(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", finish_after_versions=2)
    alice, bob, carol = (join("digits", n) for n in ("Alice", "Bob", "Carol"))
    one_version(coordinator, http, [alice, bob])
    assert coordinator.project("digits").status == "open"
    late_task = carol.lease(0)  # leased at version 1, answered after the end
    assert late_task is not None
    for who in (alice, bob):
        task = who.lease(0)
        assert task is not None
        assert upload_small_delta(http, coordinator, who, task).status_code == 201
    assert coordinator.worker.run_once()
    project = coordinator.project("digits")
    assert (project.status, project.current_version) == ("finished", 2)
    refused(lease(http, alice, "digits"), "project_finished")
    refused(http.post(f"{API}/digits/challenge"), "project_finished")
    refused(upload_small_delta(http, coordinator, carol, late_task), "project_finished")
    stats = http.get(f"{API}/digits/stats").json()
    assert stats["actions"][0]["action"] == "finish"
    assert "2 versions published" in stats["actions"][0]["reason"]
    with pytest.raises(ValueError, match="finished"):
        coordinator.set_status("digits", "open")
    assert coordinator.set_status("digits", "closed").status == "closed"
    with pytest.raises(ValueError, match="closed for good"):
        coordinator.set_status("digits", "open")


def test_updates_too_late_for_the_final_model_are_dropped_with_their_credit(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", mode="async", buffer_size=2, finish_after_versions=1)
    alice, bob, carol = (join("digits", n) for n in ("Alice", "Bob", "Carol"))
    tasks = [who.lease(0) for who in (alice, bob, carol)]
    for who, task in zip((alice, bob, carol), tasks, strict=True):
        assert task is not None
        assert upload_small_delta(http, coordinator, who, task).status_code == 201
    assert coordinator.worker.run_once()
    assert coordinator.project("digits").status == "finished"
    with coordinator.store.read() as tx:
        assert tx.pending_updates(coordinator.project("digits").id) == 0
    me = http.get(f"{API}/digits/me", headers={"Authorization": f"Bearer {carol.token}"}).json()
    assert me["credit_pending"] == 0 and me["credit"] > 0


@pytest.mark.parametrize(
    ("settings", "finishes"),
    [
        ({"finish_at_metric": "accuracy>=0"}, True),
        ({"finish_at_metric": "loss<=0"}, False),
        ({"finish_compute_gflop": 1e-9}, True),
        ({"finish_compute_gflop": 1e12}, False),
    ],
)
def test_a_metric_or_a_compute_budget_reached_finishes_it(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    settings: dict[str, Any],
    finishes: bool,
) -> None:
    make_project("digits", **settings)
    one_version(coordinator, http, [join("digits", "Alice"), join("digits", "Bob")])
    assert coordinator.project("digits").status == ("finished" if finishes else "open")


def test_its_end_date_finishes_it_on_the_workers_pass(
    coordinator: Coordinator, make_project: Any, clock: FakeClock
) -> None:
    make_project("digits", finish_at="2025-11-25T12:00:00+00:00")  # the clock: 2025-11-24
    assert not coordinator.worker.run_once()
    assert coordinator.project("digits").status == "open"
    clock.advance(2 * 86400)
    coordinator.worker.run_once()
    assert coordinator.project("digits").status == "finished"
    assert "2025-11-25" in coordinator.stats(coordinator.project("digits"))["actions"][0]["reason"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"finish_at_metric": "f1>=0.9"}, "does not measure.*accuracy"),
        ({"finish_at_metric": "accuracy>0.9"}, "METRIC>=VALUE"),
        ({"finish_at": "2020-01-01"}, "not in the future"),
        ({"finish_at": "next week"}, "ISO 8601"),
        ({"finish_after_versions": -3}, "finish_after_versions"),
    ],
)
def test_an_end_that_cannot_be_reached_is_refused_at_creation(
    coordinator: Coordinator, make_project: Any, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_project("digits", **settings)
    assert coordinator.projects() == []


def test_the_organiser_finishes_it_and_the_page_offers_the_final_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = ["--data", str(data)]
    assert (
        main(["project", "create", "digits", "--recipe", "digits-mlp", "num_shards=2", *args]) == 0
    )
    assert main(["project", "finish", "digits", "--reason", "accurate enough", *args]) == 0
    assert "digits: finished at version 0" in capsys.readouterr().out
    assert main(["project", "resume", "digits", *args]) == 2
    assert "has finished" in capsys.readouterr().err
    assert main(["project", "finish", "digits", *args]) == 2

    from backend.testing import wsgi_session
    from backend.wsgi import App

    c = Coordinator(data, start_worker=False)
    try:
        http = wsgi_session(App(c, rate=None))
        page = http.get(f"{IN_PROCESS_URL}/p/digits").text
        assert "Finished — thank you" in page and "accurate enough" in page
        assert "badge-finished" in page
        digest = c.project_view(c.project("digits"))["model_digest"]
        assert f'/api/v1/projects/digits/models/{digest}"' in page
        model = http.get(f"{API}/digits/models/{digest}")
        assert model.status_code == 200
        tensors = load_safetensors(io.BytesIO(model.content).getvalue())
        assert tensors and all(t.dtype.name == "float32" for t in tensors.values())
    finally:
        c.close()
