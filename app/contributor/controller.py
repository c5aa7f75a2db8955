"""The contributor engine: one state machine over join, lease, download, train and upload.

``Controller`` is what the tray and ``barnraise --headless`` drive. It runs on its own
threads; every public method is thread-safe and returns quickly, except the blocking
network calls ``join``/``leave`` (run those off a GUI thread).

Lifecycle: ``start()`` → work until ``stop()`` (idempotent, from any thread or a signal
handler's helper thread) → ``wait()``. On stop the task in hand is checkpointed and its
lease given back (``release``). If the process is killed instead, the task's state file
stays; the next start heartbeats that lease and, if it is still live, carries on from the
checkpoint, else forgets it (``_restore``).

Commands: ``pause()``, ``resume()``, ``snooze(until | seconds)``, ``retry_now()``,
``apply_settings(s)``, ``join(...)``, ``leave(project_key)``, ``accept_new_key(...)``,
``set_project_share(key, share)``, ``set_project_mode(key, mode)``, ``stop()``; the control channel's table of them is ``app.contributor.commands``.
Queries: ``status()`` (an ``EngineSnapshot``), ``snapshot()`` (its JSON), ``subscribe()``.

Events (``app.contributor.events``): StateChanged, Progress, TaskFinished, CreditUpdated,
PolicyChanged, Error, ProjectScheduleChanged — delivered to subscribers on engine threads.

This class is a façade over the parts that do the work, sharing one ``EngineCore``:
``PolicyDriver`` (whether and how hard to compute), ``ProjectBook`` (the projects, their
turn and backoff), ``TaskFlow`` (one task, lease to ledger), ``restore_saved_tasks``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from app.contributor.client import Cancelled
from app.contributor.commands import CommandContext, dispatch
from app.contributor.core import EngineCore, EngineOptions
from app.contributor.credentials import CredentialStore, ProjectCredentials
from app.contributor.events import EngineState, Subscriber
from app.contributor.joining import (
    JoinPreview,
    complete_join,
    preview_join,
    project_data_path,
    save_project_data_path,
)
from app.contributor.paths import DATA_DIR_ENV, EnginePaths
from app.contributor.policy_driver import PolicyDriver
from app.contributor.projects import PROJECT_FAILURES, ProjectBook
from app.contributor.restore import restore_saved_tasks
from app.contributor.schedule import ScheduleWatcher
from app.contributor.sensors import Sensors, SystemSensors
from app.contributor.settings import Settings, default_settings
from app.contributor.shares import Mode, ProjectSchedule
from app.contributor.snapshot import EngineSnapshot
from app.contributor.task_flow import TaskFlow
from app.contributor.trainer import TrainerError, TrainerHandle

__all__ = [
    "DATA_DIR_ENV",
    "Controller",
    "EngineOptions",
    "EnginePaths",
    "JoinPreview",
    "complete_join",
    "preview_join",
    "save_project_data_path",
]

log = logging.getLogger(__name__)


def _local_now() -> datetime:
    return datetime.now().astimezone()


class Controller:
    """The engine. See the module docstring for the contract."""

    def __init__(
        self,
        *,
        credentials: CredentialStore,
        paths: EnginePaths | None = None,
        settings: Settings | None = None,
        sensors: Sensors | None = None,
        options: EngineOptions | None = None,
        clock: Callable[[], datetime] = _local_now,
    ) -> None:
        core = EngineCore(
            paths=paths or EnginePaths.default(),
            credentials=credentials,
            options=options or EngineOptions(),
            settings=settings or default_settings(),
            clock=clock,
        )
        self._core = core
        self.paths, self.credentials, self.options = core.paths, core.credentials, core.options
        self.events, self.ledger = core.events, core.ledger
        self._policy = PolicyDriver(core, sensors or SystemSensors())
        self._projects = ProjectBook(core)
        self._flow = TaskFlow(core, self._projects, self._policy)
        self._thread: threading.Thread | None = None
        self._policy_thread: threading.Thread | None = None
        self._watcher: ScheduleWatcher | None = None
        # Why the engine stopped on its own (an unexpected error), else None: the headless
        # command exits non-zero on it, so a service manager restarts the engine.
        self.failure: str | None = None
        core.trainer = TrainerHandle(
            self._policy.first_limits(), on_message=self._flow.on_trainer_message
        )

    # ======================================================================= queries
    @property
    def trainer(self) -> TrainerHandle:
        return self._core.trainer

    @property
    def state(self) -> EngineState:
        return self._core.state

    @property
    def settings(self) -> Settings:
        return self._core.settings

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Receive every event; returns an unsubscribe function."""
        return self.events.subscribe(callback)

    def project_data_path(self, key: str, project: str) -> str | None:
        return project_data_path(self.paths, key, project)

    def status(self) -> EngineSnapshot:
        """The engine at this moment (what `barnraise status` prints)."""
        return self._core.snapshot(self._projects.snapshots, failure=self.failure)

    def snapshot(self) -> dict[str, Any]:
        """``status()`` as JSON (what the control channel sends)."""
        return self.status().to_json()

    def handle_command(self, command: str, args: Mapping[str, Any]) -> Any:
        """Run a control-channel command (``app.contributor.commands.COMMANDS``)."""
        return dispatch(CommandContext(self), command, args)

    # ======================================================================= lifecycle
    def start(self) -> None:
        """Start the engine threads (idempotent)."""
        core = self._core
        with core.lock:
            if self._thread is not None:
                return
            core.stop.clear()
            core.cancel.clear()
            self._thread = threading.Thread(target=self._main, name="barnraise-engine", daemon=True)
            self._policy_thread = threading.Thread(
                target=self._policy.loop, name="barnraise-policy", daemon=True
            )
        self._policy.refresh_readings()
        self._policy.reconsider()
        self._watcher = ScheduleWatcher(
            lambda: core.settings.schedule,
            lambda _a, _t: self._policy.reconsider(),
            clock=core.clock,
        )
        self._watcher.start()
        self._thread.start()
        assert self._policy_thread is not None
        self._policy_thread.start()

    def stop(self) -> None:
        """Ask the engine to stop: checkpoint, give the lease back, end the trainer.
        Returns at once; ``wait()`` for the end."""
        core = self._core
        with core.lock:
            if core.stop.is_set():
                return
            core.stop.set()
            core.cancel.set()
            core.wake.notify_all()
        core.set_state(EngineState.STOPPING)
        self.trainer.stop_task()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the engine to stop; True if it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _main(self) -> None:
        core = self._core
        try:
            core.set_state(EngineState.IDLE)  # at once: the trainer takes seconds to start
            if self.options.start_trainer_eagerly:
                try:
                    self.trainer.start()
                except TrainerError as exc:
                    core.error(f"the training process could not start: {exc}", code="trainer_start")
            self._restore()
            while not core.stop.is_set():
                self._step()
        except Exception as exc:  # the engine must report, not vanish
            log.exception("engine failed")
            self.failure = f"{type(exc).__name__}: {exc}"
            core.error(
                f"the engine stopped after an unexpected error: {exc}", code="internal", fatal=True
            )
        finally:
            with contextlib.suppress(Exception):
                if self._watcher is not None:
                    self._watcher.stop()
            self.trainer.close()
            self._projects.close_clients()
            with core.lock:
                core.state = EngineState.STOPPING  # let the final transition through
            core.set_state(EngineState.STOPPED)

    def _restore(self) -> None:
        """After a restart: re-send, carry on with or forget each project's saved task."""
        restore_saved_tasks(self._projects.load())

    def _step(self) -> None:
        """One turn of the main loop: wait for the policy, or work one project's step."""
        core = self._core
        with core.lock:
            decision = core.decision
        if decision is None or not decision.computing:
            core.set_state(
                EngineState.PAUSED
                if core.policy_state.paused or core.policy_state.snoozed_until
                else EngineState.WAITING,
                reasons=core.reasons(),
            )
            core.wait(self.options.sensor_interval_s)
            return
        picked = self._projects.next_ready()
        if picked is None:
            return
        project, ready = picked
        scheduler = self._projects.scheduler
        before = scheduler.start_turn(project.ref.key)
        try:
            self._flow.work_on(project, wait=self.options.lease_wait_s if ready == 1 else 0.0)
            self._projects.worked(project)
        except Cancelled:
            pass
        except PROJECT_FAILURES as exc:
            self._projects.failed(project, exc)
        finally:
            scheduler.end_turn(
                project.ref.key, project.ref.project, before, in_hand=project.in_hand
            )

    # ======================================================================= commands
    def pause(self) -> None:
        """Pause computing until ``resume()`` (training blocks within a second)."""
        self._policy.pause()

    def resume(self) -> None:
        """Undo pause and snooze."""
        self._policy.resume()

    def snooze(self, until: datetime | timedelta | float) -> datetime:
        """Pause until a time (or for a timedelta / seconds); returns when it ends."""
        return self._policy.snooze(until)

    def retry_now(self) -> None:
        """Ask every waiting project for work now instead of at the end of its backoff
        (the "Retry now" of "Can't reach the server")."""
        self._projects.retry_now()

    def accept_new_key(self, key: str, fingerprint: str) -> ProjectCredentials:
        """Pin the key the project's coordinator signs with now, keeping this machine's
        identity and credit. Only on the volunteer's explicit say-so, naming the new
        ``fingerprint`` they checked; refusing (doing nothing) leaves the project stopped."""
        return self._projects.accept_new_key(key, fingerprint)

    def apply_settings(self, settings: Settings) -> None:
        """Use ``settings`` from now on (limits change between steps, without losing work)."""
        with self._core.lock:
            self._core.settings = settings
            self._projects.set_upload_cap(float(settings.upload_kbps_cap))
        if self._watcher is not None:
            self._watcher.refresh()
        self._policy.reconsider()

    def set_sensors(self, sensors: Sensors) -> None:
        self._policy.set_sensors(sensors)
        self._policy.refresh_readings()
        self._policy.reconsider()

    def join(
        self,
        text: str | JoinPreview,
        *,
        display_name: str,
        team: str | None = None,
        data_path: str | None = None,
    ) -> ProjectCredentials:
        """Join a project (blocking network calls); the engine starts working on it.

        ``data_path`` is the participant's own file or folder for a local-data project.
        """
        return self._projects.join(text, display_name=display_name, team=team, data_path=data_path)

    def leave(self, key: str) -> None:
        """Forget a project: give back its task, delete its credentials and local state."""
        self._projects.leave(key)

    def set_project_share(self, key: str, share: object) -> ProjectSchedule:
        """Give project ``key`` this resource share (a relative weight, ``shares``); it
        counts from the next pick. ValueError for a share out of range or an unknown key."""
        name, folder = self._project_folder(key)
        return self._projects.scheduler.set_share(key, folder, name, share)

    def set_project_mode(self, key: str, mode: Mode | str) -> ProjectSchedule:
        """Suspend (the task in hand is checkpointed, stopped and given back), resume
        (``Mode.ACTIVE``), no new tasks (the task in hand is finished), or finish then stop
        (then suspended) project ``key``. Persisted; ValueError for an unknown key."""
        mode = Mode(mode)
        name, folder = self._project_folder(key)
        core, scheduler = self._core, self._projects.scheduler
        project = self._projects.get(key)
        with core.lock:
            training = core.current is not None and core.current.key == key
            in_hand = training or scheduler.turn == key
        in_hand = in_hand or (project is not None and project.in_hand)
        schedule = scheduler.set_mode(key, folder, name, mode, in_hand=in_hand)
        if project is not None:
            project.held = schedule.mode is Mode.SUSPENDED
            if project.held and training:
                project.give_back = True
                self.trainer.stop_task()
        return schedule

    def _project_folder(self, key: str) -> tuple[str, Path]:
        for ref in self.credentials.list_projects():
            if ref.key == key:
                return ref.project, self.paths.project_dir(ref.key, ref.project)
        raise ValueError(f"you have not joined a project {key!r}")
