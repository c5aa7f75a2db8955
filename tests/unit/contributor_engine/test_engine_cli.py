"""The `barnraise` command line without a coordinator: parsing, help, offline answers."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from app.cli import main, parse_duration


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # main() exports the folders to the environment; monkeypatch restores it afterwards.
    monkeypatch.setenv("BARNRAISE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BARNRAISE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("BARNRAISE_CREDENTIALS", raising=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("90", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "soon", "-5m", "0", "5w"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("barnraise ")


def test_remote_commands_say_when_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pause", "--data-dir", str(tmp_path)]) == 1
    assert "barnraise --headless" in capsys.readouterr().err


def test_status_offline(tmp_path: Path) -> None:
    out = io.StringIO()
    creds = tmp_path / "creds.json"
    assert main(["status", "--data-dir", str(tmp_path), "--credentials", str(creds)], out=out) == 0
    assert "not running" in out.getvalue()


def test_join_refuses_plain_http_to_another_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["join", "http://barn.example/p/digits", "--yes", "--data-dir", str(tmp_path)])
    assert code == 1
    assert "--insecure" in capsys.readouterr().err


def test_join_rejects_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "not a link", "--yes", "--data-dir", str(tmp_path)]) == 1
    assert "paste the project's page address" in capsys.readouterr().err


def test_the_engine_never_imports_torch_or_qt() -> None:
    code = (
        "import sys, app.cli, app.contributor.controller, app.contributor.control;"
        "bad = [m for m in ('torch', 'PySide6') if m in sys.modules];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_status_and_remote_commands_read_the_engines_snapshot(tmp_path: Path) -> None:
    import json

    from app.contributor import commands
    from app.contributor.control import ControlServer
    from app.contributor.controller import Controller, EngineOptions, EnginePaths
    from app.contributor.credentials import FileCredentialStore

    data = tmp_path / "data"
    engine = Controller(
        credentials=FileCredentialStore(tmp_path / "creds.json"),
        paths=EnginePaths(data),
        options=EngineOptions(start_trainer_eagerly=False),
    )
    server = ControlServer(EnginePaths(data).runtime_dir, commands.handler(engine))
    server.start()
    folders = ["--data-dir", str(data), "--credentials", str(tmp_path / "creds.json")]
    try:
        out = io.StringIO()
        assert main(["status", "--json", *folders], out=out) == 0
        assert json.loads(out.getvalue()) == json.loads(json.dumps(engine.snapshot()))
        out = io.StringIO()
        assert main(["pause", *folders], out=out) == 0
        lines = out.getvalue().splitlines()
        assert lines[0] == "state: stopped"
        assert lines[1].startswith("policy: Suspended: paused")
        assert lines[2].startswith("limits: ") and " core(s) at " in lines[2]
        out = io.StringIO()
        assert main(["snooze", "30m", *folders], out=out) == 0
        assert out.getvalue().startswith("snoozed until ")
    finally:
        server.close()
