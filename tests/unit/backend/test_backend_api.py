"""The API in process: join, leases (expiry on an injected clock, long poll), uploads,
rounds in both modes, models, leaderboard, pages, metrics, rate limits."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import psycopg
import pytest
import requests

from backend.coordinator import Coordinator
from backend.credit import update_credit
from backend.store.factory import DB_FILE
from backend.store.postgres import PostgresStore
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request, wsgi_session
from backend.wsgi import App
from federated.codec import encode_update
from federated.signing import verify, verify_bytes

API = f"{IN_PROCESS_URL}/api/v1/projects"

pytestmark = pytest.mark.both_stores  # every test with a coordinator, on SQLite and PostgreSQL


def payload_for(
    coordinator: Coordinator, project: str, value: float = 1e-3, key: str | None = None
) -> bytes:
    spec = coordinator.runtime(coordinator.project(project)).spec
    return encode_update(small_delta(spec, value, key), "int8").payload


def upload(
    http: requests.Session,
    coordinator: Coordinator,
    c: Any,
    task: dict[str, Any],
    value: float = 1e-3,
) -> requests.Response:
    return upload_request(
        http,
        IN_PROCESS_URL,
        project=task["project"],
        token=c.token,
        key=c.key,
        task=task,
        client_id=c.client_id,
        payload=payload_for(coordinator, task["project"], value, task["task_id"]),
    )


def test_join_returns_project_and_pins_key(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    c = join("digits", "Ada", team="Engines")
    project = http.get(f"{API}/digits").json()
    assert project["public_key"] == c.project_key
    assert (
        project["recipe"] == "digits-mlp"
        and project["codec"] == "int8"
        and project["mode"] == "sync"
    )
    assert project["current_version"] == 0 and len(project["model_digest"]) == 64
    listed = http.get(f"{API}").json()["projects"]
    assert [p["name"] for p in listed] == ["digits"]
    # The same key joining again keeps its id and gets a new token; the old one stops working.
    old_token, old_id = c.token, c.client_id
    c.join()
    assert c.client_id == old_id and c.token != old_token
    r = http.get(f"{API}/digits/me", headers={"Authorization": f"Bearer {old_token}"})
    assert r.status_code == 401
    me = http.get(f"{API}/digits/me", headers={"Authorization": f"Bearer {c.token}"}).json()
    assert me["display_name"] == "Ada" and me["team"] == "Engines" and me["rank"] == 1


def everything_stored(coordinator: Coordinator) -> bytes:
    """What the store holds: SQLite's database file, or each PostgreSQL table's rows as text."""
    if not isinstance(coordinator.store, PostgresStore):
        return (coordinator.data_dir / DB_FILE).read_bytes()
    with psycopg.connect(coordinator.store.url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        names = [str(name) for (name,) in tables.fetchall()]
        assert "clients" in names
        rows = [conn.execute(f'SELECT t::text FROM "{name}" t').fetchall() for name in names]
    return repr(rows).encode()


def test_tokens_are_stored_hashed(coordinator: Coordinator, make_project: Any, join: Any) -> None:
    make_project("digits")
    c = join("digits", "Ada")
    raw = everything_stored(coordinator)
    secret = c.token.split(".", 1)[1]
    assert secret.encode() not in raw
    with coordinator.store.read() as tx:
        client = tx.client(c.client_id)
    assert client is not None and client.token_hash == hashlib.sha256(secret.encode()).hexdigest()


def test_key_file_is_private(coordinator: Coordinator, make_project: Any) -> None:
    make_project("digits")
    mode = (coordinator.data_dir / "keys" / "digits.ed25519").stat().st_mode & 0o777
    assert mode == 0o600


def test_lease_is_signed_repeatable_and_extendable(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("digits", lease_s=100.0)
    c = join("digits", "Ada")
    task = c.lease(0)  # verifies the signature with the pinned key
    assert task is not None and task["base_version"] == 0 and task["deadline"] == int(clock() + 100)
    again = c.lease(0)
    assert again is not None and again["task_id"] == task["task_id"]
    clock.advance(50)
    r = http.post(
        f"{API}/digits/tasks/{task['task_id']}/heartbeat",
        headers={"Authorization": f"Bearer {c.token}"},
    )
    assert r.status_code == 200 and r.json()["deadline"] == int(clock() + 100)
    clock.advance(90)  # past the first deadline, within the extended one
    assert upload(http, coordinator, c, task).status_code == 201


def test_expired_lease_returns_its_task_to_the_pool(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("digits", clients_per_round=1, min_updates=1, overprovision=1.0, lease_s=30.0)
    a, b = join("digits", "Ada"), join("digits", "Bob")
    task_a = a.lease(0)
    assert task_a is not None
    assert b.lease(0) is None  # the round's one lease is out
    clock.advance(31)
    task_b = b.lease(0)
    assert task_b is not None and task_b["task_id"] != task_a["task_id"]
    late = upload(http, coordinator, a, task_a)
    assert late.status_code == 410 and late.json()["error"]["code"] == "lease_expired"
    assert upload(http, coordinator, b, task_b).status_code == 201


def test_release_frees_the_lease(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", clients_per_round=1, min_updates=1, overprovision=1.0)
    a, b = join("digits", "Ada"), join("digits", "Bob")
    task = a.lease(0)
    assert task is not None and b.lease(0) is None
    r = http.post(
        f"{API}/digits/tasks/{task['task_id']}/release",
        headers={"Authorization": f"Bearer {a.token}"},
    )
    assert r.status_code == 204
    assert b.lease(0) is not None


def test_no_work_is_204_with_retry_after(
    http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", clients_per_round=1, min_updates=1, overprovision=1.0)
    a, b = join("digits", "Ada"), join("digits", "Bob")
    assert a.lease(0) is not None
    r = http.post(
        f"{API}/digits/tasks/lease?wait=0", headers={"Authorization": f"Bearer {b.token}"}
    )
    assert r.status_code == 204 and int(r.headers["Retry-After"]) >= 1


def test_long_poll_wakes_when_a_version_is_published(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_project("digits")
    a, b = join("digits", "Ada"), join("digits", "Bob")
    ta, tb = a.lease(0), b.lease(0)
    assert ta and tb
    assert upload(http, coordinator, a, ta).status_code == 201
    waiting = threading.Event()
    original = coordinator.notifier.wait

    def spy(project: str, seen: int, timeout: float) -> None:
        waiting.set()
        original(project, seen, timeout)

    monkeypatch.setattr(coordinator.notifier, "wait", spy)
    result: dict[str, Any] = {}
    poller = threading.Thread(target=lambda: result.update(task=a.lease(25)))
    poller.start()
    assert waiting.wait(10), "the lease did not wait"
    assert upload(http, coordinator, b, tb).status_code == 201
    assert coordinator.worker.run_once()  # version 1 published: the waiting lease wakes
    poller.join(10)
    assert not poller.is_alive()
    assert result["task"]["base_version"] == 1


def test_upload_retry_is_idempotent(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    c = join("digits", "Ada")
    task = c.lease(0)
    assert task is not None
    first = upload(http, coordinator, c, task)
    second = upload(http, coordinator, c, task)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json() == second.json()
    hp = coordinator.project("digits").hparams
    assert first.json()["credit"] == pytest.approx(
        update_credit(
            task["max_examples"],
            task["max_examples"],
            coordinator.runtime(coordinator.project("digits")).flops_per_example,
            task["hparams"],
        )
    )
    assert first.json()["credit_unit"] == "GFLOP" and hp["num_shards"] == 4
    me = http.get(f"{API}/digits/me", headers={"Authorization": f"Bearer {c.token}"}).json()
    assert me["updates_accepted"] == 1 and me["credit"] == 0.0  # pending until aggregated
    assert me["credit_pending"] == pytest.approx(first.json()["credit"])


def test_sync_round_publishes_a_signed_evaluated_version(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits", clients_per_round=2, min_updates=2)
    a, b = join("digits", "Ada", team="T"), join("digits", "Bob", team="T")
    ta, tb = a.lease(0), b.lease(0)
    assert ta and tb and ta["shard_index"] != tb["shard_index"]
    assert upload(http, coordinator, a, ta).status_code == 201
    assert not coordinator.worker.run_once()  # one of two: not yet
    assert a.lease(0) is None  # one task per contributor per round
    assert upload(http, coordinator, b, tb).status_code == 201
    assert coordinator.worker.run_once()
    current = http.get(f"{API}/digits/models/current").json()
    verify(a.project_key, current["manifest"], current["signature"])
    assert current["manifest"]["version"] == 1
    stats = http.get(f"{API}/digits/stats").json()
    v1 = stats["versions"][1]
    assert (
        v1["updates"] == 2 and v1["contributors"] == 2 and 0.0 <= v1["metrics"]["accuracy"] <= 1.0
    )
    board = http.get(f"{API}/digits/leaderboard").json()
    assert [t["team"] for t in board["teams"]] == ["T"] and board["teams"][0]["members"] == 2
    assert board["contributors"][0]["credit"] > 0 and board["contributors"][0]["recent_credit"] > 0
    with coordinator.store.read() as tx:
        updates = tx.updates(coordinator.project("digits").id)
        clients = {c.id: c for c in tx.clients(coordinator.project("digits").id)}
    for u in updates:  # every accepted update verifies from what was stored
        assert u.status == "aggregated" and coordinator.blobs.verify(u.payload_digest)
        import base64

        verify_bytes(clients[u.client_id].public_key, base64.b64decode(u.manifest_b64), u.signature)


def test_model_download_etag_and_range(
    coordinator: Coordinator, http: requests.Session, make_project: Any
) -> None:
    make_project("digits")
    digest = http.get(f"{API}/digits/models/current").json()["manifest"]["digest"]
    full = http.get(f"{API}/digits/models/{digest}")
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == digest
    assert full.headers["ETag"] == f'"{digest}"' and full.headers["Accept-Ranges"] == "bytes"
    assert (
        http.get(
            f"{API}/digits/models/{digest}", headers={"If-None-Match": f'"{digest}"'}
        ).status_code
        == 304
    )
    part = http.get(f"{API}/digits/models/{digest}", headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == full.content[10:]
    assert part.headers["Content-Range"] == f"bytes 10-{len(full.content) - 1}/{len(full.content)}"
    tail = http.get(f"{API}/digits/models/{digest}", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == full.content[-5:]


def test_async_mode_weights_by_staleness_and_refuses_the_too_stale(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("fb", mode="async", buffer_size=2, max_staleness=1)
    a, b, c = join("fb", "Ada"), join("fb", "Bob"), join("fb", "Cy")
    ta, tb, tc = a.lease(0), b.lease(0), c.lease(0)
    assert ta and tb and tc
    assert upload(http, coordinator, a, ta).status_code == 201
    assert upload(http, coordinator, b, tb).status_code == 201
    assert coordinator.worker.run_once()  # K = 2: version 1
    a2, b2 = a.lease(0), b.lease(0)
    assert a2 and b2 and a2["base_version"] == 1
    assert upload(http, coordinator, c, tc).status_code == 201  # one version behind: accepted
    assert upload(http, coordinator, a, a2).status_code == 201
    assert coordinator.worker.run_once()  # version 2 from a stale and a fresh update
    assert coordinator.project("fb").current_version == 2
    stale = upload(http, coordinator, b, b2)  # base 1, current 2: accepted (1 behind)
    assert stale.status_code == 201
    b3 = c.lease(0)
    assert b3 is not None
    assert upload(http, coordinator, c, b3).status_code == 201
    assert coordinator.worker.run_once()
    # A task two versions behind is refused.
    a3 = a.lease(0)
    assert a3 is not None and a3["base_version"] == 3
    d = join("fb", "Dee")
    td = d.lease(0)
    assert td is not None
    with coordinator.store.write() as tx:  # make Dee's task look two versions old
        tx._run("UPDATE tasks SET base_version = 1 WHERE id = ?", td["task_id"])  # type: ignore[attr-defined]
    r = upload(http, coordinator, d, td)
    assert r.status_code == 409 and r.json()["error"]["code"] == "wrong_base"


def test_strategy_state_persists_with_each_version(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    coordinator.create_project(
        "adam",
        recipe="digits-mlp",
        strategy="fedadam",
        hparams={"num_shards": 2, "hidden": 8},
        settings={"clients_per_round": 1, "min_updates": 1, "spot_check_rate": 0},
    )
    a = join("adam", "Ada")
    task = a.lease(0)
    assert task is not None and upload(http, coordinator, a, task).status_code == 201
    assert coordinator.worker.run_once()
    with coordinator.store.read() as tx:
        v1 = tx.version(coordinator.project("adam").id, 1)
    assert (
        v1 is not None
        and v1.strategy_state_digest
        and coordinator.blobs.exists(v1.strategy_state_digest)
    )


def test_pages_escape_user_text(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    join("digits", "<script>alert(1)</script>", team="<b>t</b>")
    page = http.get(f"{IN_PROCESS_URL}/p/digits")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert (
        "<script>alert(1)</script>" not in page.text
        and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    )
    assert "Content-Security-Policy" in page.headers
    index = http.get(f"{IN_PROCESS_URL}/")
    assert index.status_code == 200 and "digits" in index.text
    missing = http.get(f"{IN_PROCESS_URL}/p/nosuch")
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("text/html")


def test_health_metrics_openapi(http: requests.Session, make_project: Any) -> None:
    make_project("digits")
    assert http.get(f"{IN_PROCESS_URL}/healthz").json() == {
        "status": "ok",
        "aggregation_overdue": [],
        "storage_full": False,
    }
    metrics = http.get(f"{IN_PROCESS_URL}/metrics")
    assert metrics.status_code == 200 and "barnraise_http_requests_total" in metrics.text
    doc = http.get(f"{IN_PROCESS_URL}/api/v1/openapi.json").json()
    assert (
        doc["openapi"].startswith("3.1")
        and "/api/v1/projects/{project}/tasks/lease" in doc["paths"]
    )


def test_rate_limit_answers_429_with_retry_after(coordinator: Coordinator) -> None:
    http = wsgi_session(App(coordinator, rate=0.5, burst=2))
    codes = [http.get(f"{API}").status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    r = http.get(f"{API}")
    assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1


def test_pause_resume_close(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    make_project("digits")
    c = join("digits", "Ada")
    coordinator.set_status("digits", "paused")
    assert (
        http.post(
            f"{API}/digits/tasks/lease", headers={"Authorization": f"Bearer {c.token}"}
        ).status_code
        == 503
    )
    coordinator.set_status("digits", "open")
    assert c.lease(0) is not None
    coordinator.set_status("digits", "closed")
    assert http.post(f"{API}/digits/challenge").status_code == 410


def test_challenge_takes_no_body_with_or_without_a_json_content_type(
    http: requests.Session, make_project: Any
) -> None:
    make_project()
    bare = http.post(f"{API}/digits/challenge")
    typed = http.post(
        f"{API}/digits/challenge", data=b"", headers={"Content-Type": "application/json"}
    )
    assert bare.status_code == typed.status_code == 200
    assert bare.json()["challenge"] != typed.json()["challenge"]
