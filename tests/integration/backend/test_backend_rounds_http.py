"""Three contributors finish five rounds of digits over real HTTP, in sync and async mode,
on each store (the session's SQLite and PostgreSQL live servers)."""

from __future__ import annotations

import base64
import threading
import time

import pytest
import requests

from backend.cli import DEMO_HPARAMS
from backend.demo_clients import DemoContributor
from federated.signing import verify, verify_bytes

ROUNDS = 5
TIMEOUT_S = 120.0

pytestmark = pytest.mark.both_stores


@pytest.fixture
def server(request: pytest.FixtureRequest, store_kind: str) -> object:
    """The session's live server keeping its data in ``store_kind``."""
    return request.getfixturevalue(
        "postgres_live_server" if store_kind == "postgres" else "live_server"
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_three_contributors_finish_five_rounds(server: object, mode: str) -> None:
    coordinator = server.app.coordinator  # type: ignore[attr-defined]
    name = f"digits-{mode}"
    coordinator.create_project(
        name,
        recipe="digits-mlp",
        hparams=DEMO_HPARAMS,
        settings={
            "mode": mode,
            "clients_per_round": 3,
            "min_updates": 3,
            "buffer_size": 3,
            "codec": "int8",
        },
    )
    stop = threading.Event()
    clients = [
        DemoContributor(server.url, name, f"{mode}-{i}", team="t" if i else None) for i in range(3)
    ]  # type: ignore[attr-defined]
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
    for t in threads:
        t.start()
    give_up = time.monotonic() + TIMEOUT_S
    try:
        while True:  # wait on the coordinator's own wake-ups, not on a timer
            seen = coordinator.notifier.generation(name)
            if coordinator.project(name).current_version >= ROUNDS:
                break
            assert all(t.is_alive() for t in threads), [c.errors for c in clients]
            assert time.monotonic() < give_up, f"{ROUNDS} versions took over {TIMEOUT_S} s"
            coordinator.notifier.wait(name, seen, give_up - time.monotonic())
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    hard_errors = [e for c in clients for e in c.errors if "wrong_base" not in e]
    assert hard_errors == []
    stats = requests.get(f"{server.url}/api/v1/projects/{name}/stats", timeout=10).json()  # type: ignore[attr-defined]
    versions = stats["versions"]
    assert len(versions) >= ROUNDS + 1
    for v in versions[1 : ROUNDS + 1]:
        assert v["updates"] == 3
        if mode == "sync":
            assert v["contributors"] == 3
    if mode == "sync":
        assert versions[ROUNDS]["metrics"]["accuracy"] >= 0.85
    else:
        assert versions[ROUNDS]["metrics"]["accuracy"] > versions[0]["metrics"]["accuracy"] + 0.3
    current = requests.get(f"{server.url}/api/v1/projects/{name}/models/current", timeout=10).json()  # type: ignore[attr-defined]
    verify(clients[0].project_key, current["manifest"], current["signature"])
    board = requests.get(f"{server.url}/api/v1/projects/{name}/leaderboard", timeout=10).json()  # type: ignore[attr-defined]
    assert len(board["contributors"]) == 3 and all(r["credit"] > 0 for r in board["contributors"])
    # Every receipt a client holds names an update that is stored and verifies.
    project = coordinator.project(name)
    with coordinator.store.read() as tx:
        stored = {u.id: u for u in tx.updates(project.id)}
        keys = {c.id: c.public_key for c in tx.clients(project.id)}
    for c in clients:
        for receipt in c.receipts:
            u = stored[receipt["update_id"]]
            assert coordinator.blobs.verify(u.payload_digest)
            verify_bytes(keys[u.client_id], base64.b64decode(u.manifest_b64), u.signature)
