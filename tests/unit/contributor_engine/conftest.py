"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_http_script import ScriptServer


@pytest.fixture
def script_server() -> Iterator[ScriptServer]:
    server = ScriptServer()
    yield server
    server.close()
