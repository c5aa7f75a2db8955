"""The main window: joined projects, the current task, charts, and the activity log."""

from __future__ import annotations

import time

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QFont, QGuiApplication, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMenu,
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

from app.contributor.events import Event
from app.tray.chart import LineChart
from app.tray.dashboard_projects import COLUMNS, SHARE_COLUMN, ProjectActions, project_row
from app.tray.elided_label import ElidedLabel
from app.tray.event_text import describe_event
from app.tray.icons import app_icon, tray_icon
from app.tray.status import StatusModel, TrayLook

__all__ = ["Dashboard", "ElidedLabel", "describe_event"]

LOG_LINES = 500  # the activity log keeps this many lines
# Engine events come dozens a second while short tasks run; redrawing the window on each
# (status, log, table, progress bar, charts) kept the GUI thread a fifth to all of a core
# busy. Four times a second reads as live.
REFRESH_MS = 250


class Dashboard(QMainWindow):
    """Shows what the engine does; its buttons ask the TrayApp, which asks the engine."""

    pause_requested = Signal()
    resume_requested = Signal()
    retry_requested = Signal()  # "Retry now" while the server cannot be reached
    join_requested = Signal()
    preferences_requested = Signal()
    leave_requested = Signal(str)  # project name, after the volunteer confirmed
    key_review_requested = Signal(str)  # project name whose key changed: show the decision
    open_page_requested = Signal(str)  # project page URL
    project_mode_requested = Signal(str, str)  # project name, a shares.Mode value
    project_share_requested = Signal(str, int)  # project name, its new resource share
    quit_requested = Signal()

    def __init__(self, model: StatusModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.tray_available = True
        self.leave_box: QMessageBox | None = None
        self._shown_rows: list[tuple[str, ...]] | None = None  # the project table's cells
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_later)
        self._pending_log: list[str] = []  # event lines for the next refresh
        self._shown_buttons: tuple[bool, bool] | None = None  # (paused, offline) shown
        self._shown_look: TrayLook | None = None
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
        self.status_label = ElidedLabel()
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.status_label.setFont(font)
        self.status_label.setObjectName("statusLabel")
        self.substatus_label = ElidedLabel()
        self.substatus_label.setStyleSheet("color: palette(mid);")
        titles.addWidget(self.status_label)
        titles.addWidget(self.substatus_label)
        header.addLayout(titles, 1)
        self.retry_button = QPushButton("Retry now")
        self.retry_button.setObjectName("retryButton")
        self.retry_button.setToolTip("Try to reach the server again now")
        self.retry_button.clicked.connect(self.retry_requested)
        self.retry_button.hide()
        self.pause_button = QPushButton("Pause")
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.clicked.connect(self._toggle_pause)
        self.join_button = QPushButton("Join project…")
        self.join_button.setObjectName("joinButton")
        self.join_button.clicked.connect(self.join_requested)
        self.prefs_button = QPushButton("Preferences…")
        self.prefs_button.clicked.connect(self.preferences_requested)
        for button in (self.retry_button, self.pause_button, self.join_button, self.prefs_button):
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
        # Suspend/resume, no new tasks, finish then stop, the share: a row's context menu,
        # and the same menu on the "Project" button (keyboard, discoverable).
        self.project_actions = ProjectActions(self)
        self.project_actions.mode_requested.connect(self.project_mode_requested)
        self.project_actions.share_requested.connect(self.project_share_requested)
        self.projects_table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.projects_table.customContextMenuRequested.connect(self._project_context_menu)
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
        self.review_key_button = QPushButton("Review key change…")
        self.review_key_button.setObjectName("reviewKeyButton")
        self.review_key_button.setToolTip(
            "This project's server signs with a new key: decide whether to trust it"
        )
        self.review_key_button.clicked.connect(self._review_selected_key)
        self.review_key_button.hide()
        self.project_button = QPushButton("Project")
        self.project_button.setObjectName("projectButton")
        self.project_button.setAccessibleName("Project actions")
        self.project_button.setToolTip(
            "Suspend or resume the selected project, let it finish its task, or set its share"
        )
        self.project_button.setMenu(QMenu(self.project_button))
        self.project_button.menu().aboutToShow.connect(self._fill_project_button_menu)
        self.open_page_button = QPushButton("Open project page")
        self.open_page_button.clicked.connect(self._open_selected_page)
        self.leave_button = QPushButton("Leave project…")
        self.leave_button.setObjectName("leaveButton")
        self.leave_button.clicked.connect(self._confirm_leave)
        row_buttons.addWidget(self.review_key_button)
        row_buttons.addWidget(self.project_button)
        row_buttons.addWidget(self.open_page_button)
        row_buttons.addWidget(self.leave_button)
        projects_layout.addLayout(row_buttons)

        # Current task.
        task_box = QGroupBox("Current task")
        task_layout = QGridLayout(task_box)
        self.task_label = ElidedLabel("No task running.")
        self.task_progress = QProgressBar()
        self.task_progress.setObjectName("taskProgress")
        self.task_progress.setRange(0, 1000)
        self.task_progress.setValue(0)
        self.task_progress.setTextVisible(True)
        self.task_progress.setFormat("%p%")
        self.task_detail = ElidedLabel("")
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
        """Redraw everything from the model, now."""
        self._refresh_header()
        self._refresh_body()

    def _refresh_header(self) -> None:
        # The status line and the buttons: what a click changes (Pause/Resume, Retry now).
        model = self.model
        self.status_label.setText(model.status_line())
        if model.look is not self._shown_look:
            self._shown_look = model.look
            self.state_icon.setPixmap(tray_icon(model.look).pixmap(40, 40))
        joined = len(model.projects)
        total = sum(p.credit for p in model.projects.values())
        self.substatus_label.setText(
            f"{joined} project{'s' if joined != 1 else ''} joined · {total:g} credit in all"
            if joined
            else "Not contributing yet"
        )
        self.pause_button.setText("Resume" if model.paused else "Pause")
        self.retry_button.setVisible(model.offline)
        self._shown_buttons = (model.paused, model.offline)

    def _refresh_body(self) -> None:
        model = self.model
        self._refresh_projects()
        self._refresh_task()
        project = model.project or next(iter(model.projects), None)
        if project is not None:
            self.loss_chart.set_points(model.loss_history.get(project, []))
            self.credit_chart.set_points(model.credit_history.get(project, []))

    def _refresh_projects(self) -> None:
        table = self.projects_table
        projects = sorted(self.model.projects.values(), key=lambda p: p.name)
        privacy_of = {p.name: p.privacy for p in projects}
        rows = [project_row(p) for p in projects]
        shown = [(*row, privacy_of.get(row[0]) or "") for row in rows]
        if shown == self._shown_rows:
            return  # unchanged: rebuilding the cells on every engine event cost real CPU
        self._shown_rows = shown
        selected = self.selected_project()
        table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            privacy = privacy_of.get(cells[0])
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if privacy:  # the terms agreed to, and the epsilon spent on this machine's data
                    item.setToolTip(f"Privacy: {privacy}")
                if column in (3, 4, SHARE_COLUMN):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                table.setItem(row, column, item)
            if cells[0] == selected:
                table.selectRow(row)
        if table.currentRow() < 0 and rows:
            table.selectRow(0)
        table.setVisible(bool(rows))
        self.empty_projects.setVisible(not rows)
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
        value = round(progress.fraction * 1000)
        if value != self.task_progress.value():  # setValue repaints at once, even unchanged
            self.task_progress.setValue(value)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.fit_to_screen()

    def fit_to_screen(self) -> None:
        """Shrink (and move) the window into its screen's free area: the default size is for
        a desktop, and a window wider than the screen hides its own buttons."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            return
        free = screen.availableGeometry()
        frame = self.frameGeometry()
        extra_w = frame.width() - self.width()
        extra_h = frame.height() - self.height()
        width = min(self.width(), free.width() - extra_w)
        height = min(self.height(), free.height() - extra_h)
        if (width, height) != (self.width(), self.height()):
            self.resize(width, height)
        frame = self.frameGeometry()
        x = min(max(frame.x(), free.left()), free.right() - frame.width() + 1)
        y = min(max(frame.y(), free.top()), free.bottom() - frame.height() + 1)
        if (x, y) != (frame.x(), frame.y()):
            self.move(x, y)

    def add_log(self, line: str) -> None:
        """Append a line to the activity log now (after any event lines still pending)."""
        self._flush_log()
        self.activity_log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {line}")

    def _flush_log(self) -> None:
        if self._pending_log:
            lines, self._pending_log = self._pending_log, []
            self.activity_log.appendPlainText("\n".join(lines))

    def on_event(self, event: Event) -> None:
        """Take an engine event: what a button shows (Pause/Resume, Retry now) changes now;
        the log and the rest of the window follow within REFRESH_MS, in one redraw."""
        line = describe_event(event)
        if line is not None:
            self._pending_log.append(f"{time.strftime('%H:%M:%S')}  {line}")
        if (self.model.paused, self.model.offline) != self._shown_buttons:
            self._refresh_header()
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def _refresh_later(self) -> None:
        self._flush_log()
        self.refresh()

    # --- actions ---------------------------------------------------------------------------
    def selected_project(self) -> str | None:
        row = self.projects_table.currentRow()
        item = self.projects_table.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else None

    def _selection_changed(self) -> None:
        name = self.selected_project()
        has = name is not None and bool(self.model.projects)
        self.leave_button.setEnabled(has)
        self.open_page_button.setEnabled(has)
        self.project_button.setEnabled(has)
        status = self.model.projects.get(name) if name else None
        self.review_key_button.setVisible(status is not None and status.key_changed)

    def project_menu(self, name: str) -> QMenu | None:
        """The actions for project ``name`` (None: not joined)."""
        status = self.model.projects.get(name)
        return self.project_actions.menu_for(status) if status is not None else None

    def _project_context_menu(self, at: QPoint) -> None:
        item = self.projects_table.itemAt(at)
        if item is None:
            return
        self.projects_table.selectRow(item.row())
        name = self.selected_project()
        menu = self.project_menu(name) if name else None
        if menu is not None:
            menu.popup(self.projects_table.viewport().mapToGlobal(at))

    def _fill_project_button_menu(self) -> None:
        name = self.selected_project()
        status = self.model.projects.get(name) if name else None
        if status is not None:
            self.project_actions.fill(self.project_button.menu(), status)

    def _review_selected_key(self) -> None:
        name = self.selected_project()
        if name:
            self.key_review_requested.emit(name)

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
        if name:
            self.confirm_leave(name)

    def confirm_leave(self, name: str) -> None:
        """Ask before leaving ``name`` (its keys go); ``leave_requested`` only on yes."""
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
