"""schemathesis against the live server, driven by the backend's own OpenAPI document:
whatever it generates (coverage, fuzzing and stateful phases), no answer is a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backend.demo_clients import DemoContributor
from tests.integration.backend.conftest import LiveServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.slow
def test_no_server_errors_under_schemathesis(live_server: LiveServer, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        pytest.fail("schemathesis is a dev dependency; run `make test` to install it")
    live_server.app.coordinator.create_project(
        "fuzzed", recipe="digits-mlp", hparams={"hidden": 8}, settings={"codec": "int8"}
    )
    member = DemoContributor(live_server.url, "fuzzed", "fuzzer")
    member.join()  # a real token, so schemathesis also reaches the authenticated operations
    result = subprocess.run(
        [
            str(SCHEMATHESIS if SCHEMATHESIS.exists() else "schemathesis"),
            "run",
            f"{live_server.url}/api/v1/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {member.token}",
            "--max-examples",
            "25",
            "--request-timeout",
            "40",
            "--seed",
            "20261127",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    # Every operation of the document is selected and tested, however many there are now.
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert "passed" in result.stdout and selected and tested, tail
    assert selected[1] == selected[2] == tested[1], tail
