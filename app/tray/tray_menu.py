"""The tray menu, rebuilt from the status model (the one place the menu is made)."""

from __future__ import annotations

import datetime as dt
import functools
import time
from typing import Protocol

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

from app.tray.status import CLOSED_WORDS, FINISHED_WORDS, KEY_CHANGED_WORDS, StatusModel

__all__ = [
    "SNOOZE_HOUR_S",
    "TOMORROW_HOUR",
    "MenuCommands",
    "fill_tray_menu",
    "menu_key",
    "tomorrow_morning",
]

SNOOZE_HOUR_S = 3600
TOMORROW_HOUR = 7  # "Snooze until tomorrow" ends at 07:00 local time tomorrow


def tomorrow_morning(now: dt.datetime | None = None) -> float:
    """Epoch seconds of TOMORROW_HOUR:00 local time on the next calendar day."""
    now = now or dt.datetime.now().astimezone()
    day = (now + dt.timedelta(days=1)).date()
    return dt.datetime.combine(day, dt.time(TOMORROW_HOUR), tzinfo=now.tzinfo).timestamp()


class MenuCommands(Protocol):
    """What the menu's entries call (the TrayApp)."""

    def retry_now(self) -> None: ...
    def review_key_change(self, project: str) -> object: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def snooze(self, until: float) -> None: ...
    def show_dashboard(self) -> None: ...
    def open_join(self, url: str | None = None) -> object: ...
    def open_url(self, url: str) -> None: ...
    def open_preferences(self) -> object: ...
    def open_welcome(self) -> object: ...
    def quit(self) -> None: ...


def menu_key(model: StatusModel) -> tuple[object, ...]:
    """What the menu's entries depend on, besides the status line's text."""
    pages = tuple(
        sorted(
            (p.name, p.page_url, p.closed, p.finished, p.key_changed)
            for p in model.projects.values()
        )
    )
    return (model.paused, model.offline, pages)


def fill_tray_menu(
    menu: QMenu,
    snooze_menu: QMenu,
    leaderboard_menu: QMenu,
    model: StatusModel,
    commands: MenuCommands,
) -> QAction:
    """Clear ``menu`` and fill it from ``model``; returns the (disabled) status entry, whose
    text the caller updates between rebuilds."""
    menu.clear()
    status_action = menu.addAction(model.status_line())
    status_action.setEnabled(False)
    if model.offline:
        menu.addAction("Retry now", commands.retry_now).setObjectName("retryAction")
    projects = sorted(model.projects.values(), key=lambda p: p.name)
    for p in projects:
        # A stopped project says so in the menu too; a changed key is a decision to make.
        if p.key_changed:
            review = menu.addAction(f"{p.name}: {KEY_CHANGED_WORDS.lower()}…")
            review.setObjectName("reviewKeyAction")
            review.triggered.connect(functools.partial(commands.review_key_change, p.name))
        elif p.closed:
            words = FINISHED_WORDS if p.finished else CLOSED_WORDS.lower()
            menu.addAction(f"{p.name}: {words}").setEnabled(False)
    menu.addSeparator()
    if model.paused:
        menu.addAction("Resume", commands.resume).setObjectName("resumeAction")
    else:
        menu.addAction("Pause", commands.pause).setObjectName("pauseAction")
    # Submenus are made once and refilled: QMenu.clear() does not delete submenus, so
    # making new ones on each rebuild would leak them.
    snooze_menu.clear()
    snooze_menu.addAction("For 1 hour", lambda: commands.snooze(time.time() + SNOOZE_HOUR_S))
    snooze_menu.addAction(
        f"Until tomorrow {TOMORROW_HOUR:02d}:00", lambda: commands.snooze(tomorrow_morning())
    )
    menu.addMenu(snooze_menu)
    menu.addSeparator()
    menu.addAction("Open Barnraise", commands.show_dashboard)
    menu.addAction("Join project…", lambda: commands.open_join())
    leaderboard_menu.clear()
    if len(projects) > 1:
        for p in projects:
            page = leaderboard_menu.addAction(p.name)
            page.triggered.connect(functools.partial(commands.open_url, p.page_url))
        menu.addMenu(leaderboard_menu)
    else:
        action = menu.addAction("Leaderboard")
        if projects:
            url = projects[0].page_url
            action.triggered.connect(lambda: commands.open_url(url))
        else:
            action.setEnabled(False)
    menu.addAction("Preferences…", commands.open_preferences)
    menu.addAction("Welcome…", commands.open_welcome).setObjectName("welcomeAction")
    menu.addSeparator()
    menu.addAction("Quit Barnraise", commands.quit)
    return status_action
