"""The main window: project table, current task, charts, activity log, leave, no-tray mode."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.contributor.events import CreditUpdated, EngineState, Progress, StateChanged, TaskFinished
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
    qtbot.waitUntil(lambda: tray_app.model.projects["digits"].credit == 3.2)
    table = board.projects_table
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
