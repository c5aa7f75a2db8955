"""Provenance against a real coordinator: a few rounds of digits, then the chain and every
receipt checked through the endpoints and both CLIs (`barnraise-backend verify`,
`barnraise verify`), and tampering with the stored versions caught by both."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from app.cli_parser import build_parser
from app.cli_verify import cmd_verify
from app.contributor.credentials import FileCredentialStore, ProjectCredentials, project_key
from backend.cli import main as backend_main
from backend.coordinator import DB_FILE, Coordinator
from backend.demo_clients import DemoContributor
from backend.metrics import BackendMetrics, Registry
from backend.testing import IN_PROCESS_URL, FakeClock, wsgi_session
from backend.wsgi import App
from federated.provenance import (
    EMPTY_ROOT,
    Leaf,
    SignedManifest,
    manifest_digest,
    verify_chain,
    verify_inclusion,
)

API = f"{IN_PROCESS_URL}/api/v1/projects/digits"
ROUNDS = 3
SMALL_DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}


@dataclass
class Run:
    coordinator: Coordinator
    http: requests.Session
    data_dir: Path
    clients: list[DemoContributor]

    @property
    def receipts(self) -> list[dict[str, Any]]:
        return [r for c in self.clients for r in c.receipts]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """Three rounds of two contributors (sync, FedAdam: it has strategy state)."""
    data_dir = tmp_path / "data"
    coordinator = Coordinator(
        data_dir, clock=FakeClock(), start_worker=False, metrics=BackendMetrics.create(Registry())
    )
    http = wsgi_session(App(coordinator, rate=None))
    coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        strategy="fedadam",
        hparams=SMALL_DIGITS,
        settings={"clients_per_round": 2, "min_updates": 2, "codec": "int8"},
    )
    clients = [DemoContributor(IN_PROCESS_URL, "digits", n, session=http) for n in ("Ada", "Bob")]
    for c in clients:
        c.join()
    for _ in range(ROUNDS):
        for c in clients:
            task = c.lease(0)
            assert task is not None
            c.train_and_upload(task)
        assert coordinator.worker.run_once()
    yield Run(coordinator, http, data_dir, clients)
    coordinator.close()


def backend_verify(run: Run, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = backend_main(["verify", "--data", str(run.data_dir), "--project", "digits", *extra])
    return code, capsys.readouterr().out


def volunteer_verify(run: Run, tmp_path: Path, receipt: str, *extra: str) -> tuple[int, str]:
    args = build_parser().parse_args(
        [
            "verify",
            "--server",
            IN_PROCESS_URL,
            "--project",
            "digits",
            "--receipt",
            receipt,
            "--insecure",
            "--credentials",
            str(tmp_path / "credentials.json"),
            *extra,
        ]
    )
    out = io.StringIO()
    code = cmd_verify(args, out, session=run.http)
    return code, out.getvalue()


def test_every_version_is_chained_and_every_receipt_is_proven(run: Run) -> None:
    http = run.http
    key = run.clients[0].project_key
    entries = [
        SignedManifest.from_wire(http.get(f"{API}/versions/{v}/manifest").json())
        for v in range(ROUNDS, -1, -1)
    ]
    manifests = verify_chain(entries, key, project="digits")
    genesis, head = manifests[-1], manifests[0]
    assert genesis.updates_root == EMPTY_ROOT and genesis.parent_digest is None
    assert all(m.updates == 2 and m.strategy_state_digest for m in manifests[:-1])
    # The current model is the same signed manifest as its version's.
    current = http.get(f"{API}/models/current").json()
    assert current == {"manifest": dict(entries[0].manifest), "signature": entries[0].signature}
    # The stats export the chain.
    versions = http.get(f"{API}/stats").json()["versions"]
    for stats, manifest, parent in zip(
        reversed(versions), entries, [*entries[1:], None], strict=True
    ):
        assert stats["updates_root"] == manifest.manifest["updates_root"]
        assert stats["parent_digest"] == manifest.manifest.get("parent_digest")
        assert stats["parent_manifest_digest"] == (parent and manifest_digest(parent.manifest))
    # Every receipt is in exactly one version, found by id or by payload digest.
    seen = set()
    for receipt in run.receipts:
        for update in (receipt["update_id"], receipt["payload_digest"]):
            proof = http.get(f"{API}/proof", params={"update": update}).json()
            signed = manifests[ROUNDS - proof["version"]]
            assert signed.updates_root is not None
            verify_inclusion(
                Leaf(receipt["update_id"], receipt["payload_digest"]),
                proof["index"],
                signed.updates,
                proof["path"],
                signed.updates_root,
            )
            again = http.get(
                f"{API}/versions/{proof['version']}/proof", params={"update": update}
            ).json()
            assert again == proof
        seen.add((proof["version"], proof["index"]))
    assert len(seen) == 2 * ROUNDS
    assert head.version == ROUNDS


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("versions/99/manifest", None, 404, "no version 99"),
        ("versions/01/manifest", None, 400, "not a version number"),
        ("versions/-1/manifest", None, 400, "not a version number"),
        ("versions/99999999999/manifest", None, 400, "not a version number"),
        ("versions/1/proof", None, 400, "say which update"),
        ("versions/1/proof", {"update": "../../etc"}, 400, "neither an update id"),
        ("versions/0/proof", {"update": "a" * 64}, 404, "in no published version"),
        ("proof", {"update": "b" * 22}, 404, "in no published version"),
        ("proof", {"update": "x" * 500}, 400, "neither an update id"),
    ],
)
def test_bad_provenance_requests_are_clear_4xx(
    run: Run, path: str, params: dict[str, str] | None, status: int, words: str
) -> None:
    r = run.http.get(f"{API}/{path}", params=params)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_an_update_asked_for_in_another_version_names_its_own(run: Run) -> None:
    receipt = run.clients[0].receipts[0]  # aggregated into version 1
    r = run.http.get(f"{API}/versions/2/proof", params={"update": receipt["update_id"]})
    assert r.status_code == 404 and "it is in version 1" in r.json()["error"]["message"]


def test_both_clis_verify_the_chain_and_a_receipt(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = backend_verify(run, capsys)
    assert code == 0, out
    assert f"OK: the chain of digits from version {ROUNDS} back to 0 holds." in out
    assert f"{ROUNDS + 1} version(s), {2 * ROUNDS} update(s)" in out
    code, out = backend_verify(run, capsys, "--version", "1")
    assert code == 0 and "from version 1 back to 0" in out

    receipt = run.clients[1].receipts[-1]
    code, out = volunteer_verify(run, tmp_path, json.dumps(receipt))
    assert code == 0, out
    assert "checking against the key the server gives now" in out  # not joined here
    assert f"under the signed updates root of version {ROUNDS}" in out
    assert f"the chain from version {ROUNDS} back to 0 holds" in out
    # With the key pinned at join, from a receipt file.
    client = run.clients[1]
    store = FileCredentialStore(tmp_path / "credentials.json")
    store.save(
        project_key(IN_PROCESS_URL, "digits"),
        ProjectCredentials(
            IN_PROCESS_URL,
            "digits",
            client.client_id,
            client.token,
            "A" * 43 + "=",
            client.project_key,
        ),
    )
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(run.clients[0].receipts[0]))
    code, out = volunteer_verify(run, tmp_path, str(receipt_file))
    assert code == 0 and "the one pinned when you joined" in out and "version 1 " in out
    # A receipt whose payload is not the aggregated one does not check out.
    forged = {**receipt, "payload_digest": "ab" * 32}
    code, out = volunteer_verify(run, tmp_path, json.dumps(forged))
    assert code == 1 and "is not the receipt's" in out and "inclusion proof fails" in out
    # Asking for the wrong version: the server has no proof there, and names the right one.
    code, out = volunteer_verify(
        run, tmp_path, json.dumps(run.clients[0].receipts[0]), "--version", "2"
    )
    assert code == 1 and "the server has no proof" in out and "it is in version 1" in out
    with pytest.raises(ValueError, match="is not an id"):
        volunteer_verify(run, tmp_path, json.dumps({**receipt, "update_id": "bad id!"}))


def _db(run: Run) -> sqlite3.Connection:
    return sqlite3.connect(run.data_dir / DB_FILE)


def test_a_changed_version_digest_is_caught(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _db(run) as db:
        db.execute("UPDATE versions SET digest = ? WHERE version = 2", ("ee" * 32,))
    code, out = backend_verify(run, capsys)
    assert code == 1 and out.startswith("FAILED: the chain of digits from version 3")
    assert "version 2: the signature does not verify" in out
    assert "version 2: its model eeeeeeeeeeeeeeee… is not stored" in out
    assert "version 3 names parent model" in out
    code, out = volunteer_verify(run, tmp_path, json.dumps(run.clients[0].receipts[-1]))
    assert code == 1 and "version 2: the signature does not verify" in out


def test_a_deleted_version_is_caught(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _db(run) as db:
        db.execute("DELETE FROM versions WHERE version = 1")
    code, out = backend_verify(run, capsys)
    assert code == 1 and "version 2 is followed by version 0: version(s) 1–1 are missing" in out
    r = run.http.get(f"{API}/versions/1/manifest")
    assert r.status_code == 404
    code, out = volunteer_verify(run, tmp_path, json.dumps(run.clients[0].receipts[-1]))
    assert code == 1 and "version 1: the server has no signed manifest for it" in out
    assert "version(s) 1–1 are missing" in out


def test_a_swapped_update_is_caught(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with _db(run) as db:
        (other,) = db.execute(
            "SELECT payload_digest FROM version_updates WHERE version = 1 AND position = 1"
        ).fetchone()
        db.execute(
            "UPDATE version_updates SET payload_digest = ? WHERE version = 1 AND position = 0",
            (other,),
        )
    code, out = backend_verify(run, capsys)
    assert code == 1
    assert "version 1: its 2 stored updates hash to root" in out
    assert "is stored with another payload digest" in out


def test_the_installed_entry_points_over_real_http(
    live_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`barnraise verify` and `barnraise-backend verify` as run from a shell, against the
    live server (one round, loopback HTTP)."""
    from app.cli import main as app_main

    coordinator = live_server.app.coordinator
    coordinator.create_project(
        "provenance",
        recipe="digits-mlp",
        hparams=SMALL_DIGITS,
        settings={"clients_per_round": 1, "min_updates": 1, "codec": "int8"},
    )
    contributor = DemoContributor(live_server.url, "provenance", "Ada")
    contributor.join()
    task = contributor.lease(0)
    assert task is not None
    receipt = contributor.train_and_upload(task)
    give_up = time.monotonic() + 60.0
    while True:  # the server's own worker aggregates; wait on its wake-ups
        seen = coordinator.notifier.generation("provenance")
        if coordinator.project("provenance").current_version >= 1:
            break
        assert time.monotonic() < give_up, "version 1 took over 60 s"
        coordinator.notifier.wait("provenance", seen, give_up - time.monotonic())
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(receipt))
    capsys.readouterr()
    code = app_main(
        [
            "verify",
            "--server",
            live_server.url,
            "--project",
            "provenance",
            "--receipt",
            str(receipt_file),
            "--credentials",
            str(tmp_path / "credentials.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "is leaf 1 of 1 under the signed updates root of version 1" in out
    code = backend_main(["verify", "--data", str(live_server.data_dir), "--project", "provenance"])
    out = capsys.readouterr().out
    assert code == 0 and "OK: the chain of provenance from version 1 back to 0 holds." in out
