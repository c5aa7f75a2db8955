"""`python -m federated.fetch PAGE_URL` against a real coordinator: the model arrives
checked (signature, digest), the snippet it prints loads it into the recipe's model, and a
wrong key fingerprint or a wrong page refuses with nothing written."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from federated.signing import fingerprint

REPO = Path(__file__).resolve().parents[3]


def fetch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federated.fetch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def fetched_project(live_server: object) -> tuple[str, str, str]:
    """(page URL, model digest, key fingerprint) of a project made for these tests."""
    coordinator = live_server.app.coordinator  # type: ignore[attr-defined]
    record = coordinator.create_project(
        "fetch-me", recipe="digits-mlp", hparams={"num_shards": 2, "hidden": 8}
    )
    digest = coordinator.project_view(record)["model_digest"]
    page = f"{live_server.url}/p/fetch-me"  # type: ignore[attr-defined]
    return page, digest, fingerprint(record.public_key)


def test_the_model_arrives_checked_and_the_printed_snippet_loads_it(
    fetched_project: tuple[str, str, str], tmp_path: Path
) -> None:
    page, digest, key = fetched_project
    done = fetch(page, "--fingerprint", key, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "fetch-me-v0.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert key in done.stdout and digest in done.stdout
    snippet = done.stdout.split("Load it with:\n\n", 1)[1]
    loaded = subprocess.run(
        [sys.executable, "-c", snippet + "print(sum(p.numel() for p in model.parameters()))"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout.split()[-1]) == 64 * 8 + 8 + 8 * 10 + 10


def test_another_key_or_page_is_refused_and_nothing_is_written(
    fetched_project: tuple[str, str, str], tmp_path: Path
) -> None:
    page, _digest, key = fetched_project
    wrong = "0000:" + key[5:]
    refused = fetch(page, "--fingerprint", wrong, "--out", "m.safetensors", cwd=tmp_path)
    assert refused.returncode == 2 and "refusing its model" in refused.stderr
    missing = fetch(page.replace("fetch-me", "no-such"), cwd=tmp_path)
    assert missing.returncode == 2 and "404" in missing.stderr
    assert fetch("file:///etc/passwd", cwd=tmp_path).returncode == 2
    assert list(tmp_path.iterdir()) == []
