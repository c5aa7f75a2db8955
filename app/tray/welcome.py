"""The welcome window: shown at the first start (no project joined, never welcomed), and
from the tray menu ("Welcome…") at any time after.

It says what Barnraise does, the limits in force (read from the settings the engine uses,
so on a first start exactly ``settings_specs``'s defaults), that Preferences changes them,
and how to join (a button that opens the Join dialog). Closing it, however, marks the
volunteer welcomed (``welcomed.json`` in the config folder, written atomically), so it does
not open by itself again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.contributor.schedule import HOURS_PER_DAY, WeeklySchedule
from app.contributor.settings import Profile, Settings, atomic_write_private
from app.tray.icons import app_icon
from app.tray.join_texts import escape_html

__all__ = [
    "INTRO",
    "WELCOMED_FILENAME",
    "WelcomeDialog",
    "limits_lines",
    "mark_welcomed",
    "was_welcomed",
]

log = logging.getLogger(__name__)

WELCOMED_FILENAME = "welcomed.json"

INTRO = (
    "Barnraise lends your computer's spare time to projects that train machine-learning "
    "models together. It fetches a small piece of work from a project you join, trains on it "
    "within the limits below, and sends back only the model update, never your files. You "
    "can pause, snooze or leave a project at any time."
)


def was_welcomed(folder: Path) -> bool:
    return (folder / WELCOMED_FILENAME).exists()


def mark_welcomed(folder: Path) -> None:
    """Remember that the welcome was seen (atomic: a crash leaves no half-written mark)."""
    text = json.dumps({"welcomed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, sort_keys=True)
    atomic_write_private(folder / WELCOMED_FILENAME, text + "\n")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _profile_text(profile: Profile) -> str:
    gpu = (
        f"the GPU at {profile.gpu_percent} % and up to {profile.gpu_memory_fraction:.0%} of "
        "its memory"
        if profile.gpu_enabled
        else "no GPU"
    )
    return (
        f"at most {_plural(profile.cpu_cores, 'CPU core')} at {profile.cpu_percent} % of their "
        f"time, {gpu}, {profile.memory_cap_mb} MiB of memory"
    )


def _schedule_text(schedule: WeeklySchedule) -> str:
    hours = sum(row.count("1") for row in schedule.rows)
    if hours == len(schedule.rows) * HOURS_PER_DAY:
        return "Hours: any hour of any day"
    if hours == 0:
        return "Hours: none (the schedule allows no hour; nothing runs)"
    return f"Hours: {_plural(hours, 'hour')} a week, as your schedule says"


def limits_lines(settings: Settings) -> list[str]:
    """The limits in force, one plain sentence each, from ``settings``."""
    idle = settings.idle_minutes_before_start
    when_idle = (
        "Always (no wait for an idle computer)"
        if idle == 0
        else f"Once you have not touched the computer for {_plural(idle, 'minute')}"
    )
    causes = [f"other programs use more than {settings.other_cpu_suspend_percent} % of the CPU"]
    if settings.cpu_temp_limit_c is not None:
        causes.append(f"the CPU reaches {settings.cpu_temp_limit_c:g} °C")
    if settings.gpu_temp_limit_c is not None:
        causes.append(f"the GPU reaches {settings.gpu_temp_limit_c:g} °C")
    steps_aside = " or ".join([", ".join(causes[:-1]), causes[-1]] if len(causes) > 1 else causes)
    return [
        f"While you use the computer: {_profile_text(settings.in_use)}",
        f"{when_idle}: {_profile_text(settings.idle)}",
        _schedule_text(settings.schedule),
        "On battery: " + ("keeps going" if settings.run_on_battery else "waits until you plug in"),
        f"Steps aside when {steps_aside}",
        "Uploads: "
        + (
            f"at most {settings.upload_kbps_cap} kbit/s"
            if settings.upload_kbps_cap
            else "no bandwidth cap"
        )
        + f"; up to {settings.cache_size_mb} MiB of disk for downloaded models",
    ]


class WelcomeDialog(QDialog):
    join_requested = Signal()
    preferences_requested = Signal()

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("welcomeDialog")
        self.setWindowTitle("Welcome to Barnraise")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(560)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 16, 18, 14)
        heading = QLabel("Welcome to Barnraise")
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        heading.setFont(font)
        layout.addWidget(heading)
        intro = QLabel(INTRO)
        intro.setObjectName("welcomeIntro")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        layout.addWidget(QLabel("<b>Your limits now</b>"))
        self.limits_label = QLabel()
        self.limits_label.setObjectName("welcomeLimits")
        self.limits_label.setWordWrap(True)
        self.limits_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.limits_label)
        change = QLabel("Change any of them at any time in <b>Preferences</b>.")
        change.setWordWrap(True)
        layout.addWidget(change)
        join = QLabel(
            "<b>To start</b>, join a project: paste its page address or the invite link its "
            "organiser gave you, for example <i>https://example.org/p/digits</i>."
        )
        join.setWordWrap(True)
        layout.addWidget(join)
        layout.addStretch(1)

        self.preferences_button = QPushButton("Preferences…")
        self.preferences_button.setObjectName("welcomePreferencesButton")
        self.preferences_button.setAccessibleName("Open Preferences to change the limits")
        self.join_button = QPushButton("Join a project…")
        self.join_button.setObjectName("welcomeJoinButton")
        self.join_button.setAccessibleName("Join a project: paste a page or invite link")
        self.join_button.setDefault(True)
        self.close_button = QPushButton("Close")
        self.close_button.setObjectName("welcomeCloseButton")
        self.close_button.setAccessibleName("Close the welcome")
        for other in (self.preferences_button, self.close_button):
            other.setAutoDefault(False)  # Enter joins, whichever button has the focus
        self.preferences_button.clicked.connect(self.preferences_requested)
        self.join_button.clicked.connect(self._join)
        self.close_button.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addWidget(self.preferences_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        buttons.addWidget(self.join_button)
        layout.addLayout(buttons)
        self.set_settings(settings)

    def set_settings(self, settings: Settings) -> None:
        """Show the limits of ``settings`` (the tray calls it when Preferences change them)."""
        items = "".join(f"<li>{escape_html(line)}.</li>" for line in limits_lines(settings))
        self.limits_label.setText(f"<ul style='margin-left:-20px'>{items}</ul>")

    def limits_text(self) -> str:
        """The limits as shown (rich text)."""
        return self.limits_label.text()

    def _join(self) -> None:
        self.accept()  # its job is done; the Join dialog takes over
        self.join_requested.emit()
