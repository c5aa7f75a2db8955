"""The barnraise-backend CLI: project management, invites, and settings declared once."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from backend.cli import main
from backend.coordinator import Coordinator
from backend.settings import SETTING_HELP, ProjectSettings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_project_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "d")
    code, out, _ = run(
        capsys,
        "project",
        "create",
        "demo-1",
        "--recipe",
        "digits-mlp",
        "--strategy",
        "fedavg",
        "--mode",
        "async",
        "--buffer-size",
        "4",
        "--data",
        data,
        "hidden=16",
        "--hp",
        "num_shards=3",
    )
    assert code == 0
    shown = json.loads(out)
    assert (
        shown["mode"] == "async"
        and shown["hparams"]["hidden"] == 16
        and shown["hparams"]["num_shards"] == 3
    )
    code, out, _ = run(capsys, "project", "list", "--data", data)
    assert code == 0 and out.startswith("demo-1\topen\tdigits-mlp\tasync")
    for action, status in (("pause", "paused"), ("resume", "open"), ("close", "closed")):
        code, out, _ = run(capsys, "project", action, "demo-1", "--data", data)
        assert code == 0 and out.strip() == f"demo-1: {status}"
    code, out, _ = run(capsys, "project", "show", "demo-1", "--data", data)
    assert code == 0 and json.loads(out)["settings"]["buffer_size"] == 4


def test_bad_project_arguments_fail_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "d")
    code, _, err = run(
        capsys, "project", "create", "Bad Name", "--recipe", "digits-mlp", "--data", data
    )
    assert code == 2 and "not a project name" in err
    code, _, err = run(capsys, "project", "create", "ok", "--recipe", "nope", "--data", data)
    assert code == 2 and "unknown recipe" in err
    code, _, err = run(
        capsys,
        "project",
        "create",
        "ok",
        "--recipe",
        "digits-mlp",
        "--min-updates",
        "9",
        "--data",
        data,
    )
    assert code == 2 and "min_updates" in err
    code, _, err = run(capsys, "project", "show", "missing", "--data", data)
    assert code == 2 and "no project" in err


def test_invite_create_prints_working_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d"
    assert (
        run(
            capsys,
            "project",
            "create",
            "club",
            "--recipe",
            "digits-mlp",
            "--invite-required",
            "--data",
            str(data),
            "num_shards=2",
        )[0]
        == 0
    )
    code, out, _ = run(
        capsys, "invite", "create", "club", "--url", "https://example.org", "--data", str(data)
    )
    assert code == 0
    app_link, page_link = out.split()
    query = parse_qs(urlsplit(app_link).query)
    assert app_link.startswith("barnraise://join?") and query["url"] == [
        "https://example.org/p/club"
    ]
    assert page_link == f"https://example.org/p/club?invite={query['invite'][0]}"
    c = Coordinator(data, start_worker=False)
    try:
        assert c.project_view(c.project("club"))["invite_required"] is True
    finally:
        c.close()


def test_every_project_setting_has_help_and_is_documented() -> None:
    names = {f.name for f in fields(ProjectSettings)}
    assert names == set(SETTING_HELP)
    docs = (Path(__file__).resolve().parents[3] / "docs" / "backend.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in docs)
    assert missing == [], f"docs/backend.md does not mention {missing}"
