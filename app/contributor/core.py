"""What the engine's parts share: one lock, the engine's state, the task in hand.

``EngineCore`` is owned by ``Controller`` (the façade in ``controller.py``) and handed to
the parts that do the work: ``PolicyDriver`` (whether and how hard to compute),
``ProjectBook`` (the joined projects, their backoff), ``TaskFlow`` (one task, lease to
ledger), ``TrainerReports`` (the trainer's progress) and the ``Heartbeat``. Everything here is guarded by ``lock``; ``wake`` (on the same
lock) wakes the main loop early, ``stop`` says the engine is stopping and ``cancel`` cuts
long polls and backoff sleeps on the way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.contributor import policy
from app.contributor.client import RetryPolicy
from app.contributor.credentials import CredentialStore
from app.contributor.events import EngineState, Error, Event, EventBus, StateChanged
from app.contributor.ledger import Ledger
from app.contributor.paths import EnginePaths
from app.contributor.sensors import SensorReadings
from app.contributor.settings import Settings
from app.contributor.snapshot import (
    DecisionSnapshot,
    EngineSnapshot,
    ProjectSnapshot,
    TaskSnapshot,
    TrainerSnapshot,
)
from app.contributor.trainer import TrainerHandle

__all__ = ["MAX_HOLD_SUSPENDED_S", "CurrentTask", "EngineCore", "EngineOptions"]

log = logging.getLogger(__name__)

# Hold a leased task this long while suspended/paused, then give it back to the project.
MAX_HOLD_SUSPENDED_S = 300.0


@dataclass(frozen=True)
class EngineOptions:
    insecure: bool = False
    lease_wait_s: float = 25.0
    sensor_interval_s: float = 5.0
    checkpoint_interval_s: float | None = None  # None: the setting
    max_hold_suspended_s: float = MAX_HOLD_SUSPENDED_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    start_trainer_eagerly: bool = True


@dataclass
class CurrentTask:
    """The task being trained: which, how far, and how long it sat paused. Filled in by
    ``TaskFlow.train``, updated from the trainer's messages, read by the deadline check."""

    key: str  # the project's key (server and name)
    project: str
    task_id: str
    useful_until: Any = None  # as the task's manifest says (epoch seconds, if a number)
    issued_at: Any = None
    started_at: float = 0.0
    step: int = 0
    total_steps: int = 0
    paused_s: float = 0.0  # wall time the trainer sat paused, for the running time
    paused_at: float | None = None
    loss: float | None = None  # from the first progress report on
    compute_s: float | None = None

    def copy(self) -> CurrentTask:
        return dataclasses.replace(self)

    def snapshot(self) -> TaskSnapshot:
        return TaskSnapshot(**dataclasses.asdict(self))


class EngineCore:
    """The engine's shared state (see the module docstring). ``trainer`` is set by the
    ``Controller`` right after construction (it needs the first policy decision)."""

    trainer: TrainerHandle

    def __init__(
        self,
        *,
        paths: EnginePaths,
        credentials: CredentialStore,
        options: EngineOptions,
        settings: Settings,
        clock: Callable[[], datetime],
    ) -> None:
        self.paths = paths
        self.credentials = credentials
        self.options = options
        self.settings = settings
        self.clock = clock
        self.events = EventBus()
        self.ledger = Ledger(paths.ledger_path)

        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.cancel = threading.Event()  # cuts long polls and backoff sleeps on stop
        self.state = EngineState.STOPPED
        self.state_project: str | None = None
        self.state_task: str | None = None
        self.policy_state = policy.PolicyState()
        self.readings = SensorReadings()
        self.decision: policy.Decision | None = None
        self.suspended_since: float | None = None
        self.current: CurrentTask | None = None
        self.last_error: str | None = None

    # --- events ----------------------------------------------------------------------------
    def publish(self, event: Event) -> None:
        self.events.publish(event)

    def set_state(
        self,
        state: EngineState,
        *,
        project: str | None = None,
        task_id: str | None = None,
        reasons: tuple[str, ...] = (),
    ) -> None:
        with self.lock:
            previous = self.state
            if previous == state and self.state_project == project and self.state_task == task_id:
                return
            if previous == EngineState.STOPPING and state not in (EngineState.STOPPED,):
                return  # nothing but STOPPED follows STOPPING
            self.state, self.state_project, self.state_task = state, project, task_id
        self.publish(
            StateChanged(
                state=state, previous=previous, project=project, task_id=task_id, reasons=reasons
            )
        )

    def error(
        self, message: str, *, project: str | None = None, code: str = "", fatal: bool = False
    ) -> None:
        log.warning("%s%s", f"[{project}] " if project else "", message)
        self.last_error = message
        self.publish(Error(message=message, project=project, code=code, fatal=fatal))

    # --- the main loop's helpers ---------------------------------------------------------
    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, or until woken (a command, a decision) or stopped."""
        with self.wake:
            if not self.stop.is_set():
                self.wake.wait(seconds)

    def notify(self) -> None:
        with self.lock:
            self.wake.notify_all()

    def reasons(self) -> tuple[str, ...]:
        decision = self.decision
        return tuple(decision.describe()) if decision else ()

    def paused_state(self) -> EngineState:
        """PAUSED when the volunteer asked for it (pause, snooze), else SUSPENDED."""
        return (
            EngineState.PAUSED
            if self.policy_state.paused or self.policy_state.snoozed_until
            else EngineState.SUSPENDED
        )

    # --- the snapshot ----------------------------------------------------------------------
    def snapshot(
        self, projects: Callable[[], tuple[ProjectSnapshot, ...]], *, failure: str | None
    ) -> EngineSnapshot:
        """The engine at this moment; ``projects`` lists the joined projects."""
        with self.lock:
            decision = self.decision
            task = self.current.snapshot() if self.current else None
            policy_state = self.policy_state
            state, state_project = self.state, self.state_project
        trainer = self.trainer
        return EngineSnapshot(
            state=state,
            project=state_project,
            task=task,
            paused=policy_state.paused,
            snoozed_until=policy_state.snoozed_until,
            decision=None
            if decision is None
            else DecisionSnapshot(
                action=decision.action.value,
                reasons=tuple(decision.describe()),
                summary=decision.summary(),
            ),
            limits=trainer.limits,
            trainer=TrainerSnapshot(pid=trainer.pid, device=trainer.device, starts=trainer.starts),
            projects=projects(),
            last_error=self.last_error,
            failure=failure,
        )
