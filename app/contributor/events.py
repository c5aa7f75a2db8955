"""The engine's typed event stream and the bus that delivers it.

Events are frozen dataclasses with ``to_json()``; subscribers are plain callables invoked on
the engine's own threads, in publication order, never while a lock is held. A subscriber
must be quick and thread-safe: the tray re-emits each event as a Qt signal, the headless
CLI prints it. An exception in one subscriber is logged and does not reach the engine or
the other subscribers.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CreditUpdated",
    "EngineState",
    "Error",
    "Event",
    "EventBus",
    "PolicyChanged",
    "Progress",
    "ProjectScheduleChanged",
    "StateChanged",
    "TaskFinished",
]

log = logging.getLogger(__name__)


class EngineState(enum.StrEnum):
    """What the engine is doing. PAUSED/SUSPENDED mean a task may be held, not computing."""

    STOPPED = "stopped"  # not started, or stopped
    IDLE = "idle"  # running, but no project joined
    WAITING = "waiting"  # policy says not now (schedule, battery, busy, snoozed, ...)
    LEASING = "leasing"  # asking for work (long poll)
    DOWNLOADING = "downloading"
    TRAINING = "training"
    UPLOADING = "uploading"
    PAUSED = "paused"  # the user paused
    SUSPENDED = "suspended"  # the policy suspended a running task
    OFFLINE = "offline"  # the coordinator cannot be reached; retrying with backoff
    BACKOFF = "backoff"  # every project is waiting out a backoff (errors, rejections)
    STOPPING = "stopping"


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class _EventBase:
    at: float = field(default_factory=_now, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        for key, value in data.items():
            if isinstance(value, enum.Enum):
                data[key] = value.value
        return data


@dataclass(frozen=True)
class StateChanged(_EventBase):
    state: EngineState
    previous: EngineState
    project: str | None = None
    task_id: str | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress(_EventBase):
    project: str
    task_id: str
    step: int
    total_steps: int
    examples: int
    loss: float
    examples_per_second: float

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


@dataclass(frozen=True)
class TaskFinished(_EventBase):
    project: str
    task_id: str
    num_examples: int
    compute_seconds: float
    credit: float
    accepted: bool
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why it was not accepted (a coordinator or local rejection code)


@dataclass(frozen=True)
class CreditUpdated(_EventBase):
    project: str
    credit: float  # total credit the coordinator reports for this contributor
    credit_unit: str = ""
    rank: int | None = None
    tasks: int = 0  # tasks finished from this machine (local ledger)


@dataclass(frozen=True)
class PolicyChanged(_EventBase):
    action: str  # "run" | "throttle" | "suspend"
    reasons: tuple[str, ...] = ()
    profile: str = ""


@dataclass(frozen=True)
class Error(_EventBase):
    message: str  # for the user, says what to do next
    project: str | None = None
    code: str = ""  # stable machine code ("untrusted", "unavailable", "trainer_crashed", ...)
    fatal: bool = False  # the engine stopped working on this project


@dataclass(frozen=True)
class ProjectScheduleChanged(_EventBase):
    """The volunteer changed a project's share or mode, or it finished its task and
    stopped (``app.contributor.shares.Mode``)."""

    project: str
    share: int
    mode: str  # a Mode value: active, suspended, no_new_tasks, finish_then_stop


Event = (
    StateChanged
    | Progress
    | TaskFinished
    | CreditUpdated
    | PolicyChanged
    | Error
    | ProjectScheduleChanged
)
Subscriber = Callable[[Event], None]


class EventBus:
    """Thread-safe publish/subscribe with a bounded recent history for late readers."""

    def __init__(self, history: int = 200) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count()
        self._history: list[Event] = []
        self._history_size = history

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Register ``callback``; return a function that unsubscribes it (idempotent)."""
        with self._lock:
            key = next(self._ids)
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers.values())
            self._history.append(event)
            del self._history[: -self._history_size]
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", callback, event.kind)

    def recent(self) -> list[Event]:
        with self._lock:
            return list(self._history)
