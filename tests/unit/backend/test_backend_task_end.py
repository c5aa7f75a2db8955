"""A final rejection of an upload ends its task for good (issue 9, "the stale-task loop").

A contributor whose update is refused (too stale, too large a norm, a bad payload, a bad
signature...) must not get the same task back from the next lease, or it retrains and
re-uploads it many times a second. The task is marked ``rejected`` with the reason, in
the same durable write as the rejection count; it is never leased again, never counts as
a live lease, and a later heartbeat or upload for it answers ``410 task_rejected``. What
is not final (a server error, a cut upload, another contributor's task, a retry of an
accepted update) leaves the task as it was."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.errors import ERROR_STATUS, FINAL_UPLOAD_CODES
from backend.store import SQLiteStore
from backend.store.migrations import LATEST_VERSION, MIGRATIONS
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request
from backend.wsgi import App
from federated.codec import encode_update
from federated.signing import SigningKey

API = f"{IN_PROCESS_URL}/api/v1/projects"


def payload(coordinator: Coordinator, project: str, value: float = 1e-3) -> bytes:
    spec = coordinator.runtime(coordinator.project(project)).spec
    return encode_update(small_delta(spec, value), "int8").payload


def upload(
    http: requests.Session,
    coordinator: Coordinator,
    who: DemoContributor,
    task: dict[str, Any],
    body: bytes | None = None,
    **kw: Any,
) -> requests.Response:
    return upload_request(
        http,
        IN_PROCESS_URL,
        project=task["project"],
        token=who.token,
        key=kw.pop("key", who.key),
        task=task,
        client_id=who.client_id,
        payload=payload(coordinator, task["project"]) if body is None else body,
        **kw,
    )


def post(http: requests.Session, who: DemoContributor, task: dict[str, Any], what: str) -> Any:
    return http.post(
        f"{API}/{task['project']}/tasks/{task['task_id']}/{what}",
        headers={"Authorization": f"Bearer {who.token}"},
    )


def task_row(coordinator: Coordinator, task_id: str) -> Any:
    with coordinator.store.read() as tx:
        return tx.task(task_id)


def live_leases(coordinator: Coordinator, project: str) -> int:
    return int(coordinator.stats(coordinator.project(project))["live_leases"])


def test_a_stale_update_ends_its_task_and_the_next_lease_is_another(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("fast", mode="async", buffer_size=1, max_staleness=0)
    slow, quick = join("fast", "Slow"), join("fast", "Quick")
    stale_task, quick_task = slow.lease(0), quick.lease(0)
    assert stale_task and quick_task
    clock.advance(10.0)
    assert upload(http, coordinator, quick, quick_task).status_code == 201
    assert coordinator.worker.run_once()  # version 1: the slow task is now too stale
    assert live_leases(coordinator, "fast") == 1

    refused = upload(http, coordinator, slow, stale_task)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "wrong_base"

    row = task_row(coordinator, stale_task["task_id"])
    assert row.status == "rejected" and row.rejected_code == "wrong_base"
    assert row.rejected_at == pytest.approx(coordinator.clock())
    assert live_leases(coordinator, "fast") == 0
    fresh = slow.lease(0)
    assert fresh is not None and fresh["task_id"] != stale_task["task_id"]
    assert fresh["base_version"] == 1

    again = upload(http, coordinator, slow, stale_task)
    assert again.status_code == 410
    error = again.json()["error"]
    assert error["code"] == "task_rejected" and "wrong_base" in error["message"]
    beat = post(http, slow, stale_task, "heartbeat")
    assert beat.status_code == 410 and beat.json()["error"]["code"] == "task_rejected"
    assert post(http, slow, stale_task, "release").status_code == 204  # already over: a no-op
    assert task_row(coordinator, stale_task["task_id"]).status == "rejected"
    assert ERROR_STATUS["task_rejected"] == 410


Refusal = Callable[[requests.Session, Coordinator, DemoContributor, dict[str, Any]], Any]


def _norm_too_large(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, payload(c, task["project"], 50.0))


def _garbage(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, b"\x00not safetensors")


def _digest_mismatch(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, manifest_overrides={"payload_digest": "0" * 64})


def _manifest_mismatch(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, manifest_overrides={"base_digest": "1" * 64})


def _bad_signature(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, key=SigningKey.generate())


def _too_large(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, payload(c, task["project"]) + b"\0" * 300_000)


def _wrong_media_type(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return upload(h, c, who, task, headers={"Content-Type": "application/json"})


def _no_manifest(h: Any, c: Coordinator, who: Any, task: Any) -> Any:
    return h.put(
        f"{API}/{task['project']}/tasks/{task['task_id']}/update",
        data=payload(c, task["project"]),
        headers={
            "Authorization": f"Bearer {who.token}",
            "Content-Type": "application/octet-stream",
        },
    )


REFUSALS: list[tuple[Refusal, int, str]] = [
    (_norm_too_large, 422, "norm_too_large"),
    (_garbage, 422, "bad_payload"),
    (_digest_mismatch, 422, "digest_mismatch"),
    (_manifest_mismatch, 422, "manifest_mismatch"),
    (_bad_signature, 403, "bad_signature"),
    (_too_large, 413, "payload_too_large"),
    (_wrong_media_type, 415, "unsupported_media_type"),
    (_no_manifest, 400, "bad_request"),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("refuse", "status", "code"), REFUSALS, ids=[r[2] for r in REFUSALS])
def test_every_final_rejection_ends_the_task(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    mode: str,
    refuse: Refusal,
    status: int,
    code: str,
) -> None:
    make_project("p", mode=mode, max_payload_bytes=256 * 1024)
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    refused = refuse(http, coordinator, ada, task)
    assert refused.status_code == status and refused.json()["error"]["code"] == code
    assert code in FINAL_UPLOAD_CODES
    row = task_row(coordinator, task["task_id"])
    assert row.status == "rejected" and row.rejected_code == code
    assert live_leases(coordinator, "p") == 0
    nxt = ada.lease(0)
    if mode == "sync":
        assert nxt is None  # one attempt per contributor and round
    else:
        assert nxt is not None and nxt["task_id"] != task["task_id"]
    late = upload(http, coordinator, ada, task)  # now a good update: still refused, for good
    assert late.status_code == 410 and late.json()["error"]["code"] == "task_rejected"
    with coordinator.store.read() as tx:
        client = tx.client(ada.client_id)
    assert client is not None and client.rejected == 2


def test_a_rejected_sync_contributor_gets_a_task_in_the_next_round(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("p", clients_per_round=1, min_updates=1, overprovision=2.0)
    ada, bob = join("p", "Ada"), join("p", "Bob")
    task_a, task_b = ada.lease(0), bob.lease(0)
    assert task_a and task_b
    assert _norm_too_large(http, coordinator, ada, task_a).status_code == 422
    assert ada.lease(0) is None
    assert upload(http, coordinator, bob, task_b).status_code == 201
    assert coordinator.worker.run_once()
    nxt = ada.lease(0)
    assert nxt is not None and nxt["base_version"] == 1


def test_another_contributor_cannot_end_my_task(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async")
    ada, eve = join("p", "Ada"), join("p", "Eve")
    task = ada.lease(0)
    assert task is not None
    # Eve uploads garbage, a bad signature and a wrong media type to Ada's task.
    for act in (_garbage, _bad_signature, _wrong_media_type, _norm_too_large):
        r = act(http, coordinator, eve, task)
        assert r.status_code in (403, 415), r.text
    heartbeat = post(http, eve, task, "heartbeat")
    assert heartbeat.status_code == 403
    assert post(http, eve, task, "release").status_code == 403
    assert task_row(coordinator, task["task_id"]).status == "leased"
    assert ada.lease(0)["task_id"] == task["task_id"]  # type: ignore[index]
    assert upload(http, coordinator, ada, task).status_code == 201


def test_an_unknown_task_changes_nothing(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async")
    make_project("q", mode="async")
    ada, bob = join("p", "Ada"), join("q", "Bob")
    task_q = bob.lease(0)
    assert task_q is not None
    # Ada names Bob's task of another project in her own project: unknown there.
    r = _garbage(http, coordinator, ada, dict(task_q, project="p"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_task"
    assert task_row(coordinator, task_q["task_id"]).status == "leased"


def test_a_cut_upload_is_not_final(
    coordinator: Coordinator, app: App, http: requests.Session, make_project: Any, join: Any
) -> None:
    """A body shorter than its Content-Length (a connection cut mid-upload) is answered
    400 incomplete_body and leaves the task live: the client sends it again."""
    make_project("p", mode="async")
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    request = _prepared_upload(coordinator, ada, task)
    body = request.body
    assert isinstance(body, bytes)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "PUT",
        "PATH_INFO": request.path_url,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/octet-stream",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body[: len(body) // 2]),
        "REMOTE_ADDR": "127.0.0.1",
    }
    for name, value in request.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    statuses: list[str] = []
    chunks = app(environ, lambda status, headers: statuses.append(status))
    assert statuses[0].startswith("400") and b"incomplete_body" in b"".join(chunks)
    assert ERROR_STATUS["incomplete_body"] == 400
    assert "incomplete_body" not in FINAL_UPLOAD_CODES
    assert task_row(coordinator, task["task_id"]).status == "leased"
    assert upload(http, coordinator, ada, task).status_code == 201


def _prepared_upload(
    coordinator: Coordinator, who: DemoContributor, task: dict[str, Any]
) -> requests.PreparedRequest:
    """The request an upload of ``task`` would send, caught by a recording adapter."""
    captured: list[requests.PreparedRequest] = []

    class Recorder(requests.adapters.BaseAdapter):
        def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
            captured.append(request)
            response = requests.Response()
            response.status_code = 599
            response.request = request
            return response

        def close(self) -> None:
            pass

    session = requests.Session()
    session.mount("http://", Recorder())
    upload(session, coordinator, who, task)
    return captured[0]


def test_a_server_error_is_not_final(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_project("p", mode="async")
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    import backend.services.uploads as module

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(module, "decode_update", broken)
    r = upload(http, coordinator, ada, task)
    assert r.status_code == 500
    assert task_row(coordinator, task["task_id"]).status == "leased"
    monkeypatch.undo()
    assert upload(http, coordinator, ada, task).status_code == 201


def test_a_retry_of_an_accepted_update_keeps_it_accepted(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async")
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    body = payload(coordinator, "p")
    first = upload(http, coordinator, ada, task, body)
    assert first.status_code == 201
    retry = upload(http, coordinator, ada, task, body)
    assert retry.status_code == 200 and retry.json() == first.json()
    other = upload(http, coordinator, ada, task, payload(coordinator, "p", 2e-3))
    assert other.status_code == 409 and other.json()["error"]["code"] == "task_already_answered"
    # A final-looking refusal of an answered task does not unmake the answer.
    assert _wrong_media_type(http, coordinator, ada, task).status_code == 415
    assert task_row(coordinator, task["task_id"]).status == "answered"
    assert upload(http, coordinator, ada, task, body).status_code == 200


def test_uploads_to_a_paused_project_are_still_accepted(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async")
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    coordinator.set_status("p", "paused")
    assert upload(http, coordinator, ada, task).status_code == 201


def test_an_expired_lease_is_not_marked_rejected(
    coordinator: Coordinator,
    http: requests.Session,
    clock: FakeClock,
    make_project: Any,
    join: Any,
) -> None:
    make_project("p", mode="async", lease_s=30.0)
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    clock.advance(31)
    late = upload(http, coordinator, ada, task)
    assert late.status_code == 410 and late.json()["error"]["code"] == "lease_expired"
    assert task_row(coordinator, task["task_id"]).status != "rejected"


def test_the_rejection_is_on_disk(
    tmp_path: Path, coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("p", mode="async")
    ada = join("p", "Ada")
    task = ada.lease(0)
    assert task is not None
    assert _garbage(http, coordinator, ada, task).status_code == 422
    store = SQLiteStore(tmp_path / "data" / "barnraise.sqlite3")  # a second process's view
    try:
        with store.read() as tx:
            row = tx.task(task["task_id"])
        assert row is not None and row.status == "rejected" and row.rejected_code == "bad_payload"
    finally:
        store.close()


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    """An existing database (schema 1) gains the new task and client columns; its rows
    keep their values and read back with the new fields empty."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0][1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        """INSERT INTO projects (name, description, recipe, recipe_version, hparams, strategy,
             settings, status, current_version, public_key, created_at)
           VALUES ('p', '', 'digits-mlp', 1, '{}', '{}', '{}', 'open', 0, 'k', 0)"""
    )
    conn.execute(
        """INSERT INTO clients (id, project_id, display_name, public_key, token_hash,
             created_at, last_seen) VALUES ('client-0001', 1, 'Ada', 'k', 'h', 0, 0)"""
    )
    conn.execute(
        """INSERT INTO tasks (id, project_id, client_id, base_version, shard_index, status,
             issued_at, deadline, max_examples, manifest, signature)
           VALUES ('task-00001', 1, 'client-0001', 0, 0, 'leased', 10, 310, 5, '{}', 's')"""
    )
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version() == LATEST_VERSION >= 2
        with store.read() as tx:
            task = tx.task("task-00001")
            client = tx.client("client-0001")
        assert task is not None and task.status == "leased" and task.rejected_code is None
        assert client is not None and client.pace_s_per_step is None and client.pace_samples == 0
        with store.write() as wtx:
            assert wtx.reject_task("task-00001", 1, "client-0001", "wrong_base", 20.0)
            assert not wtx.reject_task("task-00001", 1, "client-0001", "wrong_base", 21.0)
    finally:
        store.close()


def test_reject_task_needs_the_owner_and_a_live_status(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    conn = sqlite3.connect(path)
    conn.execute(
        """INSERT INTO projects (name, description, recipe, recipe_version, hparams, strategy,
             settings, status, current_version, public_key, created_at)
           VALUES ('p', '', 'digits-mlp', 1, '{}', '{}', '{}', 'open', 0, 'k', 0)"""
    )
    for cid in ("client-0001", "client-0002"):
        conn.execute(
            """INSERT INTO clients (id, project_id, display_name, public_key, token_hash,
                 created_at, last_seen) VALUES (?, 1, 'x', ?, 'h', 0, 0)""",
            (cid, cid),
        )
    for tid, status in (("task-leased", "leased"), ("task-answer", "answered")):
        conn.execute(
            """INSERT INTO tasks (id, project_id, client_id, base_version, shard_index, status,
                 issued_at, deadline, max_examples, manifest, signature)
               VALUES (?, 1, 'client-0001', 0, 0, ?, 10, 310, 5, '{}', 's')""",
            (tid, status),
        )
    conn.commit()
    conn.close()
    try:
        with store.write() as tx:
            assert not tx.reject_task("task-leased", 1, "client-0002", "bad_payload", 1.0)
            assert not tx.reject_task("task-leased", 2, "client-0001", "bad_payload", 1.0)
            assert not tx.reject_task("task-answer", 1, "client-0001", "bad_payload", 1.0)
            assert tx.reject_task("task-leased", 1, "client-0001", "bad_payload", 1.0)
        with store.read() as rtx:
            assert rtx.live_leases(1, 0.0) == 0
            assert rtx.live_task_for_client(1, "client-0001", 0.0) is None  # type: ignore[attr-defined]
    finally:
        store.close()
