"""Kill the server (SIGKILL) in the middle of a round and restart it on the same folder:
every acknowledged update is still there and verifies, and the round completes."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.testing import wait_until_healthy
from federated.signing import verify_bytes

HPARAMS = {"num_shards": 3, "hidden": 16, "local_epochs": 1.0}
_SERVING = re.compile(r"on (http://127\.0\.0\.1:\d+)")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")


def _serve_command(data: Path) -> list[str]:
    script = shutil.which("barnraise-backend", path=str(Path(sys.executable).parent))
    base = [script] if script else [sys.executable, "-m", "backend.cli"]
    return [*base, "serve", "--data", str(data), "--port", "0"]


class Server:
    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen(
            _serve_command(data), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the server has bound its port
        m = _SERVING.search(line)
        assert m, f"unexpected first line from serve: {line!r}"
        self.url = m.group(1)
        wait_until_healthy(self.url)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def test_sigkill_mid_round_loses_nothing_acknowledged(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    setup = Coordinator(data, start_worker=False)
    setup.create_project(
        "kill",
        recipe="digits-mlp",
        hparams=HPARAMS,
        settings={"clients_per_round": 3, "min_updates": 3},
    )
    setup.close()

    first = Server(data)
    servers.append(first)
    clients = [DemoContributor(first.url, "kill", f"c{i}") for i in range(3)]
    for c in clients:
        c.join()
    # Round 0 completes normally.
    tasks = [c.lease(0) for c in clients]
    assert all(tasks)
    for c, t in zip(clients, tasks, strict=True):
        c.train_and_upload(t)  # type: ignore[arg-type]
    task = clients[0].lease(25)  # long poll: answers once version 1 is published
    assert task is not None and task["base_version"] == 1
    # Round 1: two of three updates acknowledged, the third contributor still training.
    round1 = [task, clients[1].lease(0), clients[2].lease(0)]
    assert all(t is not None and t["base_version"] == 1 for t in round1)
    clients[0].train_and_upload(round1[0])
    clients[1].train_and_upload(round1[1])  # type: ignore[arg-type]
    acknowledged = [r for c in clients for r in c.receipts]
    assert len(acknowledged) == 5
    first.kill()

    second = Server(data)
    servers.append(second)
    for c in clients:
        c.base_url = second.url
    # The third contributor's lease survived the crash; its update completes the round.
    late = clients[2].train_and_upload(round1[2])  # type: ignore[arg-type]
    acknowledged.append(late)
    nxt = clients[0].lease(25)
    assert nxt is not None and nxt["base_version"] == 2
    second.stop()

    check = Coordinator(data, start_worker=False)
    try:
        project = check.project("kill")
        assert project.current_version == 2
        with check.store.read() as tx:
            stored = {u.id: u for u in tx.updates(project.id)}
            keys = {c.id: c.public_key for c in tx.clients(project.id)}
            v2 = tx.version(project.id, 2)
        assert v2 is not None and v2.updates == 3
        for receipt in acknowledged:
            u = stored[receipt["update_id"]]
            assert u.payload_digest == receipt["payload_digest"] and u.status == "aggregated"
            assert check.blobs.verify(u.payload_digest)
            verify_bytes(keys[u.client_id], base64.b64decode(u.manifest_b64), u.signature)
        assert check.blobs.verify(v2.digest)
        assert list(check.blobs.tmp_dir.iterdir()) == []
    finally:
        check.close()
