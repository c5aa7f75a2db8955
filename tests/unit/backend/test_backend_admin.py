"""Organiser actions (``backend.services.admin``, ``barnraise-backend ban|unban|revoke|
rollback|actions``): a banned contributor gets no more work and can lose its credit, one
update's credit can be revoked, a rollback publishes an earlier model as a new signed
version, and every action is recorded and shown on the page."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from backend.cli import main
from backend.coordinator import Coordinator
from backend.demo_clients import ClientError, DemoContributor
from backend.services.admin import AdminError
from backend.testing import IN_PROCESS_URL, small_delta, upload_request
from federated import protocol
from federated.codec import encode_update
from federated.provenance import manifest_digest
from federated.signing import verify

API = f"{IN_PROCESS_URL}/api/v1/projects/digits"

# Made-up deltas: no gate on held-out loss, no norm screening in the way.
SETTINGS = {"max_loss_regression": 0, "outlier_norm_ratio": 0, "clip_norm_ratio": 0}


def auth(c: DemoContributor) -> dict[str, str]:
    return {"Authorization": f"Bearer {c.token}"}


def send(http: requests.Session, coordinator: Coordinator, c: DemoContributor) -> dict[str, Any]:
    """Lease a task and upload a small made-up update for it; the receipt."""
    task = c.lease(0)
    assert task is not None
    spec = coordinator.runtime(coordinator.project("digits")).spec
    payload = encode_update(small_delta(spec, key=task["task_id"]), task["codec"]).payload
    r = upload_request(
        http,
        IN_PROCESS_URL,
        project="digits",
        token=c.token,
        key=c.key,
        task=task,
        client_id=c.client_id,
        payload=payload,
    )
    assert r.status_code == 201, r.text
    receipt: dict[str, Any] = r.json()
    return receipt


def code_of(r: requests.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def me(http: requests.Session, c: DemoContributor) -> dict[str, Any]:
    r = http.get(f"{API}/me", headers=auth(c))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def status_of(http: requests.Session, c: DemoContributor, update_id: str) -> dict[str, Any]:
    r = http.get(f"{API}/updates/{update_id}", headers=auth(c))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def client_row(coordinator: Coordinator, client_id: str) -> Any:
    with coordinator.store.read() as tx:
        return tx.client(client_id)


def test_a_banned_contributor_can_no_longer_lease_beat_upload_or_rejoin(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    project = make_project("digits", **SETTINGS)
    mallory = join("digits", "Mallory")
    task = mallory.lease(0)
    assert task is not None
    spec = coordinator.runtime(project).spec
    payload = encode_update(small_delta(spec, key=task["task_id"]), task["codec"]).payload

    record = coordinator.services.admin.ban(project, mallory.client_id, "sybil farm")
    assert record.action == "ban" and record.target == mallory.client_id and record.id >= 1
    assert "ended 1 lease" in record.detail
    with coordinator.store.read() as tx:
        assert tx.task(task["task_id"]).status == "cancelled"  # its live lease ended

    lease = http.post(f"{API}/tasks/lease", headers=auth(mallory))
    assert code_of(lease) == (403, "banned") and "sybil farm" in lease.json()["error"]["message"]
    beat = http.post(f"{API}/tasks/{task['task_id']}/heartbeat", headers=auth(mallory))
    assert code_of(beat) == (403, "banned")
    up = upload_request(
        http,
        IN_PROCESS_URL,
        project="digits",
        token=mallory.token,
        key=mallory.key,
        task=task,
        client_id=mallory.client_id,
        payload=payload,
    )
    assert code_of(up) == (403, "banned")
    assert code_of(http.get(f"{API}/me", headers=auth(mallory))) == (403, "banned")
    # Not a refusal of the update: nothing counted, the task not ended as rejected.
    assert client_row(coordinator, mallory.client_id).rejected == 0
    with coordinator.store.read() as tx:
        assert tx.task(task["task_id"]).status == "cancelled"
    assert protocol.ERROR_STATUS["banned"] == 403
    assert "banned" not in protocol.FINAL_UPLOAD_CODES

    # Joining again with the same key lifts nothing; a new key is a new identity.
    again = DemoContributor(IN_PROCESS_URL, "digits", "Mallory2", session=http, key=mallory.key)
    with pytest.raises(ClientError, match="403.*banned"):
        again.join()
    assert client_row(coordinator, mallory.client_id).banned_at is not None
    fresh = join("digits", "Mallory3")
    assert fresh.client_id != mallory.client_id and fresh.lease(0) is not None

    board = http.get(f"{API}/leaderboard").json()["contributors"]
    assert {r["client_id"]: r["banned"] for r in board} == {
        mallory.client_id: True,
        fresh.client_id: False,
    }
    with pytest.raises(AdminError, match="banned already"):
        coordinator.services.admin.ban(project, mallory.client_id, "again")

    coordinator.services.admin.unban(project, mallory.client_id, "appeal upheld")
    assert mallory.lease(0) is not None
    with pytest.raises(AdminError, match="not banned"):
        coordinator.services.admin.unban(project, mallory.client_id, "twice")


def test_a_ban_with_revoke_takes_back_every_credit_and_sets_its_updates_aside(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    project = make_project("digits", **SETTINGS)
    ada, mallory = join("digits", "Ada"), join("digits", "Mallory")
    first = send(http, coordinator, mallory)
    send(http, coordinator, ada)
    assert coordinator.worker.run_once()  # version 1: both granted
    earned = me(http, mallory)["credit"]
    assert earned == pytest.approx(first["credit"]) and earned > 0
    pending = send(http, coordinator, mallory)  # round 1: not aggregated yet

    record = coordinator.services.admin.ban(project, mallory.client_id, "cheat", revoke=True)
    assert "revoked" in record.detail and "set aside 1 update" in record.detail
    row = client_row(coordinator, mallory.client_id)
    assert row.credit == 0 and row.credit_pending == 0 and row.recent_sum == 0
    # The update status stays readable: the contributor can see why.
    old = status_of(http, mallory, first["update_id"])
    assert old["status"] == "aggregated" and old["credit_state"] == "revoked"
    new = status_of(http, mallory, pending["update_id"])
    assert new["status"] == "rejected" and new["verdict"] == "banned"
    assert new["credit_state"] == "withheld" and "cheat" in new["detail"]
    board = {r["client_id"]: r for r in http.get(f"{API}/leaderboard").json()["contributors"]}
    assert board[mallory.client_id]["credit"] == 0 and board[mallory.client_id]["banned"]
    assert board[mallory.client_id]["recent_credit"] == 0

    # The round no longer counts the set-aside update: it waits for two others.
    bob = join("digits", "Bob")
    send(http, coordinator, ada)
    assert not coordinator.worker.run_once()
    send(http, coordinator, bob)
    assert coordinator.worker.run_once()
    with coordinator.store.read() as tx:
        v2 = tx.version(project.id, 2)
        assert v2 is not None and v2.updates == 2
        leaves = {u for u, _d in tx.version_leaves(project.id, 2)}
    assert pending["update_id"] not in leaves
    assert coordinator.services.provenance.audit(coordinator.project("digits")).ok


def test_revoking_one_update_takes_back_only_its_credit(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    project = make_project("digits", **SETTINGS)
    ada, bob = join("digits", "Ada"), join("digits", "Bob")
    granted = send(http, coordinator, ada)
    send(http, coordinator, bob)
    assert coordinator.worker.run_once()
    admin = coordinator.services.admin
    before = me(http, bob)["credit"]

    record = admin.revoke_update(project, granted["update_id"], "copied from a paper")
    assert record.action == "revoke" and record.target == granted["update_id"]
    assert "version 1" in record.detail  # it stays in that model: roll back to take it out
    assert me(http, ada)["credit"] == pytest.approx(0, abs=1e-9)
    assert me(http, bob)["credit"] == pytest.approx(before)  # nobody else's
    assert status_of(http, ada, granted["update_id"])["credit_state"] == "revoked"

    waiting = send(http, coordinator, ada)  # round 1, pending
    admin.revoke_update(project, waiting["update_id"][:8], "late second thoughts")  # a prefix
    st = status_of(http, ada, waiting["update_id"])
    assert st["status"] == "rejected" and st["verdict"] == "revoked"
    assert st["credit_state"] == "withheld"
    assert me(http, ada)["credit_pending"] == 0
    with pytest.raises(AdminError, match="no credit to revoke"):
        admin.revoke_update(project, waiting["update_id"], "again")
    with pytest.raises(AdminError, match="no update"):
        admin.revoke_update(project, "nope-not-an-update", "x")
    assert protocol.VERDICT_CODES[-2:] == ("banned", "revoked")


def test_rollback_publishes_the_old_model_as_a_new_signed_version(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_project("digits", **SETTINGS)
    ada, bob = join("digits", "Ada"), join("digits", "Bob")
    for _round in range(2):
        send(http, coordinator, ada)
        send(http, coordinator, bob)
        assert coordinator.worker.run_once()
    in_flight = ada.lease(0)  # round 2's lease
    assert in_flight is not None and in_flight["base_version"] == 2
    admin = coordinator.services.admin
    with pytest.raises(AdminError, match="current version"):
        admin.rollback(project, 2, "no-op")
    with pytest.raises(AdminError, match="no version 7"):
        admin.rollback(project, 7, "typo")

    record = admin.rollback(project, 1, "version 2 was poisoned")
    assert record.action == "rollback" and record.target == "1"
    with coordinator.store.read() as tx:
        v1, v2, v3 = (tx.version(project.id, v) for v in (1, 2, 3))
        assert tx.task(in_flight["task_id"]).status == "cancelled"
    assert v1 is not None and v2 is not None and v3 is not None
    assert v3.digest == v1.digest and v3.strategy_state_digest == v1.strategy_state_digest
    assert v3.updates == 0 and v3.parent_digest == v2.digest
    assert coordinator.project("digits").current_version == 3
    current = http.get(f"{API}/models/current").json()
    verify(project.public_key, current["manifest"], current["signature"])
    assert current["manifest"]["version"] == 3 and current["manifest"]["digest"] == v1.digest
    parent = http.get(f"{API}/versions/2/manifest").json()["manifest"]
    assert current["manifest"]["parent_manifest_digest"] == manifest_digest(parent)
    # The chain still verifies, end to end, with the CLI's own check.
    assert main(["verify", "--data", str(coordinator.data_dir), "--project", "digits"]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    # The old lease's upload is refused; contributors train from the rolled-back model.
    spec = coordinator.runtime(project).spec
    late = upload_request(
        http,
        IN_PROCESS_URL,
        project="digits",
        token=ada.token,
        key=ada.key,
        task=in_flight,
        client_id=ada.client_id,
        payload=encode_update(small_delta(spec), in_flight["codec"]).payload,
    )
    assert code_of(late) == (409, "wrong_base")
    task = bob.lease(0)
    assert task is not None and task["base_version"] == 3 and task["base_digest"] == v1.digest
    send(http, coordinator, bob)  # the same task, leased again
    send(http, coordinator, ada)
    assert coordinator.worker.run_once()
    assert coordinator.project("digits").current_version == 4
    assert coordinator.services.provenance.audit(coordinator.project("digits")).ok


def test_actions_are_recorded_newest_first_and_shown_escaped(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    project = make_project("digits", **SETTINGS)
    eve = join("digits", "Eve")
    admin = coordinator.services.admin
    admin.ban(project, eve.client_id, "<script>alert('x')</script> & co")
    admin.unban(project, eve.client_id, "second chance")
    admin.ban(project, eve.client_id[:6], "<b>again</b>")

    actions = http.get(f"{API}/stats").json()["actions"]
    assert [a["action"] for a in actions] == ["ban", "unban", "ban"]
    assert actions[0]["reason"] == "<b>again</b>" and actions[0]["target"] == eve.client_id
    assert [a["id"] for a in actions] == sorted((a["id"] for a in actions), reverse=True)
    assert [a.reason for a in admin.actions(project, 1)] == ["<b>again</b>"]
    page = http.get(f"{IN_PROCESS_URL}/p/digits").text
    assert 'id="actions"' in page and "Organiser actions" in page
    assert (
        "<script>" not in page
        and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    )
    assert "<b>again</b>" not in page and "&lt;b&gt;again&lt;/b&gt;" in page
    assert page.index("&lt;b&gt;again") < page.index("second chance")  # newest first
    assert 'class="badge badge-banned"' in page  # Eve, marked on the leaderboard
    with pytest.raises(AdminError, match="give a reason"):
        admin.ban(project, eve.client_id, "   ")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_bans_revokes_rolls_back_and_lists_actions(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    join: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_project("digits", **SETTINGS)
    ada, mallory = join("digits", "Ada"), join("digits", "Mallory")
    receipt = send(http, coordinator, ada)
    send(http, coordinator, mallory)
    assert coordinator.worker.run_once()
    data = ["--data", str(coordinator.data_dir), "--project", "digits"]

    code, out, _ = run(
        capsys,
        "ban",
        *data,
        "--client",
        "#" + mallory.client_id[:6],
        "--revoke",
        "--reason",
        "sybil",
    )
    assert code == 0, out
    assert out.startswith(f"digits: ban {mallory.client_id} (action 1)")
    assert "revoked" in out and "ended 0 leases" in out
    assert code_of(http.post(f"{API}/tasks/lease", headers=auth(mallory))) == (403, "banned")

    code, out, _ = run(capsys, "unban", *data, f"--client={mallory.client_id}", "--reason", "ok")
    assert code == 0 and "lifted the ban on Mallory (it was: sybil)" in out
    code, out, _ = run(capsys, "revoke", *data, f"--update={receipt['update_id']}", "--reason", "r")
    assert code == 0 and f"revoke {receipt['update_id']}" in out
    code, out, _ = run(capsys, "rollback", *data, "--to", "0", "--reason", "start over")
    assert code == 0 and "published version 2 with the model of version 0" in out
    code, out, _ = run(capsys, "verify", *data)
    assert code == 0 and out.startswith("OK:")

    code, out, _ = run(capsys, "actions", *data)
    lines = out.splitlines()
    assert code == 0 and [line.split("\t")[2] for line in lines[::2]] == [
        "rollback",
        "revoke",
        "unban",
        "ban",
    ]
    code, out, _ = run(capsys, "actions", *data, "--json", "--limit", "2")
    shown = json.loads(out)
    assert code == 0 and [a["action"] for a in shown] == ["rollback", "revoke"]
    assert shown[0]["reason"] == "start over" and shown[0]["target"] == "0"

    # Refusals: a message and exit status 2, like the rest of the CLI; nothing recorded.
    for argv, message in (
        (("ban", *data, "--client", "zzzzzzzz", "--reason", "x"), "no contributor"),
        (("rollback", *data, "--to", "2", "--reason", "x"), "current version"),
        (("unban", *data, f"--client={ada.client_id}", "--reason", "x"), "not banned"),
        (
            (
                "ban",
                "--data",
                str(coordinator.data_dir),
                "--project",
                "nope",
                "--client",
                "x",
                "--reason",
                "x",
            ),
            "no project",
        ),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err, err
    code, _, err = run(
        capsys, "actions", "--data", str(coordinator.data_dir / "empty"), "--project", "digits"
    )
    assert code == 2 and "holds no coordinator data" in err
    with pytest.raises(SystemExit):  # --reason is required
        main(["ban", *data, f"--client={ada.client_id}"])
    assert len(coordinator.services.admin.actions(coordinator.project("digits"))) == 4


def test_an_id_prefix_must_be_long_enough_and_unique() -> None:
    from backend.services.admin import _by_prefix

    ids = ["abcdef123456", "abcdxx999999", "zzzz00000000"]
    assert _by_prefix("#zzzz", ids, "contributor", "p") == "zzzz00000000"
    assert _by_prefix("abcdef123456", ids, "contributor", "p") == "abcdef123456"
    with pytest.raises(AdminError, match="start of 2"):
        _by_prefix("abcd", ids, "contributor", "p")
    with pytest.raises(AdminError, match="at least 4"):
        _by_prefix("zzz", ids, "contributor", "p")


def test_an_async_rollback_drops_the_work_trained_on_the_versions_it_undoes(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    project = make_project("digits", mode="async", buffer_size=2, **SETTINGS)
    ada, bob, cy, dan, eve = (join("digits", n) for n in ("Ada", "Bob", "Cy", "Dan", "Eve"))
    early = eve.lease(0)  # on version 0
    assert early is not None
    send(http, coordinator, ada)
    send(http, coordinator, bob)
    assert coordinator.worker.run_once()  # version 1
    late = send(http, coordinator, cy)  # trained on version 1, pending
    live = dan.lease(0)
    assert live is not None and live["base_version"] == 1
    kept = send(http, coordinator, eve)  # its task was on version 0: still pending

    record = coordinator.services.admin.rollback(project, 0, "version 1 diverged")
    assert "cancelled 1 lease and dropped 1 update" in record.detail
    with coordinator.store.read() as tx:
        assert tx.task(live["task_id"]).status == "cancelled"
        dropped, waiting = tx.update(late["update_id"]), tx.update(kept["update_id"])
    assert dropped is not None and dropped.status == "dropped"
    assert dropped.credit_state == "granted"  # not the contributor's fault
    assert waiting is not None and waiting.status == "pending"
    assert me(http, cy)["credit"] == pytest.approx(late["credit"])
    task = dan.lease(0)
    assert task is not None and task["base_version"] == 2
    assert coordinator.services.provenance.audit(coordinator.project("digits")).ok
