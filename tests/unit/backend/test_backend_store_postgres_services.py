"""The coordinator's services on either store: ``coordinator`` (conftest's; this module is
marked ``both_stores``) runs on SQLite and on PostgreSQL, so join -> lease -> upload ->
aggregate -> credit goes through the real services, HTTP in process, on both."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.services.aggregation import claim_ready
from backend.services.aggregation_worker import AggregationWorker
from backend.store.postgres import PostgresStore
from backend.testing import IN_PROCESS_URL, upload_small_delta

API = f"{IN_PROCESS_URL}/api/v1/projects"

pytestmark = pytest.mark.both_stores


def test_rounds_lease_upload_aggregate_and_credit(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    alice, bob = join("digits", "Alice", team="A"), join("digits", "Bob")
    for version in (1, 2):
        tasks = [c.lease(0) for c in (alice, bob)]
        assert all(t is not None for t in tasks)
        assert len({t["task_id"] for t in tasks if t}) == 2
        for c, task in zip((alice, bob), tasks, strict=True):
            assert task is not None
            first = upload_small_delta(http, coordinator, c, task)
            assert first.status_code == 201, first.text
            again = upload_small_delta(http, coordinator, c, task)  # a retry: same receipt
            assert again.status_code in (200, 201) and again.json() == first.json()
        assert coordinator.worker.run_once()
        assert coordinator.project("digits").current_version == version
    board = http.get(f"{API}/digits/leaderboard").json()
    assert [r["updates_accepted"] for r in board["contributors"]] == [2, 2]
    assert all(r["credit"] > 0 for r in board["contributors"])
    stats = http.get(f"{API}/digits/stats").json()
    assert [v["version"] for v in stats["versions"]] == [0, 1, 2]
    assert stats["versions"][2]["updates"] == 2
    me = http.get(f"{API}/digits/me", headers={"Authorization": f"Bearer {alice.token}"})
    assert me.status_code == 200 and me.json()["credit_pending"] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_concurrent_leases_never_hand_out_a_task_twice(
    coordinator: Coordinator, make_project: Any, join: Any, mode: str
) -> None:
    make_project(
        "race",
        mode=mode,
        clients_per_round=5,
        min_updates=5,
        overprovision=2.0,
        max_concurrent_leases=7,
    )
    clients = [join("race", f"c{i}") for i in range(24)]
    got: dict[str, str] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients))
    project = coordinator.project("race")

    def lease(client_id: str) -> None:
        with coordinator.store.read() as tx:
            client = tx.client(client_id)
        assert client is not None
        barrier.wait()
        signed = coordinator.lease(project, client, 0)
        if signed is not None:
            with lock:
                got[client_id] = signed["manifest"]["task_id"]

    threads = [threading.Thread(target=lease, args=(c.client_id,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    task_ids = list(got.values())
    assert len(task_ids) == len(set(task_ids)), "a task was handed out twice"
    assert len(task_ids) == (10 if mode == "sync" else 7)


def test_an_abandoned_aggregation_claim_is_released_and_rerun(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    """A claim left by a dead process (same host, pid gone) is taken over."""
    make_project("crash")
    project = coordinator.project("crash")
    for name in ("a", "b"):
        c = join("crash", name)
        task = c.lease(0)
        assert task is not None
        assert upload_small_delta(http, coordinator, c, task).status_code == 201
    claim = claim_ready(coordinator.context, project)
    assert claim is not None and len(claim.updates) == 2
    dead_owner = f"{os.uname().nodename}:4194305:dead"  # pid 2**22+1 is never alive here
    with coordinator.store.write() as tx:
        conn: Any = tx._c  # type: ignore[attr-defined]
        marker = "%s" if isinstance(coordinator.store, PostgresStore) else "?"
        conn.execute(
            f"UPDATE aggregations SET owner = {marker} WHERE id = {marker}", (dead_owner, claim.id)
        )
    assert claim_ready(coordinator.context, project) is None  # still claimed
    worker = AggregationWorker(coordinator.context)
    assert worker.release_stale_claims() == 1
    assert worker.run_once()
    assert coordinator.project("crash").current_version == 1


def test_the_cli_keeps_a_project_in_postgresql_given_a_database_url(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.cli import main
    from backend.store.factory import DB_FILE

    data = ["--data", str(tmp_path / "data"), "--database-url", postgres_url]
    assert main(["project", "create", "pg-digits", "--recipe", "digits-mlp", *data]) == 0
    capsys.readouterr()
    assert main(["project", "list", *data]) == 0
    assert "pg-digits" in capsys.readouterr().out
    assert not (tmp_path / "data" / DB_FILE).exists()  # the blobs and keys only
    assert main(["actions", "--project", "pg-digits", *data]) == 0
    capsys.readouterr()
    # Without the URL the folder holds no coordinator of its own: refused, nothing created.
    assert main(["project", "list", "--data", str(tmp_path / "data")]) == 2
    assert "holds no coordinator data" in capsys.readouterr().err
    assert not (tmp_path / "data" / DB_FILE).exists()
    assert main(["project", "list", "--data", str(tmp_path), "--database-url", "sqlite:x"]) == 2
    assert "not PostgreSQL's" in capsys.readouterr().err
