"""A real coordinator on loopback and helpers to run real contributors against it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_e2e_helpers import Coordinator

from backend.cli import DEMO_HPARAMS
from backend.demo_headless import DEMO_CONTRIBUTOR_SETTINGS
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    app = create_app(tmp_path / "backend", rate=None)
    app.coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        strategy="fedavg",
        hparams=DEMO_HPARAMS,
        settings={"mode": "sync", "clients_per_round": 3, "min_updates": 3, "codec": "int8"},
    )
    # Long tasks (thousands of steps) for the crash and restart tests.
    app.coordinator.create_project(
        "slow",
        recipe="digits-mlp",
        strategy="fedavg",
        hparams={**DEMO_HPARAMS, "max_steps": 6000},
        settings={
            "mode": "sync",
            "clients_per_round": 1,
            "min_updates": 1,
            "codec": "f32",
            "lease_s": 120,
        },
    )
    server = make_server(app, "127.0.0.1", 0, threads=32)
    start_in_thread(server)
    yield Coordinator(app=app, url=f"http://127.0.0.1:{bound_port(server)}")
    server.stop()
    app.close()


@pytest.fixture
def cli_env(tmp_path: Path) -> Any:
    """Make ``env(name)``: the environment of one CLI contributor with its own folders."""

    def make(name: str) -> dict[str, str]:
        root = tmp_path / name
        config = root / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "settings.json").write_text(json.dumps(DEMO_CONTRIBUTOR_SETTINGS))
        os.chmod(config / "settings.json", 0o600)
        env = dict(os.environ)
        env.update(
            {
                "BARNRAISE_DATA_DIR": str(root / "data"),
                "BARNRAISE_CONFIG_DIR": str(config),
                "BARNRAISE_CREDENTIALS": str(root / "credentials.json"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    return make
