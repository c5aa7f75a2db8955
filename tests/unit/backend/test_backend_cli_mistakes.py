"""Issue 16: a typo on the organiser's command line is refused at once, in one line that
names what is wrong and what to do (exit status 2, no traceback); it never breaks a project.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from backend.cli import main
from backend.cli_serve import DEFAULT_HOST, DEFAULT_PORT, configured_public_url
from backend.demo import DEMO_PORT_FILE, demo_port
from backend.demo_headless import HeadlessContributor
from backend.settings import ProjectSettings
from backend.wsgi import DEFAULT_PUBLIC_URL, bind_url

REPO = Path(__file__).resolve().parents[3]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, err: str, *words: str) -> bool:
    """Exit status 2 and one ``error:`` line naming every word (no traceback)."""
    lines = err.strip().splitlines()
    return (
        code == 2
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and "Traceback" not in err
        and all(w in err for w in words)
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coordinator folder with one invite-only project, ``club`` (made once: it takes a second)."""
    data = tmp_path_factory.mktemp("coordinator") / "d"
    argv = ["project", "create", "club", "--recipe", "digits-mlp", "--invite-required"]
    assert main([*argv, "--data", str(data), "num_shards=2", "hidden=8"]) == 0
    return data


# ---------------------------------------------------------------- 1. closed settings


@pytest.mark.parametrize(
    ("codec", "says"), [("int9", "'int8-block'"), ("topk:5", "(0, 1]"), ("", "'f16'")]
)
def test_a_codec_no_contributor_can_use_is_refused_at_creation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], codec: str, says: str
) -> None:
    data = str(tmp_path / "d")
    code, out, err = run(
        capsys, "project", "create", "x", "--recipe", "digits-mlp", "--codec", codec, "--data", data
    )
    assert refused(code, err, "codec", says) and out == ""
    code, _, err = run(capsys, "project", "list", "--data", data)
    assert code == 0 or "no coordinator data" in err  # nothing half-made


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--mode", "asynch", "sync or async"),
        ("--privacy", "dp", "dp-sgd"),
        ("--strategy", "fedavgg", "fedavg"),
        ("--recipe", "digits", "digits-mlp"),
    ],
)
def test_every_other_closed_setting_lists_its_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    argv = ["project", "create", "x", "--recipe", "digits-mlp", flag, value]
    code, _, err = run(capsys, *argv, "--data", str(tmp_path / "d"))
    assert refused(code, err, value, says)


def test_an_on_off_word_with_a_typo_is_not_read_as_off() -> None:
    with pytest.raises(ValueError, match="invite_required must be on or off"):
        ProjectSettings.from_dict({"invite_required": "ture"})
    with pytest.raises(ValueError, match="clients_per_round must be a int"):
        ProjectSettings.from_dict({"clients_per_round": "three"})
    assert ProjectSettings.from_dict({"invite_required": "Off"}).invite_required is False


# ---------------------------------------------------------------- 2-4. serve


def test_serve_on_a_port_in_use_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, _, err = run(capsys, "serve", "--data", str(tmp_path / "d"), "--port", port)
    assert refused(code, err, f"127.0.0.1:{port}", "in use", "--port")


@pytest.mark.parametrize(
    ("host", "says"),
    [("no-such-host.invalid", "does not resolve"), ("192.0.2.1", "not an address of this")],
)
def test_serve_on_an_unbindable_host_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, says: str
) -> None:
    argv = ["serve", "--data", str(tmp_path / "d"), "--host", host, "--port", "0"]
    code, _, err = run(capsys, *argv)
    assert refused(code, err, host, says, "--host 127.0.0.1")


def test_serve_with_data_pointing_at_a_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("not a coordinator")
    code, _, err = run(capsys, "serve", "--data", str(file), "--port", "0")
    assert refused(code, err, f"--data {file}", "is a file, not a folder")
    code, _, err = run(
        capsys, "project", "create", "x", "--recipe", "digits-mlp", "--data", str(file)
    )
    assert refused(code, err, "is a file, not a folder")


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key"])
def test_a_missing_tls_file_is_named_with_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    present = tmp_path / "present.pem"
    present.write_text("-----BEGIN CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    other = "--tls-key" if flag == "--tls-cert" else "--tls-cert"
    argv = ["serve", "--data", str(tmp_path / "d"), "--port", "0"]
    code, _, err = run(capsys, *argv, flag, str(missing), other, str(present))
    assert refused(code, err, f"{flag} {missing}", "no such file")
    assert not (tmp_path / "d").exists()  # refused before anything was opened


def test_a_missing_tls_file_from_the_config_names_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(f'tls_cert = "{tmp_path / "c.pem"}"\ntls_key = "{tmp_path / "k.pem"}"\n')
    code, _, err = run(capsys, "serve", "--data", str(tmp_path / "d"), "--config", str(config))
    assert refused(code, err, "tls_cert", str(config), "no such file")


def test_a_config_key_with_a_typo_is_refused_with_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('prot = 9000\npublic_url = "https://example.org"\n')
    code, _, err = run(capsys, "serve", "--data", str(tmp_path / "d"), "--config", str(config))
    assert refused(code, err, str(config), "unknown key(s) prot", "port", "public_url")
    config.write_text("port = [9000\n")
    code, _, err = run(capsys, "serve", "--data", str(tmp_path / "d"), "--config", str(config))
    assert refused(code, err, str(config), "not valid TOML")
    code, _, err = run(capsys, "serve", "--config", str(tmp_path / "nope.toml"))
    assert refused(code, err, "nope.toml", "no such file")


# ---------------------------------------------------------------- 5. a mistyped --data


@pytest.mark.parametrize(
    "argv",
    [
        ["project", "list"],
        ["project", "show", "club"],
        ["project", "pause", "club"],
        ["project", "close", "club"],
        ["invite", "create", "club"],
        ["verify", "--project", "club"],
        ["actions", "--project", "club"],
        ["ban", "--project", "club", "--client", "abcd", "--reason", "spam"],
        ["sample", "--project", "club"],
    ],
)
def test_commands_on_an_existing_coordinator_refuse_an_empty_folder(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    monkeypatch.delenv("BARNRAISE_DATABASE_URL", raising=False)
    typo = tmp_path / "coordinatr"
    code, _, err = run(capsys, *argv, "--data", str(typo))
    assert refused(code, err, str(typo), "no coordinator data", "check --data", "--database-url")
    assert not typo.exists()  # nothing was created


# ---------------------------------------------------------------- 6. invite links


def test_invite_links_use_the_address_serve_advertises(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No flag, no config: serve's own default address.
    assert configured_public_url({}) == bind_url(DEFAULT_HOST, DEFAULT_PORT) == DEFAULT_PUBLIC_URL
    code, out, _ = run(capsys, "invite", "create", "club", "--data", str(folder))
    assert code == 0 and all(DEFAULT_PUBLIC_URL in unquote_all(link) for link in out.split())
    # The config serve reads: its port, then its public_url.
    config = tmp_path / "serve.toml"
    config.write_text("port = 9123\n")
    code, out, _ = run(
        capsys, "invite", "create", "club", "--data", str(folder), "--config", str(config)
    )
    app_link, page_link = out.split()
    assert parse_qs(urlsplit(app_link).query)["url"] == ["http://127.0.0.1:9123/p/club"]
    assert page_link.startswith("http://127.0.0.1:9123/p/club?invite=")
    config.write_text('port = 9123\npublic_url = "https://club.example.org/fl/"\n')
    code, out, _ = run(
        capsys, "invite", "create", "club", "--data", str(folder), "--config", str(config)
    )
    assert out.split()[1].startswith("https://club.example.org/fl/p/club?invite=")
    code, out, _ = run(
        capsys, "invite", "create", "club", "--data", str(folder), "--public-url", "https://x.org"
    )
    assert out.split()[1].startswith("https://x.org/p/club?invite=")


def test_invite_for_a_missing_project_or_bad_url_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "invite", "create", "clubb", "--data", str(folder))
    assert refused(code, err, "no project 'clubb'")
    code, _, err = run(
        capsys, "invite", "create", "club", "--data", str(folder), "--public-url", "example.org"
    )
    assert refused(code, err, "example.org", "https://HOST")
    code, _, err = run(capsys, "invite", "create", "club", "--data", str(folder), "--uses", "0")
    assert refused(code, err, "--uses", "at least 1")


def unquote_all(link: str) -> str:
    from urllib.parse import unquote

    return unquote(link)


# ---------------------------------------------------------------- 10. next steps


def test_project_create_prints_the_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "d")
    code, out, err = run(
        capsys,
        "project",
        "create",
        "open-one",
        "--recipe",
        "digits-mlp",
        "--data",
        data,
        "num_shards=2",
    )
    assert code == 0 and out.lstrip().startswith("{")  # stdout stays the project's JSON
    assert "next steps" in err
    assert f"barnraise-backend serve --data {data}" in err
    assert f"{DEFAULT_PUBLIC_URL}/p/open-one" in err
    assert f"barnraise join {DEFAULT_PUBLIC_URL}/p/open-one" in err


# ---------------------------------------------------------------- 8. demo twice


def test_the_demo_takes_its_folders_port_again_when_free(tmp_path: Path) -> None:
    assert demo_port(tmp_path, 0) == 0  # a first run: any free port
    assert demo_port(tmp_path, 8765) == 8765  # asked for: that one
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        (tmp_path / DEMO_PORT_FILE).write_text(f"{port}\n")
        held.listen()
        assert demo_port(tmp_path, 0) == 0  # taken: any other (the contributors rejoin)
    assert demo_port(tmp_path, 0) == port


FAKE_BARNRAISE = """
import os, signal, sys, time
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:3]) + "\\n")
if sys.argv[1] == "join":
    open(os.environ["BARNRAISE_CREDENTIALS"], "w").write("{}")
elif sys.argv[1] == "--headless":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(30)
"""


def running(log: Path, before: int) -> None:
    """Wait until a new fake `barnraise --headless` has logged its start (then stop it)."""
    deadline = time.monotonic() + 20
    while not (
        len(lines := log.read_text().splitlines()) > before and lines[-1].startswith("--headless")
    ):
        assert time.monotonic() < deadline, "the fake contributor never started"
        time.sleep(0.02)


def test_demo_contributors_join_again_when_the_server_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "barnraise.py"
    script.write_text(FAKE_BARNRAISE)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    root = tmp_path / "contributors" / "c1"
    for url in ("http://127.0.0.1:1111/p/digits", "http://127.0.0.1:2222/p/digits") * 2:
        volunteer = HeadlessContributor([sys.executable, str(script)], root, url, "c1", None)
        before = len(log.read_text().splitlines()) if log.exists() else 0
        volunteer.start()
        running(log, before)
        volunteer.stop()
    calls = log.read_text().splitlines()
    assert calls == [
        "join http://127.0.0.1:1111/p/digits",
        "--headless --lease-wait",
        "leave http://127.0.0.1:1111/p/digits",
        "join http://127.0.0.1:2222/p/digits",
        "--headless --lease-wait",
        "leave http://127.0.0.1:2222/p/digits",
        "join http://127.0.0.1:1111/p/digits",
        "--headless --lease-wait",
        "leave http://127.0.0.1:1111/p/digits",
        "join http://127.0.0.1:2222/p/digits",
        "--headless --lease-wait",
    ]
    volunteer = HeadlessContributor(
        [sys.executable, str(script)], root, "http://127.0.0.1:2222/p/digits", "c1", None
    )
    volunteer.start()  # the same address: no new join
    running(log, len(calls))
    volunteer.stop()
    assert log.read_text().splitlines()[-1] == "--headless --lease-wait"
    assert len(log.read_text().splitlines()) == len(calls) + 1


# ---------------------------------------------------------------- 9. | head


def test_a_closed_pipe_ends_the_output_quietly(folder: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "project", "list", "--data", str(folder)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has read enough: every write is EPIPE
    started = time.monotonic()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and time.monotonic() - started < 60
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""
