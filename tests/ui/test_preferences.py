"""Preferences: every change reaches the engine and the settings file at once; the schedule
grid is painted with mouse drags."""

from __future__ import annotations

import json

from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from app.contributor.settings import load_settings
from app.tray.gpus import GpuInfo
from app.tray.preferences import PreferencesDialog
from app.tray.schedule_grid import ScheduleGrid


def open_prefs(qtbot, tray_app) -> PreferencesDialog:
    dialog = tray_app.open_preferences()
    qtbot.waitUntil(dialog.isVisible)
    return dialog


def tick(qtbot, box) -> None:
    """Click a check box on its indicator (a wide box does not react to clicks past its text)."""
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(8, box.height() // 2))


def saved(config_dir) -> dict:
    return json.loads((config_dir / "settings.json").read_text())


def set_spin(qtbot, spin, value: int) -> None:
    """Select the text and type a number, as a person does."""
    spin.setFocus()
    spin.selectAll()
    qtbot.keyClicks(spin.lineEdit() if hasattr(spin, "lineEdit") else spin, str(value))
    qtbot.keyClick(spin, Qt.Key.Key_Tab)


def test_changing_limits_reaches_the_engine_and_the_file(qtbot, tray_app, engine, config_dir):
    dialog = open_prefs(qtbot, tray_app)
    cores = dialog.findChild(type(dialog.findChild(object, "in_use.cpu_cores")), "in_use.cpu_cores")
    set_spin(qtbot, cores, 1)
    percent = dialog.findChild(object, "idle.cpu_percent")
    set_spin(qtbot, percent.spin, 40)
    memory = dialog.findChild(object, "in_use.memory_cap_mb")
    set_spin(qtbot, memory, 768)
    qtbot.waitUntil(
        lambda: bool(engine.applied) and engine.applied[-1].in_use.memory_cap_mb == 768,
        timeout=3000,
    )
    settings = engine.applied[-1]
    assert settings.idle.cpu_percent == 40 and settings.in_use.memory_cap_mb == 768
    on_disk = saved(config_dir)
    assert on_disk["idle"]["cpu_percent"] == 40 and on_disk["in_use"]["memory_cap_mb"] == 768
    assert load_settings(config_dir / "settings.json") == settings
    assert "Saved" in dialog.message.text()


def test_rules_and_general_options(qtbot, tray_app, engine, config_dir, tmp_path):
    dialog = open_prefs(qtbot, tray_app)
    dialog.tabs.setCurrentIndex(2)
    tick(qtbot, dialog.findChild(object, "run_on_battery"))
    tick(qtbot, dialog.findChild(object, "cpu_temp_limit_c_on"))  # turn off
    set_spin(qtbot, dialog.findChild(object, "upload_kbps_cap"), 512)
    dialog.tabs.setCurrentIndex(3)
    tick(qtbot, dialog.findChild(object, "notifications"))
    qtbot.waitUntil(
        lambda: bool(engine.applied) and engine.applied[-1].upload_kbps_cap == 512, timeout=3000
    )
    qtbot.waitUntil(lambda: not engine.applied[-1].notifications, timeout=3000)
    s = engine.applied[-1]
    assert s.run_on_battery is True and s.cpu_temp_limit_c is None
    on_disk = saved(config_dir)
    assert on_disk["run_on_battery"] is True and on_disk["cpu_temp_limit_c"] is None
    assert tray_app.notifier.enabled is False


def test_an_invalid_combination_is_refused_and_changes_nothing(qtbot, tray_app, engine, config_dir):
    dialog = open_prefs(qtbot, tray_app)
    dialog.tabs.setCurrentIndex(2)
    set_spin(qtbot, dialog.findChild(object, "other_cpu_resume_percent"), 80)  # above suspend (60)
    qtbot.waitUntil(lambda: "Not saved" in dialog.message.text(), timeout=3000)
    assert "other_cpu_resume_percent" in dialog.message.text()
    assert engine.applied == [] and not (config_dir / "settings.json").exists()


def test_start_at_login_writes_the_xdg_autostart_entry(
    qtbot, tray_app, engine, config_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr("sys.platform", "linux")
    dialog = open_prefs(qtbot, tray_app)
    dialog.tabs.setCurrentIndex(3)
    entry = tmp_path / "xdg" / "autostart" / "org.barnraise.Barnraise.desktop"
    tick(qtbot, dialog.findChild(object, "start_at_login"))
    qtbot.waitUntil(entry.exists, timeout=3000)
    text = entry.read_text()
    assert "Exec=" in text and "app.tray --minimized" in text and "Type=Application" in text
    tick(qtbot, dialog.findChild(object, "start_at_login"))
    qtbot.waitUntil(lambda: not entry.exists(), timeout=3000)
    assert saved(config_dir)["start_at_login"] is False


def test_gpu_controls_per_detected_gpu(qtbot, engine, config_dir):
    from app.contributor.settings import default_settings

    gpus = [GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559)]
    dialog = PreferencesDialog(default_settings(), gpus)
    qtbot.addWidget(dialog)
    dialog.show()
    got = []
    dialog.settings_changed.connect(got.append)
    memory = dialog.findChild(object, "idle.gpu_memory_fraction")
    assert not memory.isEnabled()  # GPU off by default
    tick(qtbot, dialog.findChild(object, "idle.gpu_enabled"))
    assert memory.isEnabled()
    set_spin(qtbot, memory, 30)
    dialog.apply_pending()
    assert got[-1].idle.gpu_enabled is True and abs(got[-1].idle.gpu_memory_fraction - 0.30) < 1e-9


def test_without_a_gpu_the_switch_is_disabled(qtbot):
    from app.contributor.settings import default_settings

    dialog = PreferencesDialog(default_settings(), [])
    qtbot.addWidget(dialog)
    assert not dialog.findChild(object, "in_use.gpu_enabled").isEnabled()


# --- the schedule grid ----------------------------------------------------------------------
def drag(qtbot, grid: ScheduleGrid, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Press on one cell, move through the cells between, release on the last."""
    a = grid.cell_rect(*start).center()
    b = grid.cell_rect(*end).center()
    QTest.mousePress(grid, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, a)
    steps = 12
    for i in range(1, steps + 1):
        p = QPoint(a.x() + (b.x() - a.x()) * i // steps, a.y() + (b.y() - a.y()) * i // steps)
        QTest.mouseMove(grid, p)
    QTest.mouseRelease(grid, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, b)


def test_paint_the_schedule_with_the_mouse(qtbot, tray_app, engine, config_dir):
    dialog = open_prefs(qtbot, tray_app)
    dialog.tabs.setCurrentIndex(1)
    grid = dialog.schedule_grid
    qtbot.waitUntil(grid.isVisible)
    # Everything is allowed: a stroke that starts on an allowed hour erases.
    drag(qtbot, grid, (0, 9), (0, 16))  # Monday 09:00–16:59
    qtbot.waitUntil(lambda: bool(engine.applied))
    assert engine.applied[-1].schedule.rows[0] == "1" * 9 + "0" * 8 + "1" * 7
    assert saved(config_dir)["schedule"][0] == "1" * 9 + "0" * 8 + "1" * 7
    # A stroke that starts on an erased hour paints, even over cells already allowed.
    drag(qtbot, grid, (0, 12), (1, 12))  # Monday 12 down to Tuesday 12
    qtbot.waitUntil(lambda: len(engine.applied) == 2)
    rows = engine.applied[-1].schedule.rows
    assert rows[0] == "1" * 9 + "000" + "1" + "0" * 4 + "1" * 7
    assert rows[1] == "1" * 24
    # Weekend nights off: one stroke per day along the row.
    drag(qtbot, grid, (5, 0), (5, 5))
    drag(qtbot, grid, (6, 5), (6, 0))  # right to left works the same
    qtbot.waitUntil(lambda: len(engine.applied) == 4)
    rows = engine.applied[-1].schedule.rows
    assert rows[5] == "0" * 6 + "1" * 18 and rows[6] == "0" * 6 + "1" * 18
    assert saved(config_dir)["schedule"] == list(rows)


def test_schedule_presets_and_keyboard(qtbot):
    from app.contributor.schedule import WeeklySchedule

    grid = ScheduleGrid(WeeklySchedule.never())
    qtbot.addWidget(grid)
    grid.show()
    got = []
    grid.schedule_changed.connect(got.append)
    grid.setFocus()
    qtbot.keyClick(grid, Qt.Key.Key_Right)
    qtbot.keyClick(grid, Qt.Key.Key_Down)
    qtbot.keyClick(grid, Qt.Key.Key_Space)
    assert got[-1].hour_allowed(1, 1) and sum(r.count("1") for r in got[-1].rows) == 1
