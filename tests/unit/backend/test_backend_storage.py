"""Storage under pressure and at rest (issue 12): a full disk answers 507 with Retry-After
and ``/healthz`` says degraded while it lasts, and nothing acknowledged is lost; spent join
challenges are deleted; temp files a crash left are removed at start-up; the data folder is
0700 and the database 0600; the page's join URL comes from configuration, never ``Host``."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.coordinator import DB_FILE, Coordinator
from backend.demo_clients import DemoContributor
from backend.metrics import BackendMetrics, Registry
from backend.store.blobs import HOST_TAG, ORPHAN_AGE_S
from backend.testing import IN_PROCESS_URL, FakeClock, small_delta, upload_request, wsgi_session
from backend.wsgi import DEFAULT_PUBLIC_URL, App, bind_url, check_public_url
from federated.codec import encode_update
from federated.protocol import ERROR_STATUS

API = f"{IN_PROCESS_URL}/api/v1/projects"
SMALL_DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}
SETTINGS = {"clients_per_round": 4, "min_updates": 4, "codec": "int8", "spot_check_rate": 0}


def open_coordinator(folder: Path, clock: FakeClock) -> Coordinator:
    return Coordinator(
        folder, clock=clock, start_worker=False, metrics=BackendMetrics.create(Registry())
    )


def upload(
    http: requests.Session, c: Coordinator, who: DemoContributor, task: dict[str, Any]
) -> Any:
    spec = c.runtime(c.project("cat")).spec
    payload = encode_update(small_delta(spec, key=task["task_id"]), "int8").payload
    return upload_request(
        http,
        IN_PROCESS_URL,
        project="cat",
        token=who.token,
        key=who.key,
        task=task,
        client_id=who.client_id,
        payload=payload,
    )


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not logged, [r.getMessage() for r in logged]


def insufficient(response: requests.Response) -> None:
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert "disk is full" in response.json()["error"]["message"]
    assert int(response.headers["Retry-After"]) >= 1


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its filesystem has no byte left."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 2 MiB tmpfs mounted for the test, or None where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        if os.geteuid() != 0:
            pytest.skip(f"mounting a small tmpfs needs root ({mounted.stderr.decode()[:200]})")
        yield None  # root, but mount is refused (a container): simulate ENOSPC instead
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_is_507_and_degraded_and_loses_nothing_acknowledged(
    small_disk: Path | None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    root = small_disk if small_disk is not None else tmp_path / "simulated"
    c = open_coordinator(root / "data", clock)
    try:
        app = App(c, rate=None)
        http = wsgi_session(app)
        c.create_project("cat", recipe="digits-mlp", hparams=SMALL_DIGITS, settings=SETTINGS)
        ada, bob = (DemoContributor(IN_PROCESS_URL, "cat", n, session=http) for n in "AB")
        ada.join()
        bob.join()
        task_a, task_b = ada.lease(0), bob.lease(0)
        assert task_a and task_b
        first = upload(http, c, ada, task_a)
        assert first.status_code == 201, first.text  # acknowledged before the disk fills

        filler = fill(root) if small_disk is not None else simulate_full_disk(monkeypatch, c)
        caplog.clear()
        insufficient(upload(http, c, bob, task_b))
        assert list(c.blobs.tmp_dir.iterdir()) == []  # the cut temp file is gone
        health = http.get(f"{IN_PROCESS_URL}/healthz")
        assert health.status_code == 503
        assert health.json() == {
            "status": "degraded",
            "aggregation_overdue": [],
            "storage_full": True,
        }
        challenge = http.post(f"{API}/cat/challenge")  # a SQLite write
        assert challenge.status_code in (200, 507), challenge.text
        if challenge.status_code == 507:
            insufficient(challenge)
        assert http.post(f"{API}/cat/tasks/lease", headers=bob_auth(bob)).status_code != 500
        no_traceback(caplog)
        with c.store.read() as tx:
            project = tx.project_by_name("cat")
            assert project is not None
            kept = [(u.task_id, u.payload_digest) for u in tx.updates(project.id)]
        assert kept == [(task_a["task_id"], first.json()["payload_digest"])]
        assert c.blobs.verify(first.json()["payload_digest"])

        if small_disk is not None:
            filler.unlink()
        else:
            monkeypatch.undo()
        health = http.get(f"{IN_PROCESS_URL}/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["storage_full"] is False
        again = upload(http, c, bob, task_b)  # the 507 did not end Bob's task
        assert again.status_code == 201, again.text
        assert http.post(f"{API}/cat/challenge").status_code == 200
    finally:
        c.close()
    reopened = open_coordinator(root / "data", clock)  # and all of it survives a restart
    try:
        with reopened.store.read() as tx:
            project = tx.project_by_name("cat")
            assert project is not None
            assert {u.task_id for u in tx.updates(project.id)} == {
                task_a["task_id"],
                task_b["task_id"],
            }
    finally:
        reopened.close()


def bob_auth(who: DemoContributor) -> dict[str, str]:
    return {"Authorization": f"Bearer {who.token}"}


def simulate_full_disk(monkeypatch: pytest.MonkeyPatch, c: Coordinator) -> Path:
    """No room on the blob filesystem: its temp files write to /dev/full, and SQLite says
    "database or disk is full" for a new challenge."""
    from backend.services.membership import MembershipService
    from backend.storage import StorageHealth

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to simulate a full disk with")

    def temp_file(self: Any) -> tuple[int, Path]:
        path = self.tmp_dir / "incoming-simulated"
        path.touch()
        return os.open("/dev/full", os.O_WRONLY), path

    def no_room(*_args: Any, **_kw: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(type(c.blobs), "temp_file", temp_file)
    monkeypatch.setattr(MembershipService, "new_challenge", no_room)
    monkeypatch.setattr(StorageHealth, "_probe", lambda self: False)
    return Path("/dev/full")


def test_a_write_that_finds_sqlite_full_is_507(
    coordinator: Coordinator,
    http: requests.Session,
    make_project: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_project("cat")
    simulate_full_disk(monkeypatch, coordinator)
    insufficient(http.post(f"{API}/cat/challenge"))
    assert http.get(f"{IN_PROCESS_URL}/healthz").json()["storage_full"] is True
    no_traceback(caplog)
    assert ERROR_STATUS["insufficient_storage"] == 507


def test_spent_and_expired_challenges_are_deleted(
    coordinator: Coordinator, http: requests.Session, clock: FakeClock, make_project: Any, join: Any
) -> None:
    make_project("cat")
    join("cat", "Ada")  # one challenge used
    for _ in range(3):
        assert http.post(f"{API}/cat/challenge").status_code == 200
    clock.advance(301)  # those three expire
    fresh = http.post(f"{API}/cat/challenge").json()["challenge"]

    def challenges() -> list[str]:
        with coordinator.store.read() as tx:
            return [r[0] for r in tx._c.execute("SELECT challenge FROM challenges")]  # type: ignore[attr-defined]

    assert len(challenges()) == 5
    coordinator.worker.run_once()  # the worker sweeps them (every CHALLENGE_SWEEP_S)
    assert challenges() == [fresh]
    join("cat", "Bob")  # the fresh ones still work
    assert coordinator.worker.delete_spent_challenges() == 1  # Bob's, used


def test_orphan_temp_files_are_removed_at_start(tmp_path: Path, clock: FakeClock) -> None:
    tmp = tmp_path / "data" / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (
            "incoming-abc123",  # named before temp files carried a pid
            f"incoming-{dead.pid}-x1",  # its process is gone (a crash)
            f"incoming-{os.getpid()}-x2",  # an earlier life of this pid
            f"probe-{dead.pid}-x3",
            f"incoming-{live.pid}-{HOST_TAG}-x4",  # another live process is writing it
            f"incoming-{dead.pid}-0badf00d-x5",  # another host's (a shared folder): kept
            f"incoming-{dead.pid}-0badf00d-x6",  # … unless a day old
        ):
            (tmp / name).write_bytes(b"half an upload")
        day_old = time.time() - ORPHAN_AGE_S - 60
        os.utime(tmp / f"incoming-{dead.pid}-0badf00d-x6", (day_old, day_old))
        c = open_coordinator(tmp_path / "data", clock)
        try:
            assert c.blobs.orphans_removed == 5
            assert sorted(p.name for p in tmp.iterdir()) == sorted(
                [f"incoming-{dead.pid}-0badf00d-x5", f"incoming-{live.pid}-{HOST_TAG}-x4"]
            )
            fd, path = c.blobs.temp_file()
            os.close(fd)
            assert path.name.startswith(f"incoming-{os.getpid()}-{HOST_TAG}-")
        finally:
            c.close()
    finally:
        live.kill()
        live.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_folder_and_database_are_private(tmp_path: Path, clock: FakeClock) -> None:
    c = open_coordinator(tmp_path / "new", clock)
    try:
        c.create_project("cat", recipe="digits-mlp", hparams=SMALL_DIGITS, settings=SETTINGS)
        folder = tmp_path / "new"
        assert mode(folder) == 0o700
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
            assert mode(folder / name) == 0o600, name
    finally:
        c.close()

    old = tmp_path / "old"  # made by an earlier version: world-readable
    c = open_coordinator(old, clock)
    c.close()
    os.chmod(old, 0o755)
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
        if (old / name).exists():
            os.chmod(old / name, 0o644)
    c = open_coordinator(old, clock)
    try:
        assert mode(old) == 0o700
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
            if (old / name).exists():
                assert mode(old / name) == 0o600, name
    finally:
        c.close()


def test_the_join_url_comes_from_configuration_not_host(
    coordinator: Coordinator, make_project: Any
) -> None:
    make_project("cat")
    for app, expected in (
        (App(coordinator, rate=None), DEFAULT_PUBLIC_URL),
        (
            App(coordinator, rate=None, public_url="https://barn.example/fl/"),
            "https://barn.example/fl",
        ),
    ):
        page = wsgi_session(app).get(f"{IN_PROCESS_URL}/p/cat", headers={"Host": "evil.example"})
        assert page.status_code == 200
        assert f'id="join-url">{expected}/p/cat</code>' in page.text
        assert "evil.example" not in page.text


@pytest.mark.parametrize(
    "url", ["ftp://barn.example", "barn.example", "https://", "https://u:p@barn.example",
            "https://barn.example/?x=1", "https://barn.example:port"],
)  # fmt: skip
def test_a_bad_public_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="public URL"):
        check_public_url(url)


def test_the_default_public_url_is_the_bind_address() -> None:
    import socket

    assert bind_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert bind_url("::1", 8443, tls=True) == "https://[::1]:8443"
    assert bind_url("0.0.0.0", 80) == f"http://{socket.gethostname()}:80"


def test_serve_refuses_a_bad_public_url_before_binding(tmp_path: Path, capsys: Any) -> None:
    from backend.cli import main

    code = main(["serve", "--data", str(tmp_path / "d"), "--public-url", "ftp://x", "--port", "0"])
    assert code == 2
    assert "public URL" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
