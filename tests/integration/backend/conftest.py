"""A real embedded server (backend.serving) on a free loopback port for the whole session, polled until
``/healthz`` answers. Tests create their own projects in it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.server import bound_port, make_server, start_in_thread
from backend.testing import wait_until_healthy
from backend.wsgi import App, create_app


@dataclass
class LiveServer:
    url: str
    app: App
    data_dir: Path


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("live-backend")
    app = create_app(data_dir)
    server = make_server(app, "127.0.0.1", 0, threads=32)
    start_in_thread(server)
    url = f"http://127.0.0.1:{bound_port(server)}"
    wait_until_healthy(url)
    yield LiveServer(url, app, data_dir)
    server.stop()
    app.close()
