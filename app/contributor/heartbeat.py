"""Keep the lease of the task in hand alive while it trains.

One thread per task, from the start of training until it ends. It heartbeats about three
times per lease, and more often after a failed beat while the lease may still live; it
judges the task's deadline at least every ``DEADLINE_CHECK_S`` (also while the trainer is
paused, when no progress reports come); and it gives the task back after the engine sat
suspended longer than ``max_hold_suspended_s``, or at once when the volunteer suspended
the project (``Project.held``: a suspension that came while the task was still being
leased or downloaded). A lost lease stops the trainer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.contributor.client import Cancelled, LeasedTask, LeaseLostError
from app.contributor.core import CurrentTask, EngineCore
from app.contributor.projects import Project

__all__ = ["DEADLINE_CHECK_S", "Heartbeat"]

log = logging.getLogger(__name__)

# While a task is in hand, its deadline is judged at least this often (also while paused).
DEADLINE_CHECK_S = 5.0


class Heartbeat:
    """``start()`` the thread; ``lost`` is set when the coordinator no longer holds the
    lease; ``stop()`` ends the thread (it does not wait for it)."""

    def __init__(
        self,
        core: EngineCore,
        project: Project,
        task: LeasedTask,
        *,
        check_late: Callable[[CurrentTask], None],
    ) -> None:
        self._core = core
        self._project = project
        self._task = task
        self._check_late = check_late
        self.lost = threading.Event()
        self._done = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="barnraise-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        """Keep the lease alive until stopped. Survives any single failure: a cut answer
        or an unreachable coordinator is tried again sooner, while the lease may still live."""
        core, project, task = self._core, self._project, self._task
        deadline = task.deadline
        issued = float(task.manifest.get("issued_at", time.time()))
        interval = max(10.0, deadline - issued) / 3
        next_beat = time.monotonic() + interval
        while not self._done.wait(max(0.0, min(DEADLINE_CHECK_S, next_beat - time.monotonic()))):
            with core.lock:
                suspended_since = core.suspended_since
                current = core.current.copy() if core.current else None
            if current is not None and current.task_id == task.task_id:
                self._check_late(current)  # progress reports stop while paused
            if project.held and not project.give_back:
                log.info("%s is suspended; giving task %s back", project.ref.project, task.task_id)
                project.give_back = True
                core.trainer.stop_task()
                return
            if time.monotonic() < next_beat:
                continue
            if (
                suspended_since is not None
                and time.monotonic() - suspended_since > core.options.max_hold_suspended_s
            ):
                log.info("suspended for long; giving task %s back", task.task_id)
                project.give_back = True
                core.trainer.stop_task()
                return
            try:
                deadline = project.client.heartbeat(task.task_id)
                wait = max(1.0, min(interval, deadline - time.time() - 5))
            except LeaseLostError:
                self.lost.set()
                core.trainer.stop_task()
                return
            except Cancelled:
                return
            except Exception as exc:
                wait = max(1.0, min(interval / 3, deadline - time.time() - 2))
                log.info(
                    "heartbeat of task %s failed (%s); again in %.0fs", task.task_id, exc, wait
                )
            next_beat = time.monotonic() + wait
