"""Coordinator processes on one PostgreSQL database: wake-ups over LISTEN/NOTIFY, and
liveness locks that let a survivor take over a dead process's aggregation claim at once
(``backend.store.postgres_notify``). A dead process here is a real one, killed with
SIGKILL; a lost connection is one PostgreSQL itself terminates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.coordinator import Coordinator
from backend.metrics import BackendMetrics, Registry
from backend.store.postgres import PostgresStore
from backend.store.postgres_notify import owner_key
from backend.testing import FakeClock
from tests.support.postgres import PostgresCluster
from tests.support.wait import wait_until


class Heard:
    """What a process's ``wake`` was called with, waitable."""

    def __init__(self) -> None:
        self.projects: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, project: str) -> None:
        with self.cond:
            self.projects.append(project)
            self.cond.notify_all()

    def wait_for(self, project: str) -> None:
        wait_until(lambda: project in self.projects, 10, f"a wake-up for {project}", cond=self.cond)


@pytest.fixture
def stores(postgres_url: str) -> Iterator[list[PostgresStore]]:
    opened = [PostgresStore(postgres_url, pool_size=2) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


VICTIM = """
import sys, time
from backend.store.postgres import PostgresStore
store = PostgresStore(sys.argv[1], pool_size=1)
store.connect_peers(sys.argv[2], lambda project: None)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def victim(postgres_url: str) -> Iterator[subprocess.Popen[str]]:
    """Another coordinator process, marked alive as owner ``victim-owner``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", VICTIM, postgres_url, "victim-owner"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_wake_up_reaches_the_other_process_not_the_sender(stores: list[PostgresStore]) -> None:
    heard_a, heard_b = Heard(), Heard()
    send_a = stores[0].connect_peers("owner-a", heard_a)
    send_b = stores[1].connect_peers("owner-b", heard_b)
    assert send_a is not None and send_b is not None
    send_a("digits")
    heard_b.wait_for("digits")
    send_b("cats")
    heard_a.wait_for("cats")
    send_a("last")  # after it is heard, anything of A's own would have arrived before it
    heard_b.wait_for("last")
    assert "digits" not in heard_a.projects and "cats" not in heard_b.projects


def test_a_command_only_sends_and_its_last_wake_up_goes_out_on_close(
    stores: list[PostgresStore], postgres_url: str
) -> None:
    heard = Heard()
    stores[0].connect_peers("server", heard)
    command = PostgresStore(postgres_url, pool_size=1)
    send = command.connect_peers("command", None)
    assert send is not None
    assert stores[0].live_owners(["server", "command"]) == {"server"}  # a command is no owner
    send("paused-project")
    command.close()
    heard.wait_for("paused-project")


def test_liveness_follows_the_process_across_a_kill(
    stores: list[PostgresStore], victim: subprocess.Popen[str]
) -> None:
    stores[0].connect_peers("survivor", Heard())
    assert stores[1].live_owners(["survivor", "victim-owner", "never-ran"]) == {
        "survivor",
        "victim-owner",
    }
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    wait_until(
        lambda: stores[1].live_owners(["survivor", "victim-owner"]) == {"survivor"},
        10,
        "PostgreSQL to end the killed process's session and its liveness lock",
    )


def test_a_lost_listening_connection_comes_back_with_its_lock(
    stores: list[PostgresStore], postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    heard = Heard()
    stores[0].connect_peers("owner-a", heard)
    send_b = stores[1].connect_peers("owner-b", Heard())
    assert send_b is not None
    dbname = postgres_url.rsplit("dbname=", 1)[1]
    with postgres_cluster.admin() as admin:
        ended = admin.execute(
            """SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d
               ON d.oid = l.database WHERE d.datname = %s AND l.locktype = 'advisory'
               AND l.objid = %s""",
            [dbname, owner_key("owner-a")],
        ).fetchall()
    assert ended == [(True,)]
    wait_until(
        lambda: (
            stores[1].live_owners(["owner-a"]) == {"owner-a"}
            and (send_b("after-reconnect"), "after-reconnect" in heard.projects)[1]
        ),
        20,
        "the listener to reconnect, take its lock again and hear wake-ups",
        interval=0.2,
    )


def test_a_survivor_takes_over_a_killed_owners_claim_at_once(
    tmp_path: Path, postgres_url: str, victim: subprocess.Popen[str]
) -> None:
    clock = FakeClock()
    c = Coordinator(
        tmp_path / "data",
        clock=clock,
        start_worker=False,
        metrics=BackendMetrics.create(Registry()),
        database_url=postgres_url,
    )
    try:
        project = c.create_project("digits", recipe="digits-mlp", hparams={"num_shards": 2})
        with c.store.write() as tx:  # the victim's claim, made a moment ago
            tx.claim_aggregation(project.id, 0, "victim-owner", clock(), [])
        assert c.worker.release_stale_claims() == 0  # alive: its claim stands
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        wait_until(
            lambda: c.worker.release_stale_claims() == 1,
            10,
            "the dead owner's claim to be taken back",
            interval=0.2,
        )
        with c.store.read() as tx:
            assert tx.running_claims() == []
    finally:
        c.close()


def test_long_polls_of_a_serving_process_wake_for_another_processes_change(
    tmp_path: Path, postgres_url: str
) -> None:
    def coordinator(start_worker: bool) -> Coordinator:
        return Coordinator(
            tmp_path / "data",
            start_worker=start_worker,
            metrics=BackendMetrics.create(Registry()),
            database_url=postgres_url,
        )

    serving = coordinator(True)
    try:
        command = coordinator(False)
        seen = serving.notifier.generation("digits")
        command.notifier.notify("digits")  # e.g. `project resume` from the CLI
        command.close()
        wait_until(
            lambda: serving.notifier.generation("digits") != seen,
            10,
            "the serving process's long polls for digits to be woken",
            pause=lambda s: serving.notifier.wait("digits", seen, s),
        )
    finally:
        serving.close()
