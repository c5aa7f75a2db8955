"""The only two ways anything crosses into the GUI thread: engine events and task results.

``EngineBridge`` subscribes to the engine and re-emits each event as a Qt signal; because
the bridge lives in the GUI thread, Qt queues the emission from the engine's thread and the
slots run on the GUI thread. ``TaskRunner`` runs blocking calls (network, keychain, engine
commands) on worker threads and delivers ``on_success(result)`` / ``on_error(exc)`` on the
GUI thread the same way. Nothing else in the tray touches a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.contributor.events import (
    CreditUpdated,
    Error,
    Event,
    PolicyChanged,
    Progress,
    StateChanged,
    TaskFinished,
)
from app.tray.engine_port import EnginePort

__all__ = ["EngineBridge", "TaskRunner"]

log = logging.getLogger(__name__)

# Engine commands run one at a time, in the order the volunteer gave them (pause then
# resume must not arrive as resume then pause); network look-ups run beside them so a slow
# coordinator never delays a pause.
NETWORK_WORKERS = 4


class EngineBridge(QObject):
    """Re-emits the engine's events as signals on the GUI thread."""

    any_event = Signal(object)  # every event, for the activity log
    state_changed = Signal(object)  # StateChanged
    progress = Signal(object)  # Progress
    task_finished = Signal(object)  # TaskFinished
    credit_updated = Signal(object)  # CreditUpdated
    policy_changed = Signal(object)  # PolicyChanged
    error = Signal(object)  # Error

    def __init__(self, engine: EnginePort, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self._unsubscribe: Callable[[], None] | None = engine.subscribe(self._on_engine_event)

    def _on_engine_event(self, event: Event) -> None:
        # Runs on an engine thread: emit only; Qt queues it to the GUI thread.
        self.any_event.emit(event)
        if isinstance(event, StateChanged):
            self.state_changed.emit(event)
        elif isinstance(event, Progress):
            self.progress.emit(event)
        elif isinstance(event, TaskFinished):
            self.task_finished.emit(event)
        elif isinstance(event, CreditUpdated):
            self.credit_updated.emit(event)
        elif isinstance(event, PolicyChanged):
            self.policy_changed.emit(event)
        elif isinstance(event, Error):
            self.error.emit(event)

    def close(self) -> None:
        """Stop listening (idempotent)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()


Callback = Callable[[Any], None]


class TaskRunner(QObject):
    """Run blocking calls off the GUI thread; deliver results back on it."""

    _finished = Signal(object, object)  # (callback, value), emitted from a worker thread
    busy_changed = Signal(int)  # how many tasks are running (for a spinner or a test)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._commands = ThreadPoolExecutor(1, thread_name_prefix="tray-engine")
        self._network = ThreadPoolExecutor(NETWORK_WORKERS, thread_name_prefix="tray-net")
        self._finished.connect(self._deliver)
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def run(
        self,
        call: Callable[[], Any],
        on_success: Callback | None = None,
        on_error: Callback | None = None,
        *,
        ordered: bool = False,
    ) -> Future[Any] | None:
        """Run ``call()`` on a worker; ``ordered`` puts it in the one-at-a-time engine queue.

        ``on_error`` gets the exception; without one it is logged. Returns None once closed.
        """
        if self._closed:
            return None
        with self._lock:
            self._running += 1
        self.busy_changed.emit(self.running)

        def work() -> None:
            try:
                value = call()
            except Exception as exc:
                if on_error is None:
                    log.exception("background task %r failed", call)
                self._finished.emit(on_error, exc)
            else:
                self._finished.emit(on_success, value)

        pool = self._commands if ordered else self._network
        try:
            return pool.submit(work)
        except RuntimeError:  # shut down in between
            return None

    def _deliver(self, callback: Callback | None, value: Any) -> None:
        with self._lock:
            self._running -= 1
        self.busy_changed.emit(self.running)
        if callback is not None and not self._closed:
            callback(value)

    def close(self, wait: bool = True) -> None:
        """Refuse new tasks; wait for the engine queue to drain (idempotent)."""
        self._closed = True
        self._network.shutdown(wait=False, cancel_futures=True)
        self._commands.shutdown(wait=wait)
