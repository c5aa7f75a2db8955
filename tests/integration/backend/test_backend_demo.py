"""`barnraise-backend demo --rounds 5 --json`: exits 0 with a summary; digits reaches 0.90."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.cli import main


def test_demo_five_rounds_reaches_ninety_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "demo",
            "--rounds",
            "5",
            "--contributors",
            "3",
            "--contributor-kind",
            "in-process",
            "--json",
            "--data",
            str(tmp_path / "demo"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["versions"] == 5
    assert summary["final_accuracy"] >= 0.90
    assert summary["contributors"] == 3 and summary["updates_accepted"] >= 15
    assert summary["updates_rejected"] == 0 and summary["client_errors"] == []
    assert summary["credit_unit"] == "GFLOP" and summary["total_credit"] > 0


def test_demo_prints_the_leaderboard_and_one_line_per_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "demo",
            "--rounds",
            "2",
            "--contributors",
            "2",
            "--mode",
            "async",
            "--contributor-kind",
            "in-process",
            "--data",
            str(tmp_path / "demo"),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[0].startswith("leaderboard: http://127.0.0.1:") and lines[0].endswith("/p/digits")
    assert lines[1] == "contributors: 2 x in-process demo clients"
    assert [ln.split(":")[0] for ln in lines[2:]] == ["version 1", "version 2", "done"]
    assert all("accuracy" in ln and "contributors" in ln and "updates" in ln for ln in lines[2:])
    assert lines[-1].startswith("done: 2 versions in ")


@pytest.mark.slow
def test_demo_runs_real_headless_contributors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `make demo` runs: the volunteers are `barnraise --headless` processes."""
    data = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--rounds",
            "2",
            "--contributors",
            "2",
            "--contributor-kind",
            "headless",
            "--data",
            str(data),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "contributors: 2 x `barnraise --headless`" in out
    assert out.strip().splitlines()[-1].startswith("done: 2 versions in ")
    logs = sorted((data / "contributors").glob("*/contributor.log"))
    assert len(logs) == 2
    assert all("accepted" in log.read_text() for log in logs)
    assert all("stopped" in log.read_text() for log in logs)  # SIGTERM gave a clean stop
