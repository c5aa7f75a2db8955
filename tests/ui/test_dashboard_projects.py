"""The Dashboard's per-project controls: share and state in the table, suspend/resume, no
new tasks, finish then stop, and the share dialog (the engine's side: the real tests in
tests/integration/contributor/test_engine_shares.py)."""

from __future__ import annotations

from PySide6.QtWidgets import QApplication, QMenu

from app.tray.dashboard_projects import (
    ALLOW_NEW_TASKS_TEXT,
    COLUMNS,
    FINISH_THEN_STOP_TEXT,
    NO_NEW_TASKS_TEXT,
    RESUME_TEXT,
    SHARE_COLUMN,
    SHARE_TEXT,
    SUSPEND_TEXT,
)
from app.tray.engine_port import JoinedProject
from tests.ui.test_accessible_names import unnamed_controls


def _join(engine, tray_app, name="digits", **fields):
    engine.projects[name] = JoinedProject(
        name=name,
        server_url="http://127.0.0.1:8000",
        page_url=f"http://127.0.0.1:8000/p/{name}",
        **fields,
    )
    tray_app.model.load(engine.snapshot())
    tray_app.refresh()


def _row(board, name):
    table = board.projects_table
    for row in range(table.rowCount()):
        if table.item(row, 0).text() == name:
            return {COLUMNS[c]: table.item(row, c).text() for c in range(table.columnCount())}
    raise AssertionError(f"no row for {name}")


def _actions(board, name):
    """Each action of the project's menu: enabled or not."""
    menu = board.project_menu(name)
    try:
        return {a.text(): a.isEnabled() for a in menu.actions() if a.text()}
    finally:
        menu.close()


def _choose(qtbot, board, name, text):
    menu = board.project_menu(name)
    (action,) = [a for a in menu.actions() if a.text() == text]
    assert action.isEnabled(), text
    action.trigger()
    menu.close()


def test_the_table_shows_each_projects_share_and_state(qtbot, tray_app, engine):
    _join(engine, tray_app, "digits", share=300, mode="no_new_tasks", state="training")
    _join(engine, tray_app, "other", mode="suspended")
    _join(engine, tray_app, "third")
    board = tray_app.dashboard
    assert COLUMNS[SHARE_COLUMN] == "Share"
    assert _row(board, "digits")["Share"] == "300"
    assert _row(board, "digits")["State"] == "Training · no new tasks"
    assert _row(board, "other")["State"] == "Suspended by you"
    assert _row(board, "other")["Share"] == "100"
    assert _row(board, "third")["State"] == "Waiting"


def test_suspend_resume_no_new_tasks_and_finish_then_stop_reach_the_engine(qtbot, tray_app, engine):
    _join(engine, tray_app)
    board = tray_app.dashboard
    calls = engine.called

    _choose(qtbot, board, "digits", SUSPEND_TEXT)
    qtbot.waitUntil(lambda: _row(board, "digits")["State"] == "Suspended by you")
    assert calls("set_project_mode") == [("digits", "suspended")]
    actions = _actions(board, "digits")
    assert RESUME_TEXT in actions and SUSPEND_TEXT not in actions
    assert not actions[NO_NEW_TASKS_TEXT] and not actions[FINISH_THEN_STOP_TEXT]

    _choose(qtbot, board, "digits", RESUME_TEXT)
    qtbot.waitUntil(lambda: _row(board, "digits")["State"] == "Waiting")
    _choose(qtbot, board, "digits", NO_NEW_TASKS_TEXT)
    qtbot.waitUntil(lambda: "no new tasks" in _row(board, "digits")["State"])
    assert ALLOW_NEW_TASKS_TEXT in _actions(board, "digits")
    _choose(qtbot, board, "digits", FINISH_THEN_STOP_TEXT)
    qtbot.waitUntil(lambda: "then suspended" in _row(board, "digits")["State"])
    assert calls("set_project_mode") == [
        ("digits", "suspended"),
        ("digits", "active"),
        ("digits", "no_new_tasks"),
        ("digits", "finish_then_stop"),
    ]
    qtbot.waitUntil(lambda: "digits: share 100, no new tasks" in board.activity_log.toPlainText())


def test_the_share_dialog_sets_the_share(qtbot, tray_app, engine):
    _join(engine, tray_app, share=150)
    board = tray_app.dashboard
    _choose(qtbot, board, "digits", SHARE_TEXT)
    dialog = board.project_actions.share_dialog
    assert dialog is not None
    qtbot.waitUntil(dialog.isVisible)
    assert dialog.spin.value() == 150
    assert dialog.spin.minimum() == 1 and dialog.spin.maximum() == 10000
    assert unnamed_controls(dialog) == []
    dialog.spin.setValue(250)
    dialog.accept()
    qtbot.waitUntil(lambda: _row(board, "digits")["Share"] == "250")
    assert engine.called("set_project_share") == [("digits", 250)]
    assert board.project_actions.share_dialog is None


def test_the_project_button_and_the_rows_context_menu_offer_the_actions(qtbot, tray_app, engine):
    _join(engine, tray_app)
    board = tray_app.dashboard
    tray_app.show_dashboard()
    qtbot.waitUntil(board.isVisible)
    button = board.project_button
    assert button.isEnabled() and button.accessibleName() == "Project actions"
    button.menu().aboutToShow.emit()
    texts = [a.text() for a in button.menu().actions() if a.text()]
    assert texts == [SUSPEND_TEXT, NO_NEW_TASKS_TEXT, FINISH_THEN_STOP_TEXT, SHARE_TEXT]

    table = board.projects_table
    at = table.visualItemRect(table.item(0, 0)).center()
    table.customContextMenuRequested.emit(at)
    menus = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMenu)]
    shown = [m for m in menus if m.objectName() == "projectMenu" and m.isVisible()]
    assert len(shown) == 1
    assert [a.text() for a in shown[0].actions() if a.text()] == texts
    shown[0].close()


def test_the_table_shows_the_energy_this_computer_gave_each_project(qtbot, tray_app, engine):
    _join(engine, tray_app, "digits", energy_joules=10_800.0, energy_measured_joules=0.0)
    _join(engine, tray_app, "other", energy_joules=9e6, energy_measured_joules=3.6e6)
    _join(engine, tray_app, "third")
    board = tray_app.dashboard
    assert _row(board, "digits")["Energy given"] == "3 Wh (estimated)"
    assert _row(board, "other")["Energy given"] == "2.50 kWh (40% measured)"
    assert _row(board, "third")["Energy given"] == "none reported"
