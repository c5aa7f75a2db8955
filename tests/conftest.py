"""Shared test settings: Qt offscreen, hypothesis profile sized for a 2-core CI machine;
the session's one PostgreSQL cluster, and running a module's tests on both stores.

``postgres_cluster`` (one per session, started on first use), ``postgres_url`` (a new empty
database per test) and ``migrated_postgres_url`` (the store's schema, no rows) come from
``tests/support/postgres.py``. A module marked ``pytest.mark.both_stores`` runs each test
that asks for ``store_kind`` (the unit ``coordinator`` does) once on SQLite and once on
PostgreSQL, ids ``sqlite``/``postgres``; elsewhere ``store_kind`` is ``"sqlite"``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

settings.register_profile(
    "barnraise", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("barnraise")

# Tiny models train fastest on one thread, and a 2-core CI machine has none to spare.
torch.set_num_threads(1)

STORE_KINDS = ["sqlite", "postgres"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_stores: run each test using store_kind on SQLite and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_stores"
    ):
        metafunc.parametrize("store_kind", STORE_KINDS)


@pytest.fixture
def store_kind() -> str:
    """Which store a test's coordinator runs on; see the module docstring."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    from tests.support.postgres import cluster_for_session  # psycopg only when asked for

    yield from cluster_for_session()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    from tests.support.postgres import fresh_database

    yield from fresh_database(postgres_cluster)


@pytest.fixture
def migrated_postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    from tests.support.postgres import migrated_database

    yield from migrated_database(postgres_cluster)
