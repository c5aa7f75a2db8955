"""Issue 16: every link `barnraise-backend invite create` prints is one `barnraise join`
accepts, end to end (a real coordinator folder, served on loopback), and `barnraise | head`
ends quietly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.cli import main as barnraise
from app.cli import tray_arguments
from app.contributor.invites import parse_join_target
from app.contributor.paths import DATA_DIR_ENV
from app.contributor.settings import CONFIG_DIR_ENV
from backend.cli import main as backend
from backend.server import bound_port, make_server, start_in_thread
from backend.wsgi import create_app

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(data folder, public URL) of a coordinator with the invite-only project ``club``."""
    data = tmp_path_factory.mktemp("coordinator") / "d"
    create = ["project", "create", "club", "--recipe", "digits-mlp", "--invite-required"]
    assert backend([*create, "--data", str(data), "num_shards=2", "hidden=8"]) == 0
    app = create_app(data, rate=None)
    server = make_server(app, "127.0.0.1", 0)
    start_in_thread(server)
    app.public_url = f"http://127.0.0.1:{bound_port(server)}"
    try:
        yield data, app.public_url
    finally:
        server.stop()
        app.close()


def invite_links(capsys: pytest.CaptureFixture[str], data: Path, url: str) -> list[str]:
    capsys.readouterr()
    code = backend(["invite", "create", "club", "--data", str(data), "--public-url", url])
    out, err = capsys.readouterr()
    assert code == 0 and "barnraise join 'LINK'" in err
    return out.split()


def test_both_printed_links_parse_to_the_project_and_its_invite(
    served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, url = served
    app_link, page_link = invite_links(capsys, data, url)
    code = page_link.rpartition("invite=")[2]
    for link in (app_link, page_link):
        target = parse_join_target(link)
        assert (target.server_url, target.project, target.invite) == (url, "club", code)
    assert requests.get(page_link, timeout=10).status_code == 200  # the page link opens


def test_barnraise_join_takes_the_app_link_it_is_given(
    served: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, url = served
    app_link, _ = invite_links(capsys, data, url)
    argv = ["join", app_link, "--yes", "--name", "ada"]
    assert tray_arguments(argv) is None  # the link is join's argument, not a tray launch
    assert tray_arguments([app_link]) == ["--join", app_link]  # a clicked link still is
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    creds = ["--credentials", str(tmp_path / "credentials.json")]
    assert barnraise([*argv, *creds]) == 0
    out, err = capsys.readouterr()
    assert f"joined club at {url} as 'ada'" in out and "Traceback" not in err
    # The invite was used up (--uses 1): a second machine is told so, in one line.
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data2"))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config2"))
    creds = ["--credentials", str(tmp_path / "credentials2.json")]
    assert barnraise([*argv, *creds]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("barnraise: ") and "Traceback" not in err


def test_a_closed_pipe_ends_barnraise_quietly(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        DATA_DIR_ENV: str(tmp_path / "data"),
        CONFIG_DIR_ENV: str(tmp_path / "config"),
        "BARNRAISE_CREDENTIALS": str(tmp_path / "credentials.json"),
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "status"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has read enough: every write is EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
