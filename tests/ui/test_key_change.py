"""A project's coordinator signs with a new key (trust on first use): the tray stops the
project, shows both fingerprints, and pins the new key only when the volunteer says so.
Against the fake engine, then the real engine and coordinator on loopback."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.contributor.events import EngineState, StateChanged
from app.tray.engine_port import JoinedProject
from app.tray.status import KEY_CHANGED_WORDS, TrayLook

from .conftest import FINGERPRINT, NEW_FINGERPRINT
from .test_tray_menu import click_menu_item

MENU_ENTRY = f"digits: {KEY_CHANGED_WORDS.lower()}…"


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def joined(engine, tray_app, name: str = "digits") -> None:
    engine.projects[name] = JoinedProject(
        name=name,
        server_url="https://barn.example.org",
        page_url=f"https://barn.example.org/p/{name}",
    )
    tray_app.model.load(engine.snapshot())
    tray_app.refresh()


def row_state(tray_app, name: str = "digits") -> str:
    table = tray_app.dashboard.projects_table
    for row in range(table.rowCount()):
        if table.item(row, 0).text() == name:
            return table.item(row, 2).text()
    raise AssertionError(f"{name} is not in the table")


def key_dialog(qtbot, tray_app):
    qtbot.waitUntil(lambda: "digits" in tray_app.key_dialogs, timeout=3000)
    dialog = tray_app.key_dialogs["digits"]
    qtbot.waitUntil(dialog.isVisible)
    return dialog


def test_a_changed_key_shows_both_fingerprints_and_refusing_changes_nothing(
    qtbot, tray_app, engine
):
    joined(engine, tray_app)
    engine.change_key("digits")
    dialog = key_dialog(qtbot, tray_app)
    assert dialog.pinned_value.text() == FINGERPRINT
    assert dialog.new_value.text() == NEW_FINGERPRINT
    assert "refuses its tasks until you decide" in dialog.explanation.text()
    assert "barn.example.org" in dialog.explanation.text()
    # Accepting takes an explicit tick; Enter means "Keep refusing".
    assert not dialog.accept_button.isEnabled()
    assert dialog.refuse_button.isDefault() and not dialog.accept_button.isDefault()

    # Stopped, and said so everywhere until the volunteer decides.
    tray_app.dashboard.refresh()
    assert row_state(tray_app) == KEY_CHANGED_WORDS
    assert MENU_ENTRY in tray_app.menu_texts()
    assert tray_app.model.status_line() == f"digits: {KEY_CHANGED_WORDS.lower()}"
    assert tray_app.model.look is TrayLook.ERROR
    assert tray_app.notifier.shown[-1][0] == "Barnraise needs attention"

    click(qtbot, dialog.refuse_button)
    qtbot.waitUntil(lambda: "digits" not in tray_app.key_dialogs)
    assert engine.called("accept_new_key") == []
    assert row_state(tray_app) == KEY_CHANGED_WORDS and MENU_ENTRY in tray_app.menu_texts()

    # The same key reported again does not pop the dialog up again: it waits in the menu.
    read = engine.snapshots
    engine.change_key("digits")
    qtbot.waitUntil(lambda: engine.snapshots > read and tray_app.runner.running == 0)
    assert "digits" not in tray_app.key_dialogs


def test_enter_and_escape_never_trust_a_key(qtbot, tray_app, engine):
    joined(engine, tray_app)
    engine.change_key("digits")
    dialog = key_dialog(qtbot, tray_app)
    click(qtbot, dialog.confirm_box)  # even with the box ticked
    assert dialog.accept_button.isEnabled()
    qtbot.keyClick(dialog.confirm_box, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not dialog.isVisible())
    assert engine.called("accept_new_key") == []

    dialog = tray_app.review_key_change("digits")
    assert dialog is not None
    qtbot.waitUntil(dialog.isVisible)
    assert not dialog.confirm_box.isChecked()  # a fresh dialog asks afresh
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not dialog.isVisible())
    assert engine.called("accept_new_key") == []
    assert tray_app.model.projects["digits"].key_changed


def test_accept_the_new_key_from_the_menu_after_checking_it(qtbot, tray_app, engine):
    joined(engine, tray_app)
    engine.change_key("digits")
    click(qtbot, key_dialog(qtbot, tray_app).refuse_button)
    qtbot.waitUntil(lambda: "digits" not in tray_app.key_dialogs)

    click_menu_item(qtbot, tray_app.menu, MENU_ENTRY)
    dialog = key_dialog(qtbot, tray_app)
    click(qtbot, dialog.confirm_box)
    assert NEW_FINGERPRINT in dialog.confirm_box.text()
    click(qtbot, dialog.accept_button)
    qtbot.waitUntil(lambda: not dialog.isVisible())
    assert engine.called("accept_new_key") == [("digits", NEW_FINGERPRINT)]
    assert not tray_app.model.projects["digits"].key_changed
    assert MENU_ENTRY not in tray_app.menu_texts()
    assert row_state(tray_app) != KEY_CHANGED_WORDS
    assert "Trusted the new key of digits" in tray_app.dashboard.activity_log.toPlainText()
    # Working again: the engine's next state shows as usual.
    engine.publish_from_thread(
        StateChanged(state=EngineState.TRAINING, previous=EngineState.LEASING, project="digits")
    )
    qtbot.waitUntil(lambda: tray_app.model.status_line().startswith("Training"))


def test_the_window_offers_the_review_for_the_selected_project(qtbot, tray_app, engine):
    joined(engine, tray_app)
    board = tray_app.dashboard
    tray_app.show_dashboard()
    qtbot.waitUntil(board.isVisible)
    assert not board.review_key_button.isVisibleTo(board)
    engine.change_key("digits")
    click(qtbot, key_dialog(qtbot, tray_app).refuse_button)
    qtbot.waitUntil(lambda: board.review_key_button.isVisibleTo(board))
    click(qtbot, board.review_key_button)
    key_dialog(qtbot, tray_app)


def test_a_refused_acceptance_keeps_the_dialog_and_says_nothing_changed(qtbot, tray_app, engine):
    joined(engine, tray_app)
    engine.change_key("digits")
    dialog = key_dialog(qtbot, tray_app)
    engine.accept_error = ValueError("the project now signs with 1111:2222, not the one you saw")
    click(qtbot, dialog.confirm_box)
    click(qtbot, dialog.accept_button)
    qtbot.waitUntil(lambda: "Nothing was changed" in dialog.error_label.text())
    assert "1111:2222" in dialog.error_label.text()
    assert dialog.isVisible() and tray_app.model.projects["digits"].key_changed


def test_leave_from_the_key_dialog_asks_first(qtbot, tray_app, engine):
    joined(engine, tray_app)
    engine.change_key("digits")
    dialog = key_dialog(qtbot, tray_app)
    click(qtbot, dialog.leave_button)
    board = tray_app.dashboard
    qtbot.waitUntil(lambda: board.leave_box is not None and board.leave_box.isVisible())
    assert engine.called("leave") == []  # not before the confirmation
    assert board.leave_box.text() == "Leave digits?"
    leave = next(
        b
        for b in board.leave_box.buttons()
        if board.leave_box.buttonRole(b) == QMessageBox.ButtonRole.DestructiveRole
    )
    click(qtbot, leave)
    qtbot.waitUntil(lambda: engine.called("leave") == ["digits"])
    qtbot.waitUntil(lambda: "digits" not in tray_app.model.projects)


def test_a_closed_project_shows_as_closed_not_as_a_problem(qtbot, tray_app, engine):
    from app.contributor.events import Error

    joined(engine, tray_app)
    engine.publish_from_thread(
        StateChanged(state=EngineState.LEASING, previous=EngineState.WAITING, project="digits"),
        Error(
            message="digits is closed by its organiser; it no longer needs work from you",
            project="digits",
            code="project_closed",
        ),
        StateChanged(state=EngineState.BACKOFF, previous=EngineState.LEASING),
    )
    qtbot.waitUntil(lambda: tray_app.model.state is EngineState.BACKOFF)
    tray_app.dashboard.refresh()
    assert row_state(tray_app) == "Closed by its organiser"
    assert "digits: closed by its organiser" in tray_app.menu_texts()
    assert tray_app.model.status_line() == "Nothing to do: digits is closed"
    assert tray_app.model.look is TrayLook.IDLE  # not the error face
    assert tray_app.notifier.shown[-1][0] == "digits is closed"
    # The engine asks again, rarely: asking is not shown as work.
    engine.publish_from_thread(
        StateChanged(state=EngineState.LEASING, previous=EngineState.BACKOFF, project="digits")
    )
    qtbot.waitUntil(lambda: tray_app.model.state is EngineState.LEASING)
    tray_app.dashboard.refresh()
    assert row_state(tray_app) == "Closed by its organiser"
    # Reopened: a task arrives, the row follows the work again.
    engine.publish_from_thread(
        StateChanged(state=EngineState.DOWNLOADING, previous=EngineState.LEASING, project="digits")
    )
    qtbot.waitUntil(lambda: not tray_app.model.projects["digits"].closed)


def test_a_finished_project_thanks_the_volunteer(qtbot, tray_app, engine):
    from app.contributor.events import Error

    joined(engine, tray_app)
    engine.publish_from_thread(
        StateChanged(state=EngineState.LEASING, previous=EngineState.WAITING, project="digits"),
        Error(
            message="digits has finished training — thank you! Its model is final",
            project="digits",
            code="project_finished",
        ),
        StateChanged(state=EngineState.BACKOFF, previous=EngineState.LEASING),
    )
    qtbot.waitUntil(lambda: tray_app.model.state is EngineState.BACKOFF)
    tray_app.dashboard.refresh()
    assert row_state(tray_app) == "Finished — thank you"
    assert "digits: Finished — thank you" in tray_app.menu_texts()
    assert tray_app.model.status_line() == "Nothing to do: digits has finished — thank you"
    assert tray_app.model.look is TrayLook.IDLE  # not the error face
    assert tray_app.notifier.shown[-1][0] == "digits has finished"
    engine.projects["digits"] = dataclasses.replace(
        engine.projects["digits"], closed=True, finished=True
    )
    tray_app.model.load(engine.snapshot())  # after a restart: from the engine's snapshot
    tray_app.refresh()
    assert row_state(tray_app) == "Finished — thank you"


def test_a_closed_project_from_the_snapshot_shows_as_closed(qtbot, tray_app, engine):
    joined(engine, tray_app)
    engine.projects["digits"] = dataclasses.replace(engine.projects["digits"], closed=True)
    tray_app.model.load(engine.snapshot())
    tray_app.refresh()
    assert row_state(tray_app) == "Closed by its organiser"
    assert "digits: closed by its organiser" in tray_app.menu_texts()


# --- the real engine and coordinator --------------------------------------------------------
@pytest.mark.slow
def test_the_real_engine_refuses_a_changed_key_until_the_tray_accepts_it(
    qtbot, coordinator, config_dir, tmp_path, monkeypatch
):
    """As in tests/integration/contributor/test_engine_outcomes.py: the stored pin is made
    stale, so the coordinator's real key is the "new" one. The tray shows it, refuses by
    default, and after the volunteer accepts, the engine works for the project again."""
    from app.contributor.credentials import FileCredentialStore
    from app.contributor.sensors import FakeSensors
    from app.contributor.settings import default_settings, save_settings
    from app.tray.adapter import ControllerEngine
    from app.tray.tray import TrayApp
    from federated.signing import SigningKey, fingerprint

    monkeypatch.setenv("BARNRAISE_DATA_DIR", str(tmp_path / "data"))
    settings_file = config_dir / "settings.json"
    save_settings(
        default_settings().updated(
            {
                "idle_minutes_before_start": 0,
                "idle.cpu_cores": 1,
                "idle.cpu_percent": 100,
                "other_cpu_suspend_percent": 100,
                "other_cpu_resume_percent": 99,
            }
        ),
        settings_file,
    )
    credentials = tmp_path / "credentials.json"
    engine = ControllerEngine(settings_path=settings_file, credentials_file=credentials)
    engine.controller.set_sensors(
        FakeSensors(idle_seconds=1e6, on_battery=False, other_cpu_percent=0.0, cpu_count=2)
    )
    real = engine.controller.join(f"{coordinator}/p/digits", display_name="careful")
    store = FileCredentialStore(credentials)
    stale = SigningKey.generate().public_key_b64
    store.save(real.key, dataclasses.replace(real, project_public_key_b64=stale))

    app = TrayApp(engine, settings_path=settings_file, tray_available=True, gpus=[])
    qtbot.addWidget(app.dashboard)
    try:
        app.start()
        qtbot.waitUntil(lambda: "digits" in app.key_dialogs, timeout=90_000)
        dialog = app.key_dialogs["digits"]
        assert dialog.pinned_value.text() == fingerprint(stale)
        assert dialog.new_value.text() == fingerprint(real.project_public_key_b64)
        assert app.model.projects["digits"].shown_state == KEY_CHANGED_WORDS
        assert app.model.accepted_updates == 0  # refused: nothing trained for it

        click(qtbot, dialog.confirm_box)
        click(qtbot, dialog.accept_button)
        qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=10_000)
        assert dialog.error_label.text() in ("", "Pinning the new key…")
        pinned = json.loads(credentials.read_text())
        assert real.project_public_key_b64 in json.dumps(pinned) and stale not in json.dumps(pinned)
        kept = store.load(real.key)
        assert kept is not None and kept.client_id == real.client_id
        # The engine works for the project again: an update is trained and accepted.
        qtbot.waitUntil(lambda: app.model.accepted_updates >= 1, timeout=120_000)
        assert not app.model.projects["digits"].key_changed
    finally:
        app.shutdown()
