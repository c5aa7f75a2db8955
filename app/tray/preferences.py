"""Preferences: limits for both profiles, the weekly schedule, rules, and general options.

Every change applies at once: the dialog builds new ``Settings`` with ``Settings.updated``
(which validates), and on success emits ``settings_changed``; the TrayApp saves the file and
hands the settings to the engine. A rejected value (say, a resume threshold above the
suspend threshold) is shown next to the buttons and changes nothing. Rapid changes (a
slider being dragged) are coalesced for ``APPLY_DELAY_MS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.contributor.schedule import WeeklySchedule
from app.contributor.settings import PROFILE_NAMES, Settings, SettingsError
from app.tray.gpus import GpuInfo
from app.tray.icons import app_icon
from app.tray.schedule_grid import ScheduleGrid

__all__ = ["APPLY_DELAY_MS", "PreferencesDialog"]

APPLY_DELAY_MS = 250
PROFILE_TITLES = {"in_use": "While I use the computer", "idle": "While the computer is idle"}


def _nights_and_weekends() -> WeeklySchedule:
    return WeeklySchedule.from_hours(lambda day, hour: day >= 5 or hour >= 19 or hour < 7)


class PercentControl(QWidget):
    """A slider with a spin box beside it, 1–100 %."""

    valueChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(1, 100)
        self.slider.setPageStep(10)
        self.spin = QSpinBox()
        self.spin.setRange(1, 100)
        self.spin.setSuffix(" %")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)
        self.slider.valueChanged.connect(self.spin.setValue)
        self.spin.valueChanged.connect(self.slider.setValue)
        self.spin.valueChanged.connect(self.valueChanged)

    def value(self) -> int:
        return self.spin.value()

    def setValue(self, value: int) -> None:
        self.spin.setValue(value)


class PreferencesDialog(QDialog):
    settings_changed = Signal(object)  # Settings, validated

    def __init__(
        self,
        settings: Settings,
        gpus: list[GpuInfo],
        parent: QWidget | None = None,
        *,
        cpu_count: int | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.gpus = gpus
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self._loading = False
        self._pending: dict[str, Any] = {}
        # name -> (read widget value, write widget value)
        self._fields: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self.setObjectName("preferencesDialog")
        self.setWindowTitle("Barnraise Preferences")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(720)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(APPLY_DELAY_MS)
        self._timer.timeout.connect(self.apply_pending)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._limits_tab(), "Limits")
        self.tabs.addTab(self._schedule_tab(), "Schedule")
        self.tabs.addTab(self._rules_tab(), "Rules")
        self.tabs.addTab(self._general_tab(), "General")

        self.message = QLabel()
        self.message.setObjectName("preferencesMessage")
        self.message.setWordWrap(True)
        close = QPushButton("Close")
        close.setDefault(True)
        close.clicked.connect(self.accept)
        bottom = QHBoxLayout()
        bottom.addWidget(self.message, 1)
        bottom.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(bottom)
        self.load(settings)

    # --- binding ---------------------------------------------------------------------------
    def _bind_spin(self, name: str, widget: QSpinBox | QDoubleSpinBox | PercentControl) -> None:
        self._fields[name] = (widget.value, widget.setValue)
        widget.valueChanged.connect(lambda _=None, n=name: self._changed(n))

    def _bind_check(self, name: str, widget: QCheckBox) -> None:
        self._fields[name] = (widget.isChecked, widget.setChecked)
        widget.toggled.connect(lambda _=None, n=name: self._changed(n))

    def _bind_optional(self, name: str, check: QCheckBox, spin: QDoubleSpinBox) -> None:
        def read() -> float | None:
            return float(spin.value()) if check.isChecked() else None

        def write(value: float | None) -> None:
            check.setChecked(value is not None)
            if value is not None:
                spin.setValue(value)
            spin.setEnabled(value is not None)

        self._fields[name] = (read, write)
        check.toggled.connect(spin.setEnabled)
        check.toggled.connect(lambda _=None, n=name: self._changed(n))
        spin.valueChanged.connect(lambda _=None, n=name: self._changed(n))

    def widget_value(self, name: str) -> Any:
        return self._fields[name][0]()

    def load(self, settings: Settings) -> None:
        """Show ``settings`` without emitting changes."""
        self._loading = True
        try:
            self.settings = settings
            flat = settings.to_flat()
            for name, (_, write) in self._fields.items():
                if name == "in_use.gpu_memory_fraction" or name == "idle.gpu_memory_fraction":
                    write(round(flat[name] * 100))
                else:
                    write(flat[name])
            self.schedule_grid.set_schedule(settings.schedule)
            self._sync_gpu_enabled()
        finally:
            self._loading = False

    def _changed(self, name: str) -> None:
        if self._loading:
            return
        value = self.widget_value(name)
        if name.endswith(".gpu_memory_fraction"):
            value = value / 100.0
        self._pending[name] = value
        self._sync_gpu_enabled()
        self._timer.start()

    def _schedule_painted(self, schedule: WeeklySchedule) -> None:
        if self._loading:
            return
        self._pending["schedule"] = schedule
        self.apply_pending()  # one stroke is one deliberate change: apply it now

    def apply_pending(self) -> None:
        """Validate and emit the pending changes (also called when the timer fires)."""
        self._timer.stop()
        if not self._pending:
            return
        changes, self._pending = self._pending, {}
        try:
            settings = self.settings.updated(changes)
        except (SettingsError, ValueError) as exc:
            self.message.setStyleSheet("color:#B91C1C;")
            self.message.setText(f"Not saved: {exc}")
            return
        self.settings = settings
        self.message.setStyleSheet("color:#15803D;")
        self.message.setText("✓ Saved and applied")
        self.settings_changed.emit(settings)

    def done(self, result: int) -> None:
        self.apply_pending()  # closing must not lose a change still in the debounce timer
        super().done(result)

    # --- tabs ------------------------------------------------------------------------------
    def _limits_tab(self) -> QWidget:
        page = QWidget()
        grid = QGridLayout(page)
        self._gpu_widgets: dict[str, list[QWidget]] = {}
        for column, profile in enumerate(PROFILE_NAMES):
            box = QGroupBox(PROFILE_TITLES[profile])
            form = QFormLayout(box)
            cores = QSpinBox()
            cores.setObjectName(f"{profile}.cpu_cores")
            cores.setRange(1, self.cpu_count)
            cores.setSuffix(f" of {self.cpu_count}")
            self._bind_spin(f"{profile}.cpu_cores", cores)
            form.addRow("CPU cores:", cores)
            cpu_time = PercentControl()
            cpu_time.setObjectName(f"{profile}.cpu_percent")
            self._bind_spin(f"{profile}.cpu_percent", cpu_time)
            form.addRow("CPU time:", cpu_time)
            memory = QSpinBox()
            memory.setObjectName(f"{profile}.memory_cap_mb")
            memory.setRange(128, 1024 * 1024)
            memory.setSingleStep(256)
            memory.setSuffix(" MiB")
            self._bind_spin(f"{profile}.memory_cap_mb", memory)
            form.addRow("Memory cap:", memory)

            gpu_on = QCheckBox("Use the GPU")
            gpu_on.setObjectName(f"{profile}.gpu_enabled")
            self._bind_check(f"{profile}.gpu_enabled", gpu_on)
            form.addRow("GPU:", gpu_on)
            gpu_memory = QSpinBox()
            gpu_memory.setObjectName(f"{profile}.gpu_memory_fraction")
            gpu_memory.setRange(5, 100)
            gpu_memory.setSuffix(" % of its memory")
            self._bind_spin(f"{profile}.gpu_memory_fraction", gpu_memory)
            gpu_time = PercentControl()
            gpu_time.setObjectName(f"{profile}.gpu_percent")
            self._bind_spin(f"{profile}.gpu_percent", gpu_time)
            if self.gpus:
                for gpu in self.gpus:
                    label = QLabel(f"GPU {gpu.index}: {gpu.name} ({gpu.memory_mb / 1024:.0f} GiB)")
                    label.setStyleSheet("color: palette(mid);")
                    label.setWordWrap(True)
                    form.addRow("", label)
            form.addRow("GPU memory cap:", gpu_memory)
            form.addRow("GPU time:", gpu_time)
            self._gpu_widgets[profile] = [gpu_memory, gpu_time]
            if not self.gpus:
                gpu_on.setEnabled(False)
                gpu_on.setToolTip(
                    "No NVIDIA GPU was found (nvidia-smi is not installed or sees none)."
                )
            grid.addWidget(box, 0, column)
        note = QLabel(
            "The idle profile applies after the computer has been idle for the time set under "
            "Rules. Limits are enforced by the training process and measured, not advisory."
            + ("" if self.gpus else " No GPU detected: training uses the CPU.")
            + (" GPU limits apply to each GPU." if len(self.gpus) > 1 else "")
        )
        note.setWordWrap(True)
        note.setStyleSheet("color: palette(mid);")
        grid.addWidget(note, 1, 0, 1, 2)
        grid.setRowStretch(2, 1)
        return page

    def _sync_gpu_enabled(self) -> None:
        for profile, widgets in self._gpu_widgets.items():
            on = bool(self.gpus) and bool(self._fields[f"{profile}.gpu_enabled"][0]())
            for widget in widgets:
                widget.setEnabled(on)

    def _schedule_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        intro = QLabel(
            "Barnraise computes only in the green hours. Press and drag to paint hours on; "
            "start on a green hour to erase. Times are this computer's local time."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.schedule_grid = ScheduleGrid()
        self.schedule_grid.setObjectName("scheduleGrid")
        self.schedule_grid.schedule_changed.connect(self._schedule_painted)
        layout.addWidget(self.schedule_grid)
        presets = QHBoxLayout()
        for text, make in (
            ("Always", WeeklySchedule.always),
            ("Nights and weekends", _nights_and_weekends),
            ("Never", WeeklySchedule.never),
        ):
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, m=make: self._preset(m()))
            presets.addWidget(button)
        presets.addStretch(1)
        layout.addLayout(presets)
        layout.addStretch(1)
        return page

    def _preset(self, schedule: WeeklySchedule) -> None:
        self.schedule_grid.set_schedule(schedule)
        self._schedule_painted(schedule)

    def _rules_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        battery = QCheckBox("Compute while on battery power")
        battery.setObjectName("run_on_battery")
        self._bind_check("run_on_battery", battery)
        form.addRow("Battery:", battery)
        idle = QSpinBox()
        idle.setObjectName("idle_minutes_before_start")
        idle.setRange(0, 24 * 60)
        idle.setSuffix(" min")
        idle.setSpecialValueText("always use the idle profile")
        self._bind_spin("idle_minutes_before_start", idle)
        form.addRow("Idle profile after:", idle)
        suspend = QSpinBox()
        suspend.setObjectName("other_cpu_suspend_percent")
        suspend.setRange(1, 100)
        suspend.setSuffix(" %")
        self._bind_spin("other_cpu_suspend_percent", suspend)
        form.addRow("Suspend when other programs use more CPU than:", suspend)
        resume = QSpinBox()
        resume.setObjectName("other_cpu_resume_percent")
        resume.setRange(0, 99)
        resume.setSuffix(" %")
        self._bind_spin("other_cpu_resume_percent", resume)
        form.addRow("…and resume when they use less than:", resume)
        for key, label in (("cpu_temp_limit_c", "CPU"), ("gpu_temp_limit_c", "GPU")):
            row = QWidget()
            row_layout = QHBoxLayout(row)
            row_layout.setContentsMargins(0, 0, 0, 0)
            check = QCheckBox("Suspend at")
            check.setObjectName(f"{key}_on")
            spin = QDoubleSpinBox()
            spin.setObjectName(key)
            spin.setRange(40.0, 110.0)
            spin.setDecimals(0)
            spin.setSuffix(" °C")
            row_layout.addWidget(check)
            row_layout.addWidget(spin)
            row_layout.addStretch(1)
            self._bind_optional(key, check, spin)
            form.addRow(f"{label} temperature:", row)
        upload = QSpinBox()
        upload.setObjectName("upload_kbps_cap")
        upload.setRange(0, 10_000_000)
        upload.setSingleStep(256)
        upload.setSuffix(" kbit/s")
        upload.setSpecialValueText("unlimited")
        self._bind_spin("upload_kbps_cap", upload)
        form.addRow("Upload bandwidth cap:", upload)
        cache = QSpinBox()
        cache.setObjectName("cache_size_mb")
        cache.setRange(64, 1024 * 1024)
        cache.setSingleStep(256)
        cache.setSuffix(" MiB")
        self._bind_spin("cache_size_mb", cache)
        form.addRow("Disk cache for models:", cache)
        return page

    def _general_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        login = QCheckBox("Start Barnraise when I log in")
        login.setObjectName("start_at_login")
        self._bind_check("start_at_login", login)
        form.addRow("Start:", login)
        notify = QCheckBox(
            "Notify me when I join a project, when my first update is accepted, and about problems"
        )
        notify.setObjectName("notifications")
        self._bind_check("notifications", notify)
        form.addRow("Notifications:", notify)
        return page
