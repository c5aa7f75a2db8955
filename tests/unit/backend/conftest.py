"""In-process fixtures: a coordinator on a temp folder with a settable clock, its WSGI app,
and a requests session that calls the app directly (no socket). The aggregation worker
thread is not started; tests run ``coordinator.worker.run_once()`` to aggregate. The
coordinator's store is SQLite in the folder, or an empty PostgreSQL database where
``store_kind`` says so (a module marked ``both_stores``, see ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.metrics import BackendMetrics, Registry
from backend.store import ProjectRecord
from backend.testing import IN_PROCESS_URL, FakeClock, wsgi_session
from backend.wsgi import App

SMALL_DIGITS = {"num_shards": 4, "hidden": 16, "local_epochs": 1.0, "batch_size": 32, "lr": 0.1}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coordinator(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, store_kind: str
) -> Iterator[Coordinator]:
    url = request.getfixturevalue("migrated_postgres_url") if store_kind == "postgres" else None
    c = Coordinator(
        tmp_path / "data",
        clock=clock,
        start_worker=False,
        metrics=BackendMetrics.create(Registry()),
        database_url=url,
    )
    yield c
    c.close()


@pytest.fixture
def app(coordinator: Coordinator) -> App:
    return App(coordinator, rate=None)


@pytest.fixture
def http(app: App) -> requests.Session:
    return wsgi_session(app)


MakeProject = Callable[..., ProjectRecord]
Join = Callable[..., DemoContributor]


@pytest.fixture
def make_project(coordinator: Coordinator) -> MakeProject:
    """``make_project(name="digits", **settings)``: a small digits-mlp project (2 per round).

    Spot checks are off unless asked for: these tests upload made-up deltas, which a
    re-execution would (rightly) keep out."""

    def make(name: str = "digits", **settings: Any) -> ProjectRecord:
        base: dict[str, Any] = {
            "clients_per_round": 2,
            "min_updates": 2,
            "codec": "int8",
            "spot_check_rate": 0,
        }
        base.update(settings)
        return coordinator.create_project(
            name, recipe="digits-mlp", hparams=SMALL_DIGITS, settings=base
        )

    return make


@pytest.fixture
def join(http: requests.Session) -> Join:
    """``join(project, display_name, **kw)``: a contributor that has joined, in process."""

    def do_join(project: str, name: str, **kw: Any) -> DemoContributor:
        c = DemoContributor(IN_PROCESS_URL, project, name, session=http, **kw)
        c.join()
        return c

    return do_join
