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
        ["demo", "--rounds", "5", "--contributors", "3", "--json", "--data", str(tmp_path / "demo")]
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
            "--data",
            str(tmp_path / "demo"),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[0].startswith("leaderboard: http://127.0.0.1:") and lines[0].endswith("/p/digits")
    assert [ln.split(":")[0] for ln in lines[1:]] == ["version 1", "version 2", "done"]
    assert all("accuracy" in ln and "contributors" in ln and "updates" in ln for ln in lines[1:])
    assert lines[-1].startswith("done: 2 versions in ")
