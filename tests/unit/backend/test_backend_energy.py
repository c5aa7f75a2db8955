"""Energy given (issue 16): an update's manifest may report the energy its training took;
the coordinator stores it per update, sums it per contributor for the leaderboard, ``me``
and the pages (as reported, labelled so, never credited), and refuses a hostile value
naming the field."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.testing import IN_PROCESS_URL, small_delta, upload_request
from federated.codec import encode_update
from federated.protocol import ERROR_STATUS

API = f"{IN_PROCESS_URL}/api/v1/projects"

pytestmark = pytest.mark.both_stores


def _upload(
    http: requests.Session,
    coordinator: Coordinator,
    c: Any,
    task: dict[str, Any],
    energy: dict[str, Any] | None,
) -> requests.Response:
    spec = coordinator.runtime(coordinator.project(task["project"])).spec
    payload = encode_update(small_delta(spec, 1e-3, task["task_id"]), "int8").payload
    return upload_request(
        http,
        IN_PROCESS_URL,
        project=task["project"],
        token=c.token,
        key=c.key,
        task=task,
        client_id=c.client_id,
        payload=payload,
        manifest_overrides=energy,
    )


def test_reported_energy_is_stored_summed_and_shown_but_not_credited(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("fb", mode="async", buffer_size=8)
    ada, bob = join("fb", "Ada"), join("fb", "Bob")
    t1, tb = ada.lease(0), bob.lease(0)
    assert t1 and tb
    first = _upload(http, coordinator, ada, t1, {"energy_joules": 7200.0, "energy_method": "rapl"})
    assert first.status_code == 201, first.text
    receipt = first.json()
    assert receipt["energy_joules"] == 7200.0 and receipt["energy_method"] == "rapl"
    t2 = ada.lease(0)
    assert t2 and t2["task_id"] != t1["task_id"]
    second = _upload(
        http, coordinator, ada, t2, {"energy_joules": 3600.0, "energy_method": "estimated"}
    )
    assert second.status_code == 201, second.text
    plain = _upload(http, coordinator, bob, tb, None)  # an older contributor: unknown
    assert plain.status_code == 201 and plain.json()["energy_joules"] is None
    # The same credit for the same work, whatever energy was claimed.
    assert receipt["credit"] == pytest.approx(plain.json()["credit"])

    with coordinator.store.read() as tx:
        stored = {u.task_id: u for u in tx.updates(coordinator.project("fb").id)}
    assert (stored[t1["task_id"]].energy_joules, stored[t1["task_id"]].energy_method) == (
        7200.0,
        "rapl",
    )
    assert stored[tb["task_id"]].energy_joules is None

    board = {r["display_name"]: r for r in http.get(f"{API}/fb/leaderboard").json()["contributors"]}
    assert board["Ada"]["energy_joules"] == pytest.approx(10800.0)
    assert board["Ada"]["energy_measured_joules"] == pytest.approx(7200.0)
    assert board["Bob"]["energy_joules"] == 0.0
    me = http.get(f"{API}/fb/me", headers={"Authorization": f"Bearer {ada.token}"}).json()
    assert me["energy_joules"] == pytest.approx(10800.0)
    assert me["energy_measured_joules"] == pytest.approx(7200.0)

    page = http.get(f"{IN_PROCESS_URL}/p/fb/c/{ada.client_id}").text
    assert 'id="energy"' in page and "3.0 Wh" in page and "67% measured" in page
    assert "reported by the contributor&#x27;s computer" in page
    assert "none reported" in http.get(f"{IN_PROCESS_URL}/p/fb/c/{bob.client_id}").text
    project_page = http.get(f"{IN_PROCESS_URL}/p/fb").text
    assert "Energy*" in project_page and 'id="energy-note"' in project_page
    assert "3.0 Wh" in project_page


HOSTILE = [
    ({"energy_joules": -1.0, "energy_method": "rapl"}, "energy_joules"),
    ({"energy_joules": 1e12, "energy_method": "rapl"}, "energy_joules"),
    ({"energy_joules": 1e308, "energy_method": "estimated"}, "energy_joules"),
    ({"energy_joules": "lots", "energy_method": "rapl"}, "energy_joules"),
    ({"energy_joules": True, "energy_method": "rapl"}, "energy_joules"),
    ({"energy_joules": 10.0, "energy_method": "guessed"}, "energy_method"),
    ({"energy_joules": 10.0}, "energy_joules"),
    ({"energy_method": "rapl"}, "energy_joules"),
]


@pytest.mark.parametrize(("energy", "field"), HOSTILE, ids=[str(h[0]) for h in HOSTILE])
def test_a_hostile_energy_value_is_refused_naming_the_field(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    energy: dict[str, Any],
    field: str,
) -> None:
    make_project("fb", mode="async", buffer_size=8)
    ada = join("fb", "Ada")
    task = ada.lease(0)
    assert task
    response = _upload(http, coordinator, ada, task, energy)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "manifest_mismatch" and ERROR_STATUS["manifest_mismatch"] == 422
    assert field in error["message"]
    with coordinator.store.read() as tx:
        assert tx.updates(coordinator.project("fb").id) == []
        (client,) = tx.clients(coordinator.project("fb").id)
    assert client.energy_joules == 0.0


def test_nan_energy_is_not_json(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    """NaN and Infinity are no JSON numbers: refused before the manifest is read."""
    import base64

    make_project("fb", mode="async", buffer_size=8)
    ada = join("fb", "Ada")
    task = ada.lease(0)
    assert task
    good = _upload(http, coordinator, ada, task, {"energy_joules": 1.0, "energy_method": "rapl"})
    request = good.request
    assert good.status_code == 201
    raw = base64.b64decode(request.headers["X-Barnraise-Manifest"]).replace(b"1.0", b"NaN", 1)
    task2 = ada.lease(0)
    assert task2
    response = http.put(
        str(request.url).replace(task["task_id"], task2["task_id"]),
        data=request.body,
        headers={
            **dict(request.headers),
            "X-Barnraise-Manifest": base64.b64encode(raw).decode(),
            "X-Barnraise-Signature": ada.key.sign_bytes(raw),
        },
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_json"
