"""A real embedded server (backend.serving) on a free loopback port for the whole session, polled until
``/healthz`` answers. Tests create their own projects in it. ``live_server`` keeps its data
in SQLite; ``postgres_live_server``, the same server on a PostgreSQL database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from backend.server import bound_port, make_server, start_in_thread
from backend.testing import wait_until_healthy
from backend.wsgi import App, create_app

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster


@dataclass
class LiveServer:
    url: str
    app: App
    data_dir: Path


@contextmanager
def serving(data_dir: Path, database_url: str | None = None) -> Iterator[LiveServer]:
    app = create_app(data_dir, database_url=database_url)
    server = make_server(app, "127.0.0.1", 0, threads=32)
    start_in_thread(server)
    url = f"http://127.0.0.1:{bound_port(server)}"
    wait_until_healthy(url)
    yield LiveServer(url, app, data_dir)
    server.stop()
    app.close()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(tmp_path_factory.mktemp("live-backend")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_live_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_cluster: PostgresCluster
) -> Iterator[LiveServer]:
    name = postgres_cluster.create_database("live")
    try:
        with serving(tmp_path_factory.mktemp("live-backend-pg"), postgres_cluster.url(name)) as s:
            yield s
    finally:
        postgres_cluster.drop_database(name)
