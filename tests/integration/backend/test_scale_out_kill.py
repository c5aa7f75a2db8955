"""Three coordinator processes on one PostgreSQL, behind a real nginx, with real headless
contributors (`barnraise --headless`), and ``kill -9`` of one of them, repeatedly: while
it aggregates (its claim is running) and while it takes an upload (its temp blob file is
open). Each killed process is started again on its port, as systemd's ``Restart=always``
would. What must hold: every update a contributor was told was accepted is stored (and
the version chain, signatures included, verifies), each version is published exactly once,
the survivors go on aggregating after each kill, and the contributors carry on by
themselves (no restart, no help).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backend.coordinator import Coordinator
from backend.demo_headless import DEMO_HPARAMS, HeadlessContributor, barnraise_command
from backend.testing import free_port, wait_until_healthy
from tests.support.nginx import Nginx
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

PROJECT = "digits"
KILLS = ("aggregation", "upload", "aggregation", "upload")
VERSIONS_AFTER_LAST_KILL = 2
STEP_TIMEOUT_S = 90.0
SERVE = Path(sys.executable).with_name("barnraise-backend")


class CoordinatorProcess:
    """One `barnraise-backend serve` on its own port, as a systemd instance would run it."""

    def __init__(self, port: int, data_dir: Path, database_url: str, public_url: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / f"coordinator-{port}.log"
        self.command = [
            str(SERVE), "serve", "--data", str(data_dir), "--database-url", database_url,
            "--host", "127.0.0.1", "--port", str(port), "--trusted-proxy", "127.0.0.1",
            "--public-url", public_url,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_until_healthy(self.url, timeout=60)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Observer:
    """Reads the shared database as an operator would, with its own connection."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def version(self) -> int:
        return int(self.rows("SELECT current_version FROM projects WHERE name = %s", PROJECT)[0][0])

    def running_claim_owners(self) -> list[str]:
        return [
            str(r[0]) for r in self.rows("SELECT owner FROM aggregations WHERE status = 'running'")
        ]


def owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])


def find_victim(
    kind: str, procs: list[CoordinatorProcess], db: Observer, blobs_tmp: Path
) -> CoordinatorProcess | None:
    """The process doing ``kind`` right now, if one is."""
    by_pid = {p.pid: p for p in procs}
    aggregating = {owner_pid(o) for o in db.running_claim_owners()}
    if kind == "aggregation":
        return next((by_pid[pid] for pid in aggregating if pid in by_pid), None)
    for name in os.listdir(blobs_tmp):  # incoming-PID-…: an upload being received and verified
        parts = name.split("-")
        if len(parts) > 2 and parts[0] == "incoming" and parts[1].isdigit():
            pid = int(parts[1])
            if pid in by_pid and pid not in aggregating:
                return by_pid[pid]
    return None


def accepted_updates(contributor: HeadlessContributor) -> list[tuple[str, float]]:
    """(update id, finished at) of every task the contributor's ledger says was accepted."""
    ledger = contributor.root / "data" / "ledger.sqlite"
    if not ledger.exists():
        return []
    with sqlite3.connect(ledger) as conn:
        rows = conn.execute(
            "SELECT update_id, finished_at FROM contributions WHERE accepted = 1"
        ).fetchall()
    return [(str(u), float(t)) for u, t in rows]


def test_kill_9_any_coordinator_during_uploads_and_aggregation(
    tmp_path: Path, postgres_url: str
) -> None:
    command = barnraise_command()
    assert command is not None, "the contributor app (barnraise) must be installed beside Python"
    data_dir = tmp_path / "data"
    setup = Coordinator(data_dir, start_worker=False, database_url=postgres_url)
    setup.create_project(
        PROJECT,
        recipe="digits-mlp",
        hparams=DEMO_HPARAMS,
        settings={"mode": "async", "buffer_size": 2, "clients_per_round": 3, "min_updates": 2,
                  "codec": "int8", "spot_check_rate": 0},
    )  # fmt: skip
    setup.close()
    nginx_port = free_port()
    procs = [
        CoordinatorProcess(free_port(), data_dir, postgres_url, f"http://127.0.0.1:{nginx_port}")
        for _ in range(3)
    ]
    nginx = Nginx(tmp_path / "nginx", nginx_port, [p.port for p in procs])
    (tmp_path / "nginx").mkdir()
    contributors = [
        HeadlessContributor(
            command, tmp_path / f"volunteer-{i}", f"{nginx.url}/p/{PROJECT}", f"v{i}", None
        )
        for i in range(3)
    ]
    db = Observer(postgres_url)
    blobs_tmp = data_dir / "blobs" / "tmp"
    killed: list[tuple[str, int, float]] = []  # (kind, version then, when)
    try:
        for p in procs:
            p.start()
        nginx.start()
        for c in contributors:
            c.start()
        wait_until(lambda: db.version() >= 1, STEP_TIMEOUT_S, "the first version")
        for kind in KILLS:
            victim = wait_until(
                lambda kind=kind: find_victim(kind, procs, db, blobs_tmp),
                STEP_TIMEOUT_S,
                f"a coordinator in the middle of {kind}",
                interval=0.002,
            )
            version = db.version()
            victim.kill()
            killed.append((kind, version, time.time()))
            victim.start()
            wait_until(
                lambda version=version: db.version() > version,
                STEP_TIMEOUT_S,
                f"the survivors to publish a version after the kill during {kind}",
                details=lambda: "\n".join(c.errors for c in contributors if c.errors) or "",
            )
        last = db.version()
        wait_until(
            lambda: db.version() >= last + VERSIONS_AFTER_LAST_KILL,
            STEP_TIMEOUT_S,
            f"{VERSIONS_AFTER_LAST_KILL} more versions",
        )
        assert all(c.alive() for c in contributors), [e for c in contributors for e in c.errors]
    finally:
        for c in contributors:
            c.stop()
        for p in procs:
            p.stop()
        nginx.stop()

    # Every acknowledged update is stored, and none was set aside as unreadable.
    acked = {u: t for c in contributors for u, t in accepted_updates(c)}
    stored = dict(db.rows("SELECT id, status FROM updates WHERE id = ANY(%s)", list(acked)))
    assert set(acked) - set(stored) == set(), "acknowledged updates missing from the store"
    assert not {u: s for u, s in stored.items() if s in ("quarantined", "rejected")}
    # The contributors went on uploading after the last kill, each of them.
    last_kill = killed[-1][2]
    for c in contributors:
        assert any(t > last_kill for _u, t in accepted_updates(c)), f"{c.name} stopped uploading"
    # Each version published once: 0..N with no gap, one finished aggregation per version.
    versions = [r[0] for r in db.rows("SELECT version FROM versions ORDER BY version")]
    assert versions == list(range(len(versions)))
    done = [
        r[0]
        for r in db.rows(
            "SELECT base_version FROM aggregations WHERE status = 'done' ORDER BY base_version"
        )
    ]
    assert done == versions[:-1]
    assert db.rows("SELECT count(*) FROM aggregations WHERE status = 'running'") == [(0,)]
    abandoned = db.rows("SELECT count(*) FROM aggregations WHERE status = 'abandoned'")[0][0]
    assert abandoned >= 1, "no kill landed inside an aggregation"
    # The whole chain verifies: manifests, models, and every aggregated update's signature.
    verified = subprocess.run(
        [
            str(SERVE),
            "verify",
            "--data",
            str(data_dir),
            "--database-url",
            postgres_url,
            "--project",
            PROJECT,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for p in procs:
        assert "Traceback" not in p.log.read_text(errors="replace"), p.log.read_text()[-4000:]
