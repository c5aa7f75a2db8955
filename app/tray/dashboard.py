"""The main window: joined projects, the current task, charts, and the activity log."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.contributor.events import (
    CreditUpdated,
    Error,
    Event,
    PolicyChanged,
    Progress,
    StateChanged,
    TaskFinished,
)
from app.tray.chart import LineChart
from app.tray.icons import app_icon, tray_icon
from app.tray.status import StatusModel

__all__ = ["Dashboard", "describe_event"]

LOG_LINES = 500  # the activity log keeps this many lines
COLUMNS = ("Project", "Server", "State", "Your credit", "Rank", "Last update")


def _ago(at: float | None) -> str:
    if at is None:
        return "—"
    seconds = max(0, int(time.time() - at))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return time.strftime("%d %b %Y", time.localtime(at))


def describe_event(event: Event) -> str | None:
    """One line for the activity log; None for events too frequent to log (progress)."""
    if isinstance(event, StateChanged):
        why = f" ({', '.join(event.reasons)})" if event.reasons else ""
        where = f" — {event.project}" if event.project else ""
        return f"{event.state.value.capitalize()}{where}{why}"
    if isinstance(event, TaskFinished):
        verdict = "accepted" if event.accepted else "rejected"
        return (
            f"Update for {event.project} {verdict}: {event.num_examples} examples, "
            f"{event.compute_seconds:.0f} s of compute, +{event.credit:g} credit"
        )
    if isinstance(event, CreditUpdated):
        rank = f", rank {event.rank}" if event.rank else ""
        return f"Credit on {event.project}: {event.credit:g} {event.credit_unit}{rank}".rstrip()
    if isinstance(event, PolicyChanged):
        why = f": {', '.join(event.reasons)}" if event.reasons else ""
        return f"Policy: {event.action}{why}"
    if isinstance(event, Error):
        return f"Problem{f' in {event.project}' if event.project else ''}: {event.message}"
    if isinstance(event, Progress):
        return None
    return None


class Dashboard(QMainWindow):
    """Shows what the engine does; its buttons ask the TrayApp, which asks the engine."""

    pause_requested = Signal()
    resume_requested = Signal()
    join_requested = Signal()
    preferences_requested = Signal()
    leave_requested = Signal(str)  # project name, after the volunteer confirmed
    open_page_requested = Signal(str)  # project page URL
    quit_requested = Signal()

    def __init__(self, model: StatusModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.tray_available = True
        self.leave_box: QMessageBox | None = None
        self.setWindowTitle("Barnraise")
        self.setWindowIcon(app_icon())
        self.setObjectName("dashboard")
        self.resize(920, 680)

        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(16, 14, 16, 12)
        root.setSpacing(12)

        self.no_tray_banner = QLabel(
            "Your desktop has no system tray, so Barnraise runs in this window. "
            "Closing it quits Barnraise."
        )
        self.no_tray_banner.setWordWrap(True)
        self.no_tray_banner.setStyleSheet(
            "background:#FEF3C7; color:#78350F; border:1px solid #F59E0B; border-radius:6px; padding:8px;"
        )
        self.no_tray_banner.hide()
        root.addWidget(self.no_tray_banner)

        # Header: state icon, status, main actions.
        header = QHBoxLayout()
        self.state_icon = QLabel()
        self.state_icon.setFixedSize(40, 40)
        header.addWidget(self.state_icon)
        titles = QVBoxLayout()
        titles.setSpacing(0)
        self.status_label = QLabel()
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.status_label.setFont(font)
        self.status_label.setObjectName("statusLabel")
        self.substatus_label = QLabel()
        self.substatus_label.setStyleSheet("color: palette(mid);")
        titles.addWidget(self.status_label)
        titles.addWidget(self.substatus_label)
        header.addLayout(titles, 1)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.clicked.connect(self._toggle_pause)
        self.join_button = QPushButton("Join project…")
        self.join_button.setObjectName("joinButton")
        self.join_button.clicked.connect(self.join_requested)
        self.prefs_button = QPushButton("Preferences…")
        self.prefs_button.clicked.connect(self.preferences_requested)
        for button in (self.pause_button, self.join_button, self.prefs_button):
            button.setMinimumHeight(32)
            header.addWidget(button)
        self.join_button.setDefault(True)
        root.addLayout(header)

        # Projects.
        projects_box = QGroupBox("Projects")
        projects_layout = QVBoxLayout(projects_box)
        self.projects_table = QTableWidget(0, len(COLUMNS))
        self.projects_table.setObjectName("projectsTable")
        self.projects_table.setHorizontalHeaderLabels(COLUMNS)
        self.projects_table.verticalHeader().hide()
        self.projects_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.projects_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.projects_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.projects_table.setAlternatingRowColors(True)
        self.projects_table.setShowGrid(False)
        header_view = self.projects_table.horizontalHeader()
        header_view.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header_view.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.projects_table.setMinimumHeight(110)
        self.projects_table.itemSelectionChanged.connect(self._selection_changed)
        projects_layout.addWidget(self.projects_table)
        self.empty_projects = QLabel(
            "You have not joined a project yet. Paste a project's address or invite link with "
            "<b>Join project…</b> to start contributing."
        )
        self.empty_projects.setWordWrap(True)
        self.empty_projects.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_projects.setStyleSheet("color: palette(mid); padding: 12px;")
        projects_layout.addWidget(self.empty_projects)
        row_buttons = QHBoxLayout()
        row_buttons.addStretch(1)
        self.open_page_button = QPushButton("Open project page")
        self.open_page_button.clicked.connect(self._open_selected_page)
        self.leave_button = QPushButton("Leave project…")
        self.leave_button.setObjectName("leaveButton")
        self.leave_button.clicked.connect(self._confirm_leave)
        row_buttons.addWidget(self.open_page_button)
        row_buttons.addWidget(self.leave_button)
        projects_layout.addLayout(row_buttons)

        # Current task.
        task_box = QGroupBox("Current task")
        task_layout = QGridLayout(task_box)
        self.task_label = QLabel("No task running.")
        self.task_progress = QProgressBar()
        self.task_progress.setObjectName("taskProgress")
        self.task_progress.setRange(0, 1000)
        self.task_progress.setValue(0)
        self.task_progress.setTextVisible(True)
        self.task_progress.setFormat("%p%")
        self.task_detail = QLabel("")
        self.task_detail.setStyleSheet("color: palette(mid);")
        task_layout.addWidget(self.task_label, 0, 0)
        task_layout.addWidget(self.task_detail, 0, 1, Qt.AlignmentFlag.AlignRight)
        task_layout.addWidget(self.task_progress, 1, 0, 1, 2)

        # Charts.
        charts = QWidget()
        charts_layout = QHBoxLayout(charts)
        charts_layout.setContentsMargins(0, 0, 0, 0)
        self.loss_chart = LineChart(
            "Training loss",
            "#2563EB",
            "The loss of your local training appears here while a task runs.",
        )
        self.credit_chart = LineChart(
            "Your contribution (credit)",
            "#16A34A",
            "Credit appears here once your first update is accepted.",
        )
        charts_layout.addWidget(self.loss_chart)
        charts_layout.addWidget(self.credit_chart)

        # Activity log.
        log_box = QGroupBox("Activity")
        log_layout = QVBoxLayout(log_box)
        self.activity_log = QPlainTextEdit()
        self.activity_log.setObjectName("activityLog")
        self.activity_log.setReadOnly(True)
        self.activity_log.setMaximumBlockCount(LOG_LINES)
        self.activity_log.setFrameShape(QFrame.Shape.NoFrame)
        log_layout.addWidget(self.activity_log)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(projects_box)
        top_layout.addWidget(task_box)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(charts)
        splitter.addWidget(log_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 3)
        splitter.setStretchFactor(2, 2)
        splitter.setChildrenCollapsible(False)
        root.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self.statusBar().showMessage("Ready")
        self.refresh()

    # --- from the model --------------------------------------------------------------------
    def set_tray_available(self, available: bool) -> None:
        self.tray_available = available
        self.no_tray_banner.setVisible(not available)

    def refresh(self) -> None:
        model = self.model
        self.status_label.setText(model.status_line())
        self.state_icon.setPixmap(tray_icon(model.look).pixmap(40, 40))
        joined = len(model.projects)
        total = sum(p.credit for p in model.projects.values())
        self.substatus_label.setText(
            f"{joined} project{'s' if joined != 1 else ''} joined · {total:g} credit in all"
            if joined
            else "Not contributing yet"
        )
        self.pause_button.setText("Resume" if model.paused else "Pause")
        self._refresh_projects()
        self._refresh_task()
        project = model.project or next(iter(model.projects), None)
        if project is not None:
            self.loss_chart.set_points(model.loss_history.get(project, []))
            self.credit_chart.set_points(model.credit_history.get(project, []))

    def _refresh_projects(self) -> None:
        table = self.projects_table
        selected = self.selected_project()
        projects = sorted(self.model.projects.values(), key=lambda p: p.name)
        table.setRowCount(len(projects))
        for row, p in enumerate(projects):
            cells = (
                p.name,
                p.server_url,
                p.state[:1].upper() + p.state[1:],
                f"{p.credit:g} {p.credit_unit}".strip(),
                str(p.rank) if p.rank else "—",
                _ago(p.last_update),
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column in (3, 4):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                table.setItem(row, column, item)
            if p.name == selected:
                table.selectRow(row)
        if table.currentRow() < 0 and projects:
            table.selectRow(0)
        table.setVisible(bool(projects))
        self.empty_projects.setVisible(not projects)
        self._selection_changed()

    def _refresh_task(self) -> None:
        progress = self.model.progress
        if progress is None:
            self.task_label.setText(
                "No task running." if self.model.projects else "No task: join a project first."
            )
            self.task_detail.setText("")
            self.task_progress.setValue(0)
            return
        self.task_label.setText(f"{progress.project} · task {progress.task_id}")
        self.task_detail.setText(
            f"step {progress.step}/{progress.total_steps} · loss {progress.loss:.4f} · "
            f"{progress.examples_per_second:.0f} examples/s"
        )
        self.task_progress.setValue(round(progress.fraction * 1000))

    def add_log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.activity_log.appendPlainText(f"{stamp}  {line}")

    def on_event(self, event: Event) -> None:
        line = describe_event(event)
        if line is not None:
            self.add_log(line)
        if isinstance(event, Progress):
            self._refresh_task()
            if event.project == (self.model.project or event.project):
                self.loss_chart.set_points(self.model.loss_history.get(event.project, []))
        else:
            self.refresh()

    # --- actions ---------------------------------------------------------------------------
    def selected_project(self) -> str | None:
        row = self.projects_table.currentRow()
        item = self.projects_table.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else None

    def _selection_changed(self) -> None:
        has = self.selected_project() is not None and bool(self.model.projects)
        self.leave_button.setEnabled(has)
        self.open_page_button.setEnabled(has)

    def _toggle_pause(self) -> None:
        if self.model.paused:
            self.resume_requested.emit()
        else:
            self.pause_requested.emit()

    def _open_selected_page(self) -> None:
        name = self.selected_project()
        if name and name in self.model.projects:
            self.open_page_requested.emit(self.model.projects[name].page_url)

    def _confirm_leave(self) -> None:
        name = self.selected_project()
        if not name:
            return
        box = QMessageBox(self)
        box.setObjectName("leaveConfirmation")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Leave project")
        box.setText(f"Leave {name}?")
        box.setInformativeText(
            "Barnraise stops working for this project at once, gives back any task it holds, "
            "and removes this project's key and token from your keychain. The credit you earned "
            "stays on the project's leaderboard. To contribute again you join again."
        )
        leave = box.addButton("Leave project", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)

        def answered() -> None:
            if box.clickedButton() is leave:
                self.leave_requested.emit(name)
            self.leave_box = None

        box.finished.connect(answered)
        self.leave_box = box
        box.open()

    def closeEvent(self, event: QCloseEvent) -> None:
        # With a tray the window only hides; without one, closing it is quitting (never
        # leave a process running that the volunteer cannot see).
        if self.tray_available:
            event.accept()
            return
        event.accept()
        self.quit_requested.emit()
