"""Every JSON answer of a short real flow is exactly its protocol message.

Each answer converts strictly into its ``federated.protocol`` type, and ``to_wire`` of that
gives the answer back: no field the type lacks, none of another type (int vs float).
"""

from __future__ import annotations

from typing import Any

import requests

from backend.coordinator import Coordinator
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request
from federated import protocol
from federated.codec import encode_update
from federated.signing import SigningKey, verify

API = f"{IN_PROCESS_URL}/api/v1/projects"


def exactly(response: requests.Response, type_: type[Any], status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    message = protocol.convert(body, type_, what=type_.__name__)
    assert protocol.to_wire(message) == body, f"{type_.__name__} is not what was sent"
    return message


def test_every_answer_of_a_round_is_exactly_its_protocol_message(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    clock: FakeClock,
) -> None:
    make_project("digits", clients_per_round=2, min_updates=2)
    coordinator.create_project(
        "tab",
        recipe="tabular-csv",
        hparams={"label_column": "y", "feature_columns": "a,b", "num_classes": 2},
    )
    exactly(http.get(f"{IN_PROCESS_URL}/healthz"), protocol.Health)
    listed = exactly(http.get(API), protocol.ProjectList)
    assert [p.name for p in listed.projects] == ["digits", "tab"]
    project = exactly(http.get(f"{API}/digits"), protocol.Project)
    tab = exactly(http.get(f"{API}/tab"), protocol.Project)
    assert tab.data_columns is not None and tab.data_columns.features == ["a", "b"]

    challenge = exactly(http.post(f"{API}/digits/challenge"), protocol.Challenge)
    key = SigningKey.generate()
    statement = {
        "challenge": challenge.challenge,
        "project": "digits",
        "public_key": key.public_key_b64,
        "purpose": "join",
    }
    request = protocol.JoinRequest(
        display_name="Ada",
        team="Engines",
        public_key=key.public_key_b64,
        challenge=challenge.challenge,
        signature=key.sign(statement),
    )
    joined = exactly(
        http.post(f"{API}/digits/join", json=protocol.to_wire(request)),
        protocol.JoinResponse,
        201,
    )
    assert joined.project == project
    auth = {"Authorization": f"Bearer {joined.token}"}
    bob = join("digits", "Bob")

    leased = exactly(
        http.post(f"{API}/digits/tasks/lease?wait=0", headers=auth), protocol.SignedTask
    )
    task = protocol.to_wire(leased.manifest)
    verify(project.public_key, task, leased.signature)  # over exactly what was sent
    clock.advance(5)
    beat = exactly(
        http.post(f"{API}/digits/tasks/{leased.manifest.task_id}/heartbeat", headers=auth),
        protocol.Heartbeat,
    )
    assert beat.deadline > leased.manifest.deadline
    again = exactly(
        http.post(f"{API}/digits/tasks/lease?wait=0", headers=auth), protocol.SignedTask
    )
    assert again.manifest.task_id == leased.manifest.task_id
    assert again.manifest.deadline == beat.deadline  # the heartbeat re-signed it
    verify(project.public_key, protocol.to_wire(again.manifest), again.signature)

    spec = coordinator.runtime(coordinator.project("digits")).spec

    def upload(token: str, signer: SigningKey, client_id: str, t: dict[str, Any]) -> Any:
        payload = encode_update(small_delta(spec, key=t["task_id"]), "int8").payload
        return upload_request(
            http,
            IN_PROCESS_URL,
            project="digits",
            token=token,
            key=signer,
            task=t,
            client_id=client_id,
            payload=payload,
        )

    receipt = exactly(upload(joined.token, key, joined.client_id, task), protocol.Receipt, 201)
    assert receipt.task_id == leased.manifest.task_id and receipt.credit > 0
    first = exactly(upload(joined.token, key, joined.client_id, task), protocol.Receipt, 200)
    assert first == receipt
    task_b = bob.lease(0)
    assert task_b is not None
    exactly(upload(bob.token, bob.key, bob.client_id, task_b), protocol.Receipt, 201)
    assert coordinator.worker.run_once()

    model = exactly(http.get(f"{API}/digits/models/current"), protocol.SignedModel)
    assert model.manifest.version == 1
    verify(project.public_key, protocol.to_wire(model.manifest), model.signature)
    board = exactly(http.get(f"{API}/digits/leaderboard"), protocol.Leaderboard)
    assert sorted(r.display_name for r in board.contributors) == ["Ada", "Bob"]
    assert sorted(r.rank for r in board.contributors) == [1, 2]
    assert [(t.name, t.members) for t in board.teams] == [("Engines", 1)]
    stats = exactly(http.get(f"{API}/digits/stats"), protocol.Stats)
    assert stats.current_version == 1 and [v.version for v in stats.versions] == [0, 1]
    assert stats.updates_aggregated == 2 and stats.contributors == 2
    me = exactly(http.get(f"{API}/digits/me", headers=auth), protocol.Me)
    assert me.client_id == joined.client_id and me.team == "Engines"
    assert me.rank in {1, 2} and me.credit == receipt.credit

    # The coordinator's own dicts (CLI, tests) are the same wire values.
    record = coordinator.project("digits")
    assert coordinator.stats(record) == protocol.to_wire(stats)
    assert coordinator.leaderboard(record) == protocol.to_wire(board)
