"""A language-model project's page (issue 13): what the current version writes, escaped,
the same text for the same version, and the bytes trained into the model; the CLI's
``sample`` writes text from any version and refuses a project that writes none."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.cli import main
from backend.coordinator import Coordinator
from backend.testing import IN_PROCESS_URL, upload_small_delta

LM = {"preset": "tiny", "num_shards": 2, "max_steps": 2, "eval_windows": 8}


def create_lm(co: Coordinator) -> None:
    co.create_project(
        "lm",
        recipe="byte-lm",
        strategy="diloco",
        hparams=LM,
        settings={"clients_per_round": 1, "min_updates": 1, "spot_check_rate": 0},
    )


def samples_of(page: str) -> list[str]:
    return [unescape(m) for m in re.findall(r'<figure class="sample"><pre>(.*?)</pre>', page, re.S)]


def test_the_page_shows_escaped_samples_of_the_current_version_and_bytes_trained(
    coordinator: Coordinator, http: requests.Session, join: Any
) -> None:
    create_lm(coordinator)
    first = http.get(f"{IN_PROCESS_URL}/p/lm", timeout=30).text
    shown = samples_of(first)
    assert len(shown) == 3 and shown[0].startswith("<b>def </b>")
    # The model's bytes are text like any user's: nothing it writes becomes markup.
    body = first.split('id="samples"')[1].split("</section>")[0]
    assert "<script" not in body and body.count("<pre>") == 3
    assert http.get(f"{IN_PROCESS_URL}/p/lm", timeout=30).text.count("<pre>") == 3
    assert samples_of(http.get(f"{IN_PROCESS_URL}/p/lm", timeout=30).text) == shown
    assert 'id="tokens-trained">0<' in first
    ada = join("lm", "Ada")
    task = ada.lease(0)
    assert task is not None
    assert upload_small_delta(http, coordinator, ada, task).status_code == 201
    assert coordinator.worker.run_once()
    after = http.get(f"{IN_PROCESS_URL}/p/lm", timeout=30).text
    windows = int(task["max_examples"])
    assert f'id="tokens-trained">{windows * 128:,}<' in after
    assert "Version 1, continuing" in after


def test_the_page_of_a_classifier_shows_no_samples(
    coordinator: Coordinator, http: requests.Session
) -> None:
    coordinator.create_project("digits", recipe="digits-mlp")
    page = http.get(f"{IN_PROCESS_URL}/p/digits", timeout=30).text
    assert 'id="samples"' not in page and "tokens-trained" not in page


def test_the_cli_writes_text_from_a_version_and_refuses_a_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    co = Coordinator(tmp_path, start_worker=False)
    try:
        create_lm(co)
        co.create_project("digits", recipe="digits-mlp")
    finally:
        co.close()
    args = ["sample", "--data", str(tmp_path), "--project", "lm", "--bytes", "40"]
    assert main([*args, "--prompt", "import "]) == 0
    out = capsys.readouterr().out
    assert out.startswith("import ") and len(out.encode()) >= len("import ") + 1
    assert main([*args, "--prompt", "import "]) == 0
    assert capsys.readouterr().out == out  # the same version, the same text
    assert main([*args, "--version", "5"]) == 2
    assert "no version 5" in capsys.readouterr().err
    assert main(["sample", "--data", str(tmp_path), "--project", "digits"]) == 2
    assert "writes no text" in capsys.readouterr().err
    assert main(["sample", "--data", str(tmp_path), "--project", "nope"]) == 2
    assert "no project 'nope'" in capsys.readouterr().err
