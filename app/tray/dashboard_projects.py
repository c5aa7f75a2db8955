"""The Dashboard's per-project controls: suspend or resume a project, let it take no new
tasks, let it finish its task and then stop, and set its resource share.

``ProjectActions.menu_for(status)`` builds the menu of one row (the table's context menu
and the **Project ▾** button show the same one); ``ShareDialog`` is the small spin box that
sets a share. They only emit what the volunteer chose; the TrayApp asks the engine
(``EnginePort.set_project_mode``/``set_project_share``).
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QMenu,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.contributor.energy import describe as describe_energy
from app.contributor.shares import DEFAULT_SHARE, MAX_SHARE, MIN_SHARE, Mode
from app.tray.event_text import ago
from app.tray.status import ProjectStatus

__all__ = ["ProjectActions", "ShareDialog"]

SUSPEND_TEXT = "Suspend"
RESUME_TEXT = "Resume"
NO_NEW_TASKS_TEXT = "No new tasks"
ALLOW_NEW_TASKS_TEXT = "Allow new tasks"
FINISH_THEN_STOP_TEXT = "Finish current task, then stop"
SHARE_TEXT = "Set resource share…"


COLUMNS = (
    "Project",
    "Server",
    "State",
    "Your credit",
    "Rank",
    "Last update",
    "Share",
    "Energy given",
)
SHARE_COLUMN = 6


def project_row(p: ProjectStatus) -> tuple[str, ...]:
    """The cells of a project's row in the Dashboard's table, in ``COLUMNS``' order."""
    return (
        p.name,
        p.server_url,
        p.shown_state,
        f"{p.credit:g} {p.credit_unit}".strip(),
        str(p.rank) if p.rank else "—",
        ago(p.last_update),
        str(p.share),
        describe_energy(p.energy_joules, p.energy_measured_joules),
    )


class ShareDialog(QDialog):
    """One project's resource share in a spin box; ``share_chosen(project, share)`` on OK."""

    share_chosen = Signal(str, int)

    def __init__(self, project: str, share: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.setObjectName("shareDialog")
        self.setWindowTitle(f"Resource share of {project}")
        layout = QVBoxLayout(self)
        text = QLabel(
            f"How much of this computer's time {project} gets, beside your other projects. "
            f"A project with share 200 gets about twice the compute of one with 100; "
            f"{DEFAULT_SHARE} is the default."
        )
        text.setWordWrap(True)
        layout.addWidget(text)
        self.spin = QSpinBox()
        self.spin.setObjectName("shareSpin")
        self.spin.setRange(MIN_SHARE, MAX_SHARE)
        self.spin.setSingleStep(10)
        self.spin.setValue(share)
        self.spin.setAccessibleName(f"Resource share of {project}")
        text.setBuddy(self.spin)
        layout.addWidget(self.spin)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Set share")
        ok.setAccessibleName("Set share")
        buttons.button(QDialogButtonBox.StandardButton.Cancel).setAccessibleName("Cancel")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def accept(self) -> None:
        self.share_chosen.emit(self.project, self.spin.value())
        super().accept()


class ProjectActions(QObject):
    """Builds a project row's menu and the share dialog; emits the volunteer's choice."""

    mode_requested = Signal(str, str)  # project name, a Mode value
    share_requested = Signal(str, int)  # project name, share

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self._window = parent
        self.share_dialog: ShareDialog | None = None

    def menu_for(self, status: ProjectStatus) -> QMenu:
        """A menu of the actions for ``status``'s project (deleted once closed)."""
        menu = QMenu(self._window)
        menu.setObjectName("projectMenu")
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.fill(menu, status)
        return menu

    def fill(self, menu: QMenu, status: ProjectStatus) -> None:
        """Put the actions for ``status``'s project, as its mode allows them, in ``menu``."""
        menu.clear()
        name, mode = status.name, status.mode
        suspended = mode == Mode.SUSPENDED
        self._add(
            menu,
            RESUME_TEXT if suspended else SUSPEND_TEXT,
            name,
            Mode.ACTIVE if suspended else Mode.SUSPENDED,
            "Work for this project again"
            if suspended
            else "No work for this project; a task in hand is checkpointed and given back",
        )
        if mode == Mode.NO_NEW_TASKS:
            self._add(
                menu,
                ALLOW_NEW_TASKS_TEXT,
                name,
                Mode.ACTIVE,
                "Let this project hand out tasks again",
            )
        else:
            action = self._add(
                menu,
                NO_NEW_TASKS_TEXT,
                name,
                Mode.NO_NEW_TASKS,
                "Finish the task in hand, then ask this project for no more",
            )
            action.setEnabled(not suspended)
        action = self._add(
            menu,
            FINISH_THEN_STOP_TEXT,
            name,
            Mode.FINISH_THEN_STOP,
            "Finish the task in hand, then suspend this project",
        )
        action.setEnabled(mode not in (Mode.SUSPENDED, Mode.FINISH_THEN_STOP))
        menu.addSeparator()
        share = menu.addAction(SHARE_TEXT)
        share.setToolTip(f"Now {status.share}; 200 gets twice the compute of 100")
        share.triggered.connect(lambda: self.open_share_dialog(name, status.share))

    def _add(self, menu: QMenu, text: str, name: str, mode: Mode, tip: str) -> QAction:
        action = menu.addAction(text)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        action.triggered.connect(lambda: self.mode_requested.emit(name, mode.value))
        return action

    def open_share_dialog(self, name: str, share: int) -> ShareDialog:
        if self.share_dialog is not None:
            self.share_dialog.close()
        dialog = ShareDialog(name, share, self._window)
        dialog.share_chosen.connect(self.share_requested)
        dialog.finished.connect(lambda _: setattr(self, "share_dialog", None))
        self.share_dialog = dialog
        dialog.open()
        return dialog
