"""The Join dialog, driven by keyboard and mouse: against a fake engine, and for real
against the coordinator (`barnraise-backend serve`) on a loopback port."""

from __future__ import annotations

import getpass
import json
import os
import re
from pathlib import Path

import pytest
import requests
from PySide6.QtCore import Qt

from app.tray.engine_port import ExistingIdentity
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


LOGIN = "zq-login-7731"  # a login name no text of the dialog could contain by chance


def everything_the_dialog_says(dialog: JoinDialog) -> str:
    """Every text and placeholder of every widget in the dialog, one string."""
    from PySide6.QtWidgets import QAbstractButton, QLabel, QLineEdit, QTextBrowser

    parts = [dialog.windowTitle()]
    for widget in dialog.findChildren(QLabel):
        parts.append(widget.text())
    for widget in dialog.findChildren(QLineEdit):
        parts += [widget.text(), widget.placeholderText()]
    for widget in dialog.findChildren(QAbstractButton):
        parts.append(widget.text())
    for widget in dialog.findChildren(QTextBrowser):
        parts.append(widget.toPlainText())
    return "\n".join(parts)


def test_the_login_name_is_never_the_default_name(qtbot, tray_app, engine, monkeypatch):
    # Whatever the dialog could ask the system for its user, it would get LOGIN.
    for name in ("USER", "LOGNAME", "USERNAME", "LNAME"):
        monkeypatch.setenv(name, LOGIN)
    monkeypatch.setattr("getpass.getuser", lambda: LOGIN)
    dialog = open_dialog(qtbot, tray_app)
    assert dialog.name_edit.text() == ""
    suggestion = dialog.name_edit.placeholderText()
    assert re.fullmatch(r"volunteer-[0-9a-f]{4}", suggestion)
    assert suggestion in dialog.name_hint.text() and "publicly" in dialog.name_hint.text()
    qtbot.keyClicks(dialog.url_edit, "https://barn.example.org/p/digits")
    assert dialog.next_button.isEnabled()  # no name typed: the suggestion will be used
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT)
    click(qtbot, dialog.next_button)
    consent = dialog.consent_view.toPlainText()
    assert f"the name {suggestion}, shown on the project's public leaderboard" in consent
    assert LOGIN not in everything_the_dialog_says(dialog)
    click(qtbot, dialog.consent_box)
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_DONE)
    assert engine.called("join")[0].display_name == suggestion  # exactly what was shown
    assert LOGIN not in everything_the_dialog_says(dialog)


def test_joining_again_says_so_and_keeps_the_identity(qtbot, tray_app, engine):
    engine.identities["digits"] = ExistingIdentity(
        client_id="c-5f1e9a", display_name="Ada", team="Lovelace Lab"
    )
    dialog = open_dialog(qtbot, tray_app)
    qtbot.keyClicks(dialog.url_edit, "https://barn.example.org/p/digits")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT)
    assert dialog.identity_note.isVisibleTo(dialog)
    assert dialog.identity_note.text().startswith(
        "You already joined digits here as Ada / client c-5f1e9a. Joining again keeps that "
        "identity and its credit; only the name and team are updated."
    )
    # Left empty, name and team stay what the leaderboard shows now (no silent rename).
    assert (dialog.name_edit.text(), dialog.team_edit.text()) == ("Ada", "Lovelace Lab")
    click(qtbot, dialog.back_button)
    dialog.name_edit.clear()
    qtbot.keyClicks(dialog.name_edit, "Ada L.")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT)
    assert dialog.name_edit.text() == "Ada L."  # what the volunteer typed wins
    click(qtbot, dialog.next_button)
    consent = dialog.consent_view.toPlainText()
    assert "Ada L. (team Lovelace Lab), in place of Ada" in consent
    assert "already uses in this project (client c-5f1e9a)" in consent
    assert "created now" not in consent
    click(qtbot, dialog.consent_box)
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_DONE)
    request = engine.called("join")[0]
    assert (request.display_name, request.team) == ("Ada L.", "Lovelace Lab")
    assert dialog.done_heading.text() == "You rejoined digits"
    assert "client c-5f1e9a" in dialog.done_label.text()


def test_a_first_join_says_nothing_about_an_identity(qtbot, tray_app, engine):
    dialog = open_dialog(qtbot, tray_app)
    qtbot.keyClicks(dialog.url_edit, "https://barn.example.org/p/digits")
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT)
    assert engine.called("existing_identity") == ["digits"]
    assert not dialog.identity_note.isVisibleTo(dialog)
    click(qtbot, dialog.next_button)
    assert "a public key created now" in dialog.consent_view.toPlainText()


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


# --- the real coordinator on loopback (the `coordinator` fixture is in conftest.py) -----
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
        me = _client_row(coordinator, _client_id(credentials))
        assert me["display_name"] == dialog.suggested_name  # what the consent page showed
        assert me["display_name"] != getpass.getuser()
    finally:
        app.shutdown()


def _client_id(credentials: Path) -> str:
    from app.contributor.credentials import FileCredentialStore

    store = FileCredentialStore(credentials)
    (ref,) = store.list_projects()
    creds = store.load(ref.key)
    assert creds is not None
    return creds.client_id


def _leaderboard(coordinator: str) -> list[dict]:
    board = requests.get(f"{coordinator}/api/v1/projects/digits/leaderboard", timeout=5)
    assert board.ok, board.text
    return board.json()["contributors"]


def _client_row(coordinator: str, client_id: str) -> dict:
    rows = [r for r in _leaderboard(coordinator) if r["client_id"] == client_id]
    assert len(rows) == 1, rows
    return rows[0]


def _join_through_the_dialog(qtbot, app, url: str, name: str | None) -> JoinDialog:
    dialog = app.open_join()
    qtbot.keyClicks(dialog.url_edit, url)
    if name is not None:
        dialog.name_edit.clear()
        qtbot.keyClicks(dialog.name_edit, name)
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(lambda: dialog.page == PAGE_PROJECT, timeout=10_000)
    return dialog


def _consent_and_join(qtbot, dialog: JoinDialog) -> None:
    click(qtbot, dialog.next_button)
    click(qtbot, dialog.consent_box)
    click(qtbot, dialog.next_button)
    qtbot.waitUntil(
        lambda: dialog.page == PAGE_DONE or bool(dialog.join_error.text()), timeout=15_000
    )
    assert dialog.page == PAGE_DONE, dialog.join_error.text()
    click(qtbot, dialog.next_button)  # Close
    qtbot.waitUntil(lambda: not dialog.isVisible())


@pytest.mark.slow
def test_joining_twice_keeps_one_identity_on_a_real_coordinator(
    qtbot, coordinator, config_dir, tmp_path, monkeypatch
):
    """The second join through the dialog says so, and the coordinator still has one
    client for this computer: the same id, renamed."""
    from app.tray.adapter import ControllerEngine
    from app.tray.tray import TrayApp

    monkeypatch.setenv("BARNRAISE_DATA_DIR", str(tmp_path / "data"))
    credentials = tmp_path / "credentials.json"
    engine = ControllerEngine(
        settings_path=config_dir / "settings.json", credentials_file=credentials
    )
    app = TrayApp(engine, settings_path=config_dir / "settings.json", tray_available=True, gpus=[])
    qtbot.addWidget(app.dashboard)
    url = f"{coordinator}/p/digits"
    try:
        before = len(_leaderboard(coordinator))
        first = _join_through_the_dialog(qtbot, app, url, "Grace")
        assert not first.identity_note.isVisibleTo(first)
        _consent_and_join(qtbot, first)
        client_id = _client_id(credentials)
        assert _client_row(coordinator, client_id)["display_name"] == "Grace"

        second = _join_through_the_dialog(qtbot, app, url, None)
        assert second.identity_note.isVisibleTo(second)
        assert second.identity_note.text().startswith(
            f"You already joined digits here as Grace / client {client_id}. Joining again "
            "keeps that identity and its credit"
        )
        assert second.name_edit.text() == "Grace"  # from the coordinator, not a new default
        click(qtbot, second.back_button)
        second.name_edit.clear()
        qtbot.keyClicks(second.name_edit, "Grace H.")
        click(qtbot, second.next_button)
        qtbot.waitUntil(lambda: second.page == PAGE_PROJECT, timeout=10_000)
        _consent_and_join(qtbot, second)

        assert _client_id(credentials) == client_id
        assert len(_leaderboard(coordinator)) == before + 1, "one identity, not two"
        assert _client_row(coordinator, client_id)["display_name"] == "Grace H."
    finally:
        app.shutdown()


def test_the_consent_names_the_privacy_terms_before_the_volunteer_agrees() -> None:
    from app.contributor.invites import parse_join_target
    from app.tray.engine_port import ProjectPreview
    from app.tray.join_texts import consent_text

    terms = {
        "mechanism": "dp-sgd",
        "epsilon": 4.0,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "clip_quantile": 0.0,
    }
    target = parse_join_target("https://barn.example/p/clinic")
    view = {"name": "clinic", "recipe": "tabular-csv", "data_mode": "local", "privacy": terms}
    private = consent_text(
        ProjectPreview.from_project_view(target, view), "Ada", None, Path("/data/x.csv")
    )
    plain = consent_text(
        ProjectPreview.from_project_view(target, {**view, "privacy": None}),
        "Ada",
        None,
        Path("/data/x.csv"),
    )
    assert "record-level DP-SGD (epsilon 4.0, delta 1e-05" in private
    assert "no loss computed on your data" in private and "loss" not in plain.split("never")[1]
    assert "Privacy:" not in plain and "training metrics (loss" in plain
