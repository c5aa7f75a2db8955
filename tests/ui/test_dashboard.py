"""The main window: project table, current task, charts, activity log, leave, no-tray mode."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.contributor.events import (
    CreditUpdated,
    EngineState,
    Error,
    Progress,
    StateChanged,
    TaskFinished,
)
from app.tray.engine_port import JoinedProject


def _join(engine, tray_app, name="digits"):
    engine.projects[name] = JoinedProject(
        name=name, server_url="http://127.0.0.1:8000", page_url=f"http://127.0.0.1:8000/p/{name}"
    )
    tray_app.model.load(engine.snapshot())
    tray_app.refresh()


def test_dashboard_shows_projects_progress_charts_and_log(qtbot, tray_app, engine):
    _join(engine, tray_app)
    tray_app.show_dashboard()
    board = tray_app.dashboard
    qtbot.waitUntil(board.isVisible)
    engine.publish_from_thread(
        StateChanged(
            state=EngineState.TRAINING, previous=EngineState.WAITING, project="digits", task_id="t7"
        ),
        *[
            Progress(
                project="digits",
                task_id="t7",
                step=s,
                total_steps=100,
                examples=16 * s,
                loss=2.3 / (1 + s / 10),
                examples_per_second=900.0,
                at=1000.0 + s,
            )
            for s in range(10, 60, 10)
        ],
        TaskFinished(
            project="digits",
            task_id="t7",
            num_examples=1600,
            compute_seconds=2.0,
            credit=1.6,
            accepted=True,
            at=1100.0,
        ),
        CreditUpdated(
            project="digits", credit=1.6, credit_unit="k-examples", rank=2, tasks=1, at=1100.0
        ),
        CreditUpdated(
            project="digits", credit=3.2, credit_unit="k-examples", rank=1, tasks=2, at=1200.0
        ),
    )
    table = board.projects_table
    # The table and charts follow within a refresh interval (events come in bursts).
    qtbot.waitUntil(
        lambda: table.item(0, 3) is not None and table.item(0, 3).text() == "3.2 k-examples"
    )
    assert table.rowCount() == 1
    row = [table.item(0, c).text() for c in range(table.columnCount())]
    assert row[0] == "digits" and row[1] == "http://127.0.0.1:8000"
    assert row[3] == "3.2 k-examples" and row[4] == "1" and row[5] != "—"
    assert len(board.loss_chart.points) == 5
    assert [y for _, y in board.credit_chart.points] == [1.6, 3.2]
    log = board.activity_log.toPlainText()
    assert "Training — digits" in log and "Update for digits accepted" in log
    assert tray_app.notifier.shown[-1][0] == "First update accepted"


def test_progress_bar_follows_the_task(qtbot, tray_app, engine):
    _join(engine, tray_app)
    engine.publish_from_thread(
        StateChanged(
            state=EngineState.TRAINING, previous=EngineState.WAITING, project="digits", task_id="t1"
        ),
        Progress(
            project="digits",
            task_id="t1",
            step=45,
            total_steps=60,
            examples=720,
            loss=0.4,
            examples_per_second=1200.0,
        ),
    )
    qtbot.waitUntil(lambda: tray_app.dashboard.task_progress.value() == 750)
    assert "step 45/60" in tray_app.dashboard.task_detail.text()


def test_pause_button(qtbot, tray_app, engine):
    tray_app.show_dashboard()
    qtbot.mouseClick(tray_app.dashboard.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tray_app.dashboard.pause_button.text() == "Resume")
    assert engine.called("pause") == [None]


def _leave_box(qtbot, board) -> QMessageBox:
    qtbot.mouseClick(board.leave_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: board.leave_box is not None and board.leave_box.isVisible())
    assert board.leave_box is not None
    return board.leave_box


def test_leave_asks_first_and_cancel_keeps_the_project(qtbot, tray_app, engine):
    _join(engine, tray_app)
    tray_app.show_dashboard()
    box = _leave_box(qtbot, tray_app.dashboard)
    assert box.text() == "Leave digits?" and "keychain" in box.informativeText()
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tray_app.dashboard.leave_box is None)
    assert engine.called("leave") == []
    assert "digits" in tray_app.model.projects


def test_leave_after_confirmation(qtbot, tray_app, engine):
    _join(engine, tray_app)
    tray_app.show_dashboard()
    box = _leave_box(qtbot, tray_app.dashboard)
    leave = next(b for b in box.buttons() if b.text() == "Leave project")
    qtbot.mouseClick(leave, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: engine.called("leave") == ["digits"])
    qtbot.waitUntil(lambda: tray_app.dashboard.projects_table.rowCount() == 0)
    assert tray_app.dashboard.empty_projects.isVisibleTo(tray_app.dashboard)


def test_without_a_system_tray_the_window_opens_and_says_so(qtbot, engine, config_dir):
    from app.tray.tray import TrayApp

    app = TrayApp(engine, settings_path=config_dir / "settings.json", tray_available=False, gpus=[])
    qtbot.addWidget(app.dashboard)
    app.start()
    try:
        qtbot.waitUntil(app.dashboard.isVisible)
        assert app.dashboard.no_tray_banner.isVisible()
        assert "no system tray" in app.dashboard.no_tray_banner.text()
        assert not app.tray.isVisible()
        quits: list[bool] = []
        app.dashboard.quit_requested.connect(lambda: quits.append(True))
        app.dashboard.close()  # closing the only window must quit, never leave a hidden process
        assert quits == [True]
    finally:
        app.shutdown()


def test_retry_now_button_only_while_the_server_cannot_be_reached(qtbot, tray_app, engine):
    _join(engine, tray_app)
    tray_app.show_dashboard()
    board = tray_app.dashboard
    qtbot.waitUntil(board.isVisible)
    assert not board.retry_button.isVisible()
    engine.publish_from_thread(
        StateChanged(state=EngineState.OFFLINE, previous=EngineState.LEASING, project="digits")
    )
    qtbot.waitUntil(board.retry_button.isVisible)
    assert board.status_label.text() == "Can't reach the server"
    qtbot.mouseClick(board.retry_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: engine.called("retry_now") == [None])
    qtbot.waitUntil(lambda: not board.retry_button.isVisible())


@pytest.mark.parametrize(
    "message",
    [
        "the coordinator refused the update: " + "a very long explanation " * 200,
        "could not reach https://example.org/" + "x" * 4000,  # one word: nothing to wrap at
    ],
)
def test_a_long_error_never_makes_the_window_wider_than_the_screen(qtbot, tray_app, message):
    from PySide6.QtWidgets import QApplication

    tray_app.show_dashboard()
    board = tray_app.dashboard
    qtbot.waitUntil(board.isVisible)
    free = board.screen().availableGeometry()
    assert board.frameGeometry().width() <= free.width()  # already at start (offscreen: 800 px)
    tray_app.engine.publish_from_thread(Error(message=message, code="rejected"))
    qtbot.waitUntil(lambda: board.status_label.text().startswith("Problem: "))
    for _ in range(5):  # let the layout settle and the window react to new size hints
        QApplication.processEvents()
    assert board.frameGeometry().width() <= free.width(), (
        f"the window is {board.frameGeometry().width()} px wide on a {free.width()} px screen"
    )
    assert board.minimumSizeHint().width() <= free.width()
    # The whole message is still there for the volunteer to read: in the log, wrapped.
    qtbot.waitUntil(lambda: message in board.activity_log.toPlainText())
    assert board.frameGeometry().width() <= free.width()
    # The tray menu is a window too.
    assert tray_app.menu.sizeHint().width() <= free.width()


def test_charts_repaint_at_most_twice_a_second_however_often_points_come(qtbot, tray_app):
    from PySide6.QtWidgets import QApplication

    from app.tray.chart import REPAINT_INTERVAL_MS

    tray_app.show_dashboard()
    chart = tray_app.dashboard.loss_chart
    qtbot.waitUntil(chart.isVisible)
    qtbot.waitUntil(lambda: chart.paints > 0)  # the first frame, empty
    before = chart.paints
    for i in range(200):  # far more often than a frame: the last points win
        chart.set_points([(1000.0 + j, 1.0 / (1 + j)) for j in range(i + 2)])
        QApplication.processEvents()
    assert chart.paints - before <= 1
    qtbot.waitUntil(lambda: chart.painted_points == 201, timeout=REPAINT_INTERVAL_MS * 4)
    assert chart.paints - before <= 2


def test_stats_report_what_the_window_shows(qtbot, tray_app, engine):
    _join(engine, tray_app)
    tray_app.show_dashboard()
    qtbot.waitUntil(tray_app.dashboard.isVisible)
    engine.publish_from_thread(
        *[
            Progress(
                project="digits",
                task_id="t1",
                step=s,
                total_steps=10,
                examples=16 * s,
                loss=1.0 / s,
                examples_per_second=100.0,
                at=1000.0 + s,
            )
            for s in range(1, 11)
        ]
    )
    qtbot.waitUntil(lambda: tray_app.stats()["charts"]["loss"]["painted_points"] == 10)
    stats = tray_app.stats()
    assert stats["window_visible"] is True and stats["state"] == "idle"
    assert stats["charts"]["loss"]["points"] == 10 and stats["charts"]["loss"]["paints"] >= 1
    assert stats["charts"]["credit"]["points"] == 0
    json.dumps(stats)  # the tray writes it as JSON
