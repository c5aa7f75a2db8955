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
    ProjectScheduleChanged,
    StateChanged,
    TaskFinished,
)
from app.contributor.shares import DEFAULT_SHARE, MODE_WORDS, Mode
from app.tray.engine_port import DashboardView, KeyChangeNotice

__all__ = [
    "CLOSED_WORDS",
    "FINISHED_WORDS",
    "KEY_CHANGED_WORDS",
    "PLAIN_REASONS",
    "STATE_WORDS",
    "STATUS_MAX_CHARS",
    "TRAY_LOOKS",
    "StatusModel",
    "TrayLook",
    "look_for",
    "plain_reasons",
    "shorten",
]


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
# States a project reaches only with a task in hand.
_GOT_WORK = _WORKING - {EngineState.LEASING}

STATE_WORDS = {
    EngineState.STOPPED: "Stopped",
    EngineState.IDLE: "Idle — no project joined",
    EngineState.WAITING: "Waiting",
    EngineState.LEASING: "Asking for work",
    EngineState.DOWNLOADING: "Downloading the model",
    EngineState.TRAINING: "Training",
    EngineState.UPLOADING: "Uploading an update",
    EngineState.PAUSED: "Paused",
    # A task is held but the policy says not now: to the volunteer that is waiting too.
    EngineState.SUSPENDED: "Waiting",
    EngineState.OFFLINE: "Can't reach the server",
    EngineState.BACKOFF: "Waiting to try again",
    EngineState.STOPPING: "Stopping",
}

# The policy's reasons (app/contributor/policy.py ``Reason``) in the volunteer's words. An
# unknown reason (a newer engine) is shown as the engine wrote it.
PLAIN_REASONS = {
    "you are using the computer": "you're using the computer",
    # The engine cannot tell, so it acts as if the volunteer were there: say that.
    "idle time unknown (treated as in use)": "you're using the computer",
    "outside the schedule": "outside your schedule",
    "on battery": "on battery",
    "power source unknown (treated as battery)": "on battery",
    "other programs are busy": "other programs are busy",
    "CPU too hot": "the computer is too hot",
    "GPU too hot": "the graphics card is too hot",
}
# A project's row and menu entry while it cannot get work. A changed key stops it until the
# volunteer decides; a closed project needs no work (the engine asks again only rarely).
KEY_CHANGED_WORDS = "Key changed — check with the organiser"
CLOSED_WORDS = "Closed by its organiser"
FINISHED_WORDS = "Finished — thank you"
SUSPENDED_WORDS = "Suspended by you"
# Error codes that describe a project's state rather than a problem to report as one.
_KEY_CHANGED_CODE = "key_changed"
_CLOSED_CODE = "project_closed"
_FINISHED_CODE = "project_finished"

# Reasons the status line says otherwise (the pause is the state itself).
_SILENT_REASONS = {"paused"}
# The status line is a menu entry and a window title line: a long error message must not
# make either wider than the screen. The whole message stays in the activity log.
STATUS_MAX_CHARS = 72


def plain_reasons(reasons: tuple[str, ...] | list[str]) -> list[str]:
    """The reasons in short, plain words, each once, in the engine's order."""
    plain: list[str] = []
    for reason in reasons:
        if reason in _SILENT_REASONS:
            continue
        text = PLAIN_REASONS.get(reason, reason)
        if text not in plain:
            plain.append(text)
    return plain


def shorten(text: str, limit: int = STATUS_MAX_CHARS) -> str:
    """``text`` on one line, cut at a word with "…" when longer than ``limit``."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


def look_for(state: EngineState, *, throttled: bool, snoozed: bool, error: bool) -> TrayLook:
    """The icon for a state. A snooze looks like a pause (the volunteer asked for both);
    a suspension by the policy, or a throttled run, looks throttled."""
    if state is EngineState.PAUSED or snoozed:
        return TrayLook.PAUSED
    if error or state in (EngineState.BACKOFF, EngineState.OFFLINE):
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
    closed: bool = False
    finished: bool = False  # closed too: it reached its end
    # The engine refuses this project's tasks because its key changed (from the Error event
    # at once; the fingerprints in ``key_change`` follow from the engine's snapshot).
    key_changed: bool = False
    key_change: KeyChangeNotice | None = None
    privacy: str | None = None  # terms agreed to; dp-sgd: epsilon spent on this machine's data
    energy_joules: float = 0.0
    energy_measured_joules: float = 0.0
    share: int = DEFAULT_SHARE  # its resource share (a relative weight)
    mode: str = Mode.ACTIVE.value  # the volunteer's say: ``app.contributor.shares.Mode``

    @property
    def shown_state(self) -> str:
        """What its row and menu entry say: a changed key or a closure before any state,
        then a suspension; no new tasks (and finishing, then stopping) after the state."""
        if self.key_changed:
            return KEY_CHANGED_WORDS
        if self.finished:
            return FINISHED_WORDS
        if self.closed:
            return CLOSED_WORDS
        if self.mode == Mode.SUSPENDED:
            return SUSPENDED_WORDS
        state = self.state[:1].upper() + self.state[1:]
        if self.mode in (Mode.NO_NEW_TASKS, Mode.FINISH_THEN_STOP):
            return f"{state} · {MODE_WORDS[Mode(self.mode)]}"
        return state


@dataclass
class StatusModel:
    """The tray's picture of the engine; ``apply(event)`` on the GUI thread."""

    state: EngineState = EngineState.STOPPED
    project: str | None = None
    reasons: tuple[str, ...] = ()
    policy_action: str = "run"
    # Why the policy throttles or suspends, kept apart from ``reasons``: each StateChanged
    # brings its own, and the one that starts throttled training brings none.
    policy_reasons: tuple[str, ...] = ()
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

    def load(self, snapshot: DashboardView) -> None:
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
                closed=p.closed,
                finished=p.finished,
                key_changed=p.key_change is not None,
                key_change=p.key_change,
                privacy=p.privacy,
                energy_joules=p.energy_joules,
                energy_measured_joules=p.energy_measured_joules,
                share=p.share,
                mode=p.mode,
            )
            for p in snapshot.projects
        }

    def set_key_change(self, name: str, notice: KeyChangeNotice | None) -> None:
        """The engine's answer about ``name``'s key: a notice to decide on, or None once the
        new key is pinned (the project works again)."""
        status = self._project(name)
        status.key_change = notice
        status.key_changed = notice is not None

    @property
    def key_changes(self) -> list[ProjectStatus]:
        """Projects stopped because their key changed, by name."""
        return sorted((p for p in self.projects.values() if p.key_changed), key=lambda p: p.name)

    @property
    def all_closed(self) -> bool:
        """Every joined project is closed: nothing to do, and nothing wrong."""
        return bool(self.projects) and all(p.closed for p in self.projects.values())

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
                status = self.projects[event.project]
                if event.state in _GOT_WORK:
                    # It handed out a task, signed by a trusted key: open, and trusted
                    # (the new key may have been accepted elsewhere, `barnraise trust`).
                    status.closed = status.finished = False
                    status.key_changed, status.key_change = False, None
                status.state = STATE_WORDS.get(event.state, event.state)
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
            self.policy_reasons = event.reasons
            if event.action != "run":
                self.reasons = event.reasons
        elif isinstance(event, ProjectScheduleChanged):
            status = self._project(event.project)
            status.share, status.mode = event.share, event.mode
        elif isinstance(event, Error):
            if event.code in (_CLOSED_CODE, _FINISHED_CODE) and event.project:
                status = self._project(event.project)  # a state, not a problem
                status.closed, status.finished = True, event.code == _FINISHED_CODE
            elif event.code == _KEY_CHANGED_CODE and event.project:
                self._project(event.project).key_changed = True  # the status line says so
            else:
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
        waiting_on_volunteer = bool(self.key_changes) and self.state not in _WORKING
        look = look_for(
            self.state,
            throttled=self.policy_action == "throttle",
            snoozed=self.snoozed,
            error=self.last_error is not None or waiting_on_volunteer,
        )
        if look is TrayLook.ERROR and self.all_closed and self.last_error is None:
            return TrayLook.IDLE  # the engine backs off from closed projects: not a fault
        return look

    @property
    def offline(self) -> bool:
        """The coordinator cannot be reached: the tray offers "Retry now"."""
        return self.state is EngineState.OFFLINE

    def status_line(self) -> str:
        """One short, plain line for the menu and the window: what it does now and why."""
        if self.snoozed and self.snoozed_until is not None:
            return f"Snoozed until {time.strftime('%a %H:%M', time.localtime(self.snoozed_until))}"
        if self.offline:
            return STATE_WORDS[EngineState.OFFLINE]  # the network error itself is in the log
        changed = self.key_changes
        if changed and self.state not in _WORKING and self.state is not EngineState.PAUSED:
            names = ", ".join(p.name for p in changed)
            return shorten(f"{names}: {KEY_CHANGED_WORDS[:1].lower()}{KEY_CHANGED_WORDS[1:]}")
        if self.last_error is not None and self.state is not EngineState.PAUSED:
            return shorten(f"Problem: {self.last_error.message}")
        if self.all_closed and self.state in (EngineState.BACKOFF, EngineState.IDLE):
            only = next(iter(self.projects)) if len(self.projects) == 1 else None
            if only and self.projects[only].finished:
                return shorten(f"Nothing to do: {only} has finished — thank you")
            return shorten(
                f"Nothing to do: {only} is closed"
                if only
                else "Nothing to do: your projects are closed or finished"
            )
        if self.starting and self.state is EngineState.STOPPED:
            return "Starting…"
        words = STATE_WORDS.get(self.state, str(self.state))
        if self.state in _WORKING and self.policy_action == "throttle":
            words += " slowly" if self.state is EngineState.TRAINING else " (slowed down)"
        if self.state is EngineState.TRAINING and self.progress is not None:
            words += f" — {self.progress.fraction:.0%}"
        reasons = plain_reasons(self.reasons)
        if reasons and self.state in (EngineState.WAITING, EngineState.SUSPENDED):
            words += f": {reasons[0]}"  # the first is enough; the tooltip lists them all
        return shorten(words)

    def tooltip(self) -> str:
        """Tray tooltip: state, why, project, progress (plain text: some trays show no markup)."""
        lines = [f"Barnraise — {self.status_line()}"]
        waiting = self.state in (EngineState.WAITING, EngineState.SUSPENDED)
        throttled = self.state in _WORKING and self.policy_action == "throttle"
        reasons = plain_reasons(self.reasons if waiting else self.policy_reasons)
        if reasons and (waiting or throttled):
            lines.append(f"Why: {', '.join(reasons)}")
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
