"""The tray icon and its menu: state → icon/tooltip/menu, and pause/snooze from the menu."""

from __future__ import annotations

import threading
import time

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

from app.contributor.events import EngineState, Error, PolicyChanged, Progress, StateChanged
from app.tray.status import TrayLook


def click_menu_item(qtbot, menu: QMenu, text: str) -> None:
    """Open ``menu`` and click the entry labelled ``text``, as a person would."""
    menu.popup(QPoint(10, 10))
    qtbot.waitUntil(menu.isVisible)
    action = next(a for a in menu.actions() if a.text() == text)
    qtbot.mouseClick(menu, Qt.MouseButton.LeftButton, pos=menu.actionGeometry(action).center())


def test_menu_lists_everything_a_volunteer_needs(tray_app):
    assert tray_app.menu_texts() == [
        "Idle — no project joined",
        "Pause",
        "Snooze",
        "Open Barnraise",
        "Join project…",
        "Leaderboard",
        "Preferences…",
        "Welcome…",
        "Quit Barnraise",
    ]
    status = tray_app.menu.actions()[0]
    assert not status.isEnabled()  # a status line, not a command
    leaderboard = next(a for a in tray_app.menu.actions() if a.text() == "Leaderboard")
    assert not leaderboard.isEnabled()  # nothing to show before joining


def test_pause_from_the_tray_menu_then_resume(qtbot, tray_app, engine):
    click_menu_item(qtbot, tray_app.menu, "Pause")
    qtbot.waitUntil(lambda: engine.called("pause") == [None])
    qtbot.waitUntil(lambda: tray_app.model.look is TrayLook.PAUSED)
    assert "Resume" in tray_app.menu_texts()
    assert tray_app.tray.toolTip().startswith("Barnraise — Paused")
    assert tray_app.dashboard.pause_button.text() == "Resume"

    click_menu_item(qtbot, tray_app.menu, "Resume")
    qtbot.waitUntil(lambda: engine.called("resume") == [None])
    qtbot.waitUntil(lambda: "Pause" in tray_app.menu_texts())
    # Commands ran on the tray's engine thread, never on the GUI thread.
    assert engine.threads and all(
        name.startswith(("tray-engine", "fake-engine")) for name in engine.threads
    )


def test_snooze_one_hour_from_the_submenu(qtbot, tray_app, engine):
    snooze_menu = next(a.menu() for a in tray_app.menu.actions() if a.text() == "Snooze")
    before = time.time()
    click_menu_item(qtbot, snooze_menu, "For 1 hour")
    qtbot.waitUntil(lambda: len(engine.called("snooze")) == 1)
    until = engine.called("snooze")[0]
    assert before + 3600 - 1 <= until <= time.time() + 3600 + 1
    qtbot.waitUntil(lambda: tray_app.model.look is TrayLook.PAUSED)
    assert tray_app.model.status_line().startswith("Snoozed until")
    assert "Resume" in tray_app.menu_texts()


def test_snooze_until_tomorrow_is_tomorrow_morning(qtbot, tray_app, engine):
    from datetime import datetime

    snooze_menu = next(a.menu() for a in tray_app.menu.actions() if a.text() == "Snooze")
    click_menu_item(qtbot, snooze_menu, "Until tomorrow 07:00")
    qtbot.waitUntil(lambda: len(engine.called("snooze")) == 1)
    end = datetime.fromtimestamp(engine.called("snooze")[0])
    assert (end.date() - datetime.now().date()).days == 1 and (end.hour, end.minute) == (7, 0)


def test_icon_and_tooltip_follow_engine_events_from_another_thread(qtbot, tray_app, engine):
    main_thread = threading.current_thread()
    seen_on: list[threading.Thread] = []
    tray_app.bridge.state_changed.connect(lambda _e: seen_on.append(threading.current_thread()))
    engine.publish_from_thread(
        StateChanged(
            state=EngineState.TRAINING, previous=EngineState.WAITING, project="digits", task_id="t1"
        ),
        Progress(
            project="digits",
            task_id="t1",
            step=30,
            total_steps=120,
            examples=480,
            loss=0.731,
            examples_per_second=950.0,
        ),
    )
    qtbot.waitUntil(lambda: tray_app.model.progress is not None)
    assert seen_on == [main_thread]  # the bridge delivered on the GUI thread
    assert tray_app.model.look is TrayLook.TRAINING
    tip = tray_app.tray.toolTip()
    assert "Training — 25%" in tip and "Project: digits" in tip and "step 30/120" in tip
    assert tray_app.menu.actions()[0].text() == "Training — 25%"

    engine.publish_from_thread(
        PolicyChanged(action="throttle", reasons=("user active",), profile="in_use")
    )
    qtbot.waitUntil(lambda: tray_app.model.look is TrayLook.THROTTLED)

    engine.publish_from_thread(
        Error(message="the coordinator refused the update; it will retry", code="rejected")
    )
    qtbot.waitUntil(lambda: tray_app.model.look is TrayLook.ERROR)
    assert "Problem: the coordinator refused" in tray_app.tray.toolTip()
    assert tray_app.notifier.shown[-1][0] == "Barnraise needs attention"


def test_every_look_has_an_icon():
    from app.tray.icons import tray_icon

    for look in TrayLook:
        icon = tray_icon(look)
        assert not icon.isNull()
        assert 22 in [s.width() for s in icon.availableSizes()]


def test_leaderboard_opens_the_project_page(qtbot, tray_app, engine, monkeypatch):
    from app.tray.engine_port import JoinedProject

    opened: list[str] = []
    monkeypatch.setattr(tray_app, "open_url", opened.append)
    engine.projects["digits"] = JoinedProject(
        name="digits", server_url="http://127.0.0.1:8000", page_url="http://127.0.0.1:8000/p/digits"
    )
    tray_app.model.load(engine.snapshot())
    tray_app.build_tray_menu()
    click_menu_item(qtbot, tray_app.menu, "Leaderboard")
    assert opened == ["http://127.0.0.1:8000/p/digits"]


def test_quit_stops_the_engine_once(qtbot, tray_app, engine):
    tray_app.shutdown()
    tray_app.shutdown()
    assert engine.called("stop") == [None]


def test_open_from_menu_shows_the_dashboard(qtbot, tray_app):
    click_menu_item(qtbot, tray_app.menu, "Open Barnraise")
    qtbot.waitUntil(tray_app.dashboard.isVisible)


def test_menu_action_objects_are_rebuilt_not_leaked(tray_app):
    for _ in range(20):
        tray_app.build_tray_menu()
    assert len([a for a in tray_app.menu.findChildren(QAction)]) < 40


def test_offline_shows_cant_reach_the_server_and_retry_now(qtbot, tray_app, engine):
    engine.publish_from_thread(
        StateChanged(state=EngineState.OFFLINE, previous=EngineState.LEASING, project="digits"),
        Error(message="can't reach the server of digits; retrying in 8s", code="unavailable"),
    )
    qtbot.waitUntil(lambda: "Retry now" in tray_app.menu_texts())
    assert tray_app.menu_texts()[:2] == ["Can't reach the server", "Retry now"]
    assert "Asking for work" not in tray_app.tray.toolTip()
    assert tray_app.tray.toolTip().startswith("Barnraise — Can't reach the server")

    click_menu_item(qtbot, tray_app.menu, "Retry now")
    qtbot.waitUntil(lambda: engine.called("retry_now") == [None])
    # The fake engine goes back to asking for work: the action goes with the state.
    qtbot.waitUntil(lambda: "Retry now" not in tray_app.menu_texts())
    assert tray_app.menu_texts()[0] == "Asking for work"
