"""The same WSGI app, unchanged, under gunicorn: a contributor joins, leases and uploads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend.cli import main as backend_cli
from backend.demo_clients import DemoContributor
from backend.testing import wait_until_healthy

GUNICORN = Path(sys.executable).with_name("gunicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(os.name != "posix", reason="gunicorn runs on POSIX only")
def test_app_runs_under_gunicorn(tmp_path: Path) -> None:
    assert GUNICORN.exists(), "gunicorn is a dev dependency; run `make test` to install it"
    data = tmp_path / "data"
    assert (
        backend_cli(
            [
                "project",
                "create",
                "digits",
                "--recipe",
                "digits-mlp",
                "--strategy",
                "fedavg",
                "--data",
                str(data),
            ]
        )
        == 0
    )
    port = free_port()
    server = subprocess.Popen(
        [
            str(GUNICORN),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "8",
            "backend.wsgi:app_from_env()",
        ],
        env={**os.environ, "BARNRAISE_DATA": str(data)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, timeout=60)
        volunteer = DemoContributor(base, "digits", "Ada")
        volunteer.join()
        task = volunteer.lease(0)
        assert task is not None
        receipt = volunteer.train_and_upload(task)
        assert receipt["task_id"] == task["task_id"] and receipt["credit"] > 0
        page = volunteer.session.get(f"{base}/p/digits", timeout=10)
        assert page.status_code == 200 and "Ada" in page.text
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert "Traceback" not in err, err
