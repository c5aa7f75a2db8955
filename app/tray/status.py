"""What the tray shows, derived from the engine's events: one small model, no Qt.

The tray icon, its tooltip and menu, and the Dashboard all read ``StatusModel``; the GUI
thread feeds it the events the bridge re-emits. Keeping the derivation here (and not in
widgets) makes it testable without a display and keeps the menu and tooltip consistent.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from app.contributor.events import (
    CreditUpdated,
    EngineState,
    Error,
    Event,
    PolicyChanged,
    Progress,
    StateChanged,
    TaskFinished,
)
from app.tray.engine_port import EngineSnapshot

__all__ = ["TRAY_LOOKS", "StatusModel", "TrayLook", "look_for"]


class TrayLook(enum.StrEnum):
    """The five faces of the tray icon (assets/icons/tray-<look>.svg)."""

    IDLE = "idle"
    TRAINING = "training"
    THROTTLED = "throttled"
    PAUSED = "paused"
    ERROR = "error"


TRAY_LOOKS = tuple(TrayLook)

_WORKING = {
    EngineState.LEASING,
    EngineState.DOWNLOADING,
    EngineState.TRAINING,
    EngineState.UPLOADING,
}

STATE_WORDS = {
    EngineState.STOPPED: "Stopped",
    EngineState.IDLE: "Idle — no project joined",
    EngineState.WAITING: "Waiting",
    EngineState.LEASING: "Asking for work",
    EngineState.DOWNLOADING: "Downloading the model",
    EngineState.TRAINING: "Training",
    EngineState.UPLOADING: "Uploading an update",
    EngineState.PAUSED: "Paused",
    EngineState.SUSPENDED: "Held back",
    EngineState.BACKOFF: "Coordinator unreachable, retrying",
    EngineState.STOPPING: "Stopping",
}


def look_for(state: EngineState, *, throttled: bool, snoozed: bool, error: bool) -> TrayLook:
    """The icon for a state. A snooze looks like a pause (the volunteer asked for both);
    a suspension by the policy, or a throttled run, looks throttled."""
    if state is EngineState.PAUSED or snoozed:
        return TrayLook.PAUSED
    if error or state is EngineState.BACKOFF:
        return TrayLook.ERROR
    if state is EngineState.SUSPENDED:
        return TrayLook.THROTTLED
    if state in _WORKING:
        return TrayLook.THROTTLED if throttled else TrayLook.TRAINING
    return TrayLook.IDLE


@dataclass
class ProjectStatus:
    name: str
    server_url: str = ""
    page_url: str = ""
    state: str = "waiting"
    credit: float = 0.0
    credit_unit: str = ""
    rank: int | None = None
    tasks: int = 0
    last_update: float | None = None


@dataclass
class StatusModel:
    """The tray's picture of the engine; ``apply(event)`` on the GUI thread."""

    state: EngineState = EngineState.STOPPED
    project: str | None = None
    reasons: tuple[str, ...] = ()
    policy_action: str = "run"
    snoozed_until: float | None = None
    progress: Progress | None = None
    last_error: Error | None = None
    projects: dict[str, ProjectStatus] = field(default_factory=dict)
    # (time, loss) per project and (time, cumulative credit) per project, for the charts.
    loss_history: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    credit_history: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    accepted_updates: int = 0
    starting: bool = False  # start() was asked and the engine has not reported a state yet

    HISTORY_LIMIT = 2000  # points kept per series; the charts draw a window of these

    def load(self, snapshot: EngineSnapshot) -> None:
        self.state = snapshot.state
        self.project = snapshot.project
        self.reasons = snapshot.reasons
        self.snoozed_until = snapshot.snoozed_until
        self.projects = {
            p.name: ProjectStatus(
                name=p.name,
                server_url=p.server_url,
                page_url=p.page_url,
                state=p.state,
                credit=p.credit,
                credit_unit=p.credit_unit,
                rank=p.rank,
                tasks=p.tasks,
                last_update=p.last_update,
            )
            for p in snapshot.projects
        }

    def apply(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.starting = False
            self.state = event.state
            self.reasons = event.reasons
            if event.project is not None:
                self.project = event.project
            if event.state in _WORKING:
                self.last_error = None  # working again: the error is behind us
                self.snoozed_until = None  # computing again: any snooze has ended
            elif event.state is EngineState.IDLE:
                self.last_error = None
            if event.state not in _WORKING:
                self.progress = None
            if event.project in self.projects:
                self.projects[event.project].state = STATE_WORDS.get(event.state, event.state)
        elif isinstance(event, Progress):
            self.progress = event
            self.project = event.project
            self._append(self.loss_history, event.project, event.at, event.loss)
        elif isinstance(event, TaskFinished):
            if event.accepted:
                self.accepted_updates += 1
                status = self._project(event.project)
                status.last_update = event.at
                status.tasks += 1
            self.progress = None
        elif isinstance(event, CreditUpdated):
            status = self._project(event.project)
            status.credit = event.credit
            status.credit_unit = event.credit_unit
            status.rank = event.rank
            status.tasks = max(status.tasks, event.tasks)
            self._append(self.credit_history, event.project, event.at, event.credit)
        elif isinstance(event, PolicyChanged):
            self.policy_action = event.action
            if event.action != "run":
                self.reasons = event.reasons
        elif isinstance(event, Error):
            self.last_error = event

    def _project(self, name: str) -> ProjectStatus:
        if name not in self.projects:
            self.projects[name] = ProjectStatus(name=name)
        return self.projects[name]

    def _append(
        self, series: dict[str, list[tuple[float, float]]], name: str, at: float, value: float
    ) -> None:
        points = series.setdefault(name, [])
        points.append((at, value))
        del points[: -self.HISTORY_LIMIT]

    # --- what the tray shows ---------------------------------------------------------------
    @property
    def snoozed(self) -> bool:
        return self.snoozed_until is not None and self.snoozed_until > time.time()

    @property
    def paused(self) -> bool:
        return self.state is EngineState.PAUSED or self.snoozed

    @property
    def look(self) -> TrayLook:
        return look_for(
            self.state,
            throttled=self.policy_action == "throttle",
            snoozed=self.snoozed,
            error=self.last_error is not None,
        )

    def status_line(self) -> str:
        """One line for the menu and the window: what it does now and why."""
        if self.snoozed and self.snoozed_until is not None:
            return f"Snoozed until {time.strftime('%a %H:%M', time.localtime(self.snoozed_until))}"
        if self.last_error is not None and self.state is not EngineState.PAUSED:
            return f"Problem: {self.last_error.message}"
        if self.starting and self.state is EngineState.STOPPED:
            return "Starting…"
        words = STATE_WORDS.get(self.state, str(self.state))
        if self.state in _WORKING and self.policy_action == "throttle":
            words += " (throttled)"
        if self.state is EngineState.TRAINING and self.progress is not None:
            words += f" — {self.progress.fraction:.0%}"
        reasons = [r for r in self.reasons if r not in ("paused",)]
        if reasons and self.state in (EngineState.WAITING, EngineState.SUSPENDED):
            words += f" ({', '.join(reasons)})"
        return words

    def tooltip(self) -> str:
        """Tray tooltip: state, project, progress (plain text: some trays show no markup)."""
        lines = [f"Barnraise — {self.status_line()}"]
        if self.project:
            lines.append(f"Project: {self.project}")
        if self.progress is not None:
            p = self.progress
            lines.append(
                f"Task: step {p.step}/{p.total_steps} ({p.fraction:.0%}), loss {p.loss:.3f}"
            )
        elif not self.projects:
            lines.append("Join a project to start contributing")
        return "\n".join(lines)
