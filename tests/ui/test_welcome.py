"""The first start's welcome: what Barnraise does, the limits in force, where to change
them, how to join; shown once (marked in the config folder), again from the menu."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt

from app.contributor.events import EngineState
from app.contributor.settings import default_settings
from app.tray.engine_port import JoinedProject
from app.tray.join_dialog import JoinDialog
from app.tray.preferences import PreferencesDialog
from app.tray.welcome import INTRO, WELCOMED_FILENAME, limits_lines, was_welcomed

from .test_tray_menu import click_menu_item


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def start_tray(qtbot, engine, config_dir):
    from app.tray.tray import TrayApp

    app = TrayApp(engine, settings_path=config_dir / "settings.json", tray_available=True, gpus=[])
    qtbot.addWidget(app.dashboard)
    app.start()
    qtbot.waitUntil(
        lambda: engine.called("start") != [] and app.model.state is not EngineState.STOPPED
    )
    return app


def test_first_start_welcomes_with_the_limits_in_force(qtbot, engine, config_dir):
    app = start_tray(qtbot, engine, config_dir)
    try:
        welcome = app.welcome
        assert welcome is not None and welcome.isVisible()
        assert welcome.objectName() == "welcomeDialog"
        assert welcome.findChild(type(welcome.limits_label), "welcomeIntro").text() == INTRO
        shown = welcome.limits_text()
        defaults = default_settings()  # what a first start runs with
        for line in limits_lines(defaults):
            assert line in shown
        assert f"at most 1 CPU core at {defaults.in_use.cpu_percent} % of their time" in shown
        assert f"{defaults.idle.cpu_cores} CPU core" in shown and "no GPU" in shown
        assert "any hour of any day" in shown and "waits until you plug in" in shown
        assert f"for {defaults.idle_minutes_before_start} minutes" in shown
        assert not was_welcomed(config_dir)  # not until it is closed

        click(qtbot, welcome.close_button)
        qtbot.waitUntil(lambda: app.welcome is None)
        mark = config_dir / WELCOMED_FILENAME
        assert mark.exists() and os.stat(mark).st_mode & 0o077 == 0
    finally:
        app.shutdown()

    again = start_tray(qtbot, engine, config_dir)  # the next start: not again
    try:
        assert again.welcome is None
        click_menu_item(qtbot, again.menu, "Welcome…")  # but always from the menu
        qtbot.waitUntil(lambda: again.welcome is not None and again.welcome.isVisible())
    finally:
        again.shutdown()


def test_join_from_the_welcome_opens_the_join_dialog(qtbot, engine, config_dir):
    app = start_tray(qtbot, engine, config_dir)
    try:
        welcome = app.welcome
        assert welcome is not None and welcome.join_button.isDefault()
        click(qtbot, welcome.join_button)
        qtbot.waitUntil(lambda: isinstance(app.join_dialog, JoinDialog))
        assert app.join_dialog.isVisible() and not welcome.isVisible()
        assert was_welcomed(config_dir)
    finally:
        app.shutdown()


def test_preferences_from_the_welcome_and_the_limits_follow(qtbot, engine, config_dir):
    app = start_tray(qtbot, engine, config_dir)
    try:
        welcome = app.welcome
        assert welcome is not None
        click(qtbot, welcome.preferences_button)
        qtbot.waitUntil(lambda: isinstance(app.preferences, PreferencesDialog))
        app.apply_settings(app.settings.updated({"in_use.cpu_percent": 30}))
        assert "at most 1 CPU core at 30 % of their time" in welcome.limits_text()
    finally:
        app.shutdown()


def test_no_welcome_once_a_project_is_joined(qtbot, engine, config_dir):
    engine.projects["digits"] = JoinedProject(
        name="digits", server_url="https://barn.example.org", page_url="https://x/p/digits"
    )
    app = start_tray(qtbot, engine, config_dir)
    try:
        assert app.welcome is None
    finally:
        app.shutdown()
