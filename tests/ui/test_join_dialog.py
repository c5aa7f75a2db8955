"""The Join dialog, driven by keyboard and mouse: against a fake engine, and for real
against the coordinator (`barnraise-backend serve`) on a loopback port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PySide6.QtCore import Qt

from app.tray.join_dialog import PAGE_CONSENT, PAGE_DONE, PAGE_PASTE, PAGE_PROJECT, JoinDialog

from .conftest import FINGERPRINT


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def open_dialog(qtbot, tray_app) -> JoinDialog:
    dialog = tray_app.open_join()
    qtbot.waitUntil(dialog.isVisible)
    return dialog


def test_bad_address_says_what_to_paste(qtbot, tray_app, engine):
    dialog = open_dialog(qtbot, tray_app)
    qtbot.keyClicks(dialog.url_edit, "example.org/digits")
    click(qtbot, dialog.next_button)
    assert dialog.page == PAGE_PASTE
    assert "paste the project's page address" in dialog.paste_error.text()
    assert engine.called("preview") == []


def test_join_builtin_project_with_explicit_consent(qtbot, tray_app, engine):
    dialog = open_dialog(qtbot, tray_app)
    dialog.name_edit.clear()
    qtbot.keyClicks(dialog.name_edit, "Ada")
    qtbot.keyClicks(dialog.team_edit, "Lovelace Lab")
    qtbot.keyClicks(dialog.url_edit, "https://barn.example.org/p/digits?invite=abc123")
    qtbot.keyClick(dialog.url_edit, Qt.Key.Key_Return)  # Enter = the default button
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT, timeout=3000)
    assert dialog.fingerprint_value.text() == FINGERPRINT
    assert dialog.recipe_value.text() == "digits-mlp"
    assert "public data shard" in dialog.data_mode_value.text()
    assert not dialog.data_box.isVisibleTo(dialog)
    target = engine.called("preview")[0]
    assert (target.server_url, target.project, target.invite) == (
        "https://barn.example.org",
        "digits",
        "abc123",
    )

    click(qtbot, dialog.next_button)
    assert dialog.page == PAGE_CONSENT
    text = dialog.consent_view.toPlainText()
    assert "barn.example.org" in text and "Ada (team Lovelace Lab)" in text
    assert "model update" in text and "never sends" in text
    assert not dialog.next_button.isEnabled()  # no consent, no join
    click(qtbot, dialog.consent_box)
    assert dialog.next_button.isEnabled()
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_DONE)
    request = engine.called("join")[0]
    assert request.consented and request.display_name == "Ada" and request.team == "Lovelace Lab"
    qtbot.waitUntil(lambda: "digits" in tray_app.model.projects)
    assert tray_app.notifier.shown[0][0] == "Joined digits"
    click(qtbot, dialog.next_button)  # Close
    qtbot.waitUntil(lambda: not dialog.isVisible())


def test_back_goes_back(qtbot, tray_app, engine):
    dialog = open_dialog(qtbot, tray_app)
    qtbot.keyClicks(dialog.url_edit, "https://barn.example.org/p/digits")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT)
    click(qtbot, dialog.back_button)
    assert dialog.page == PAGE_PASTE and dialog.url_edit.text().endswith("/p/digits")


def test_unreachable_coordinator_is_reported_and_nothing_changes(qtbot, tray_app, engine):
    engine.preview_error = ConnectionError(
        "the coordinator at https://barn.example.org did not answer; check the address"
    )
    dialog = open_dialog(qtbot, tray_app)
    qtbot.keyClicks(dialog.url_edit, "https://barn.example.org/p/digits")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: "Could not look up" in dialog.paste_error.text())
    assert dialog.page == PAGE_PASTE and dialog.next_button.isEnabled()


def test_local_data_project_validates_the_csv_before_joining(qtbot, tray_app, engine, tmp_path):
    engine.data_mode = "local"
    bad = tmp_path / "bad.csv"
    bad.write_text("age,bp,label\n41,120,1\n52,high,0\n")
    good = tmp_path / "good.csv"
    good.write_text("age,bp,label\n41,120,1\n52,135,0\n")
    dialog = open_dialog(qtbot, tray_app)
    qtbot.keyClicks(dialog.url_edit, "https://clinic.example.org/p/intake")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT)
    assert dialog.data_box.isVisibleTo(dialog)
    assert "stays on this computer" in dialog.data_mode_value.text()
    assert not dialog.next_button.isEnabled()  # no data chosen yet

    qtbot.keyClicks(dialog.data_edit, str(bad))
    click(qtbot, dialog.check_button)
    qtbot.waitUntil(lambda: "not a number" in dialog.data_status.text())
    assert "line 3" in dialog.data_status.text() and "'bp'" in dialog.data_status.text()
    assert not dialog.next_button.isEnabled()

    dialog.data_edit.clear()
    qtbot.keyClicks(dialog.data_edit, str(good))
    click(qtbot, dialog.check_button)
    qtbot.waitUntil(lambda: dialog.data_status.text().startswith("✓ 2 rows"))
    assert dialog.next_button.isEnabled()
    click(qtbot, dialog.next_button)
    assert str(good) in dialog.consent_view.toPlainText()
    assert "never uploaded" in dialog.consent_view.toPlainText()
    click(qtbot, dialog.consent_box)
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_DONE)
    assert engine.called("join")[0].data_path == good


def test_second_launch_hands_its_invite_to_the_open_dialog(qtbot, tray_app):
    tray_app.handle_request(
        {"command": "join", "url": "https://barn.example.org/p/digits?invite=xyz"}
    )
    dialog = tray_app.join_dialog
    assert dialog is not None
    qtbot.waitUntil(dialog.isVisible)
    assert dialog.url_edit.text() == "https://barn.example.org/p/digits?invite=xyz"


# --- the real coordinator on loopback -------------------------------------------------------
BACKEND = shutil.which("barnraise-backend", path=str(Path(sys.executable).parent)) or shutil.which(
    "barnraise-backend"
)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    if BACKEND is None:
        pytest.skip("barnraise-backend is not installed (pip install -e '.[backend]')")
    from backend.testing import free_port

    data = tmp_path_factory.mktemp("coordinator")
    subprocess.run(
        [
            BACKEND,
            "project",
            "create",
            "digits",
            "--recipe",
            "digits-mlp",
            "--strategy",
            "fedavg",
            "--data",
            str(data),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [BACKEND, "serve", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/v1/projects/digits", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail(
            f"the coordinator did not answer on {url}: {server.stdout.read() if server.stdout else ''}"
        )
    yield url
    server.terminate()
    server.wait(10)


@pytest.mark.slow
def test_join_a_real_coordinator_on_loopback(qtbot, coordinator, config_dir, tmp_path, monkeypatch):
    """The real engine (ControllerEngine over the Controller) and the real coordinator."""
    from app.tray.adapter import ControllerEngine
    from app.tray.tray import TrayApp

    monkeypatch.setenv("BARNRAISE_DATA_DIR", str(tmp_path / "data"))
    credentials = tmp_path / "credentials.json"
    engine = ControllerEngine(
        settings_path=config_dir / "settings.json", credentials_file=credentials
    )
    app = TrayApp(engine, settings_path=config_dir / "settings.json", tray_available=True, gpus=[])
    qtbot.addWidget(app.dashboard)  # not started: joining needs no trainer
    try:
        dialog = app.open_join()
        qtbot.keyClicks(dialog.url_edit, f"{coordinator}/p/digits")
        click(qtbot, dialog.next_button)
        qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT, timeout=10_000)
        expected = requests.get(f"{coordinator}/api/v1/projects/digits", timeout=5).json()
        assert dialog.fingerprint_value.text() == expected["key_fingerprint"]
        assert dialog.recipe_value.text() == "digits-mlp"
        click(qtbot, dialog.next_button)
        click(qtbot, dialog.consent_box)
        click(qtbot, dialog.next_button)
        qtbot.waitUntil(
            lambda: dialog.page == PAGE_DONE or bool(dialog.join_error.text()), timeout=15_000
        )
        assert dialog.page == PAGE_DONE, dialog.join_error.text()
        stored = json.loads(credentials.read_text())
        assert "digits" in json.dumps(stored)
        assert os.stat(credentials).st_mode & 0o077 == 0
        qtbot.waitUntil(lambda: "digits" in app.model.projects, timeout=5000)
        board = requests.get(f"{coordinator}/api/v1/projects/digits/leaderboard", timeout=5)
        assert board.ok
    finally:
        app.shutdown()
