"""The contributor engine: one state machine over join, lease, download, train and upload.

``Controller`` is what the tray and ``barnraise --headless`` drive. It runs on its own
threads; every public method is thread-safe and returns quickly, except the blocking
network calls ``preview_join``/``join``/``leave`` (run those off a GUI thread).

Lifecycle: ``start()`` → work until ``stop()`` (idempotent, from any thread or a signal
handler's helper thread) → ``wait()``. On stop the task in hand is checkpointed and its
lease given back (``release``). If the process is killed instead, the task's state file
stays; the next start heartbeats that lease and, if it is still live, carries on from the
checkpoint, else forgets it (``_restore``).

Commands: ``pause()``, ``resume()``, ``snooze(until | seconds)``, ``apply_settings(s)``,
``join(...)``, ``leave(project_key)``, ``stop()``. Queries: ``snapshot()``, ``subscribe()``.

Events (``app.contributor.events``): StateChanged, Progress, TaskFinished, CreditUpdated,
PolicyChanged, Error — delivered to subscribers on engine threads.

Decisions about *whether* and *how hard* to compute come from ``policy.decide`` (pure),
re-evaluated on every command, every ``sensor_interval_s`` and at schedule edges; a SUSPEND
pauses the trainer (it checkpoints and blocks), a THROTTLE hands it new limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from app.contributor import policy
from app.contributor.cache import ModelCache
from app.contributor.client import (
    AuthError,
    Cancelled,
    ClientError,
    CoordinatorClient,
    LeasedTask,
    LeaseLostError,
    RetryPolicy,
    ServerError,
    UnavailableError,
    UntrustedError,
)
from app.contributor.credentials import CredentialStore, ProjectCredentials, ProjectRef
from app.contributor.deadline import GIVE_BACK_REASON, estimate_finish
from app.contributor.events import (
    CreditUpdated,
    EngineState,
    Error,
    Event,
    EventBus,
    PolicyChanged,
    Progress,
    StateChanged,
    Subscriber,
    TaskFinished,
)
from app.contributor.joining import (
    JoinPreview,
    KeyChange,
    accept_new_key,
    complete_join,
    detect_key_change,
    preview_join,
    project_data_path,
    save_project_data_path,
)
from app.contributor.ledger import Contribution, Ledger
from app.contributor.limits import Limits
from app.contributor.paths import DATA_DIR_ENV, EnginePaths
from app.contributor.schedule import ScheduleWatcher
from app.contributor.sensors import SensorReadings, Sensors, SystemSensors
from app.contributor.settings import Settings, default_settings
from app.contributor.task_files import TaskFiles
from app.contributor.trainer import TrainerCrashed, TrainerError, TrainerHandle, TrainJob
from federated.errors import UPDATE_REJECTION_CODES
from federated.signing import SigningKey

__all__ = [
    "DATA_DIR_ENV",
    "Controller",
    "EngineOptions",
    "EnginePaths",
    "JoinPreview",
    "complete_join",
    "preview_join",
]

log = logging.getLogger(__name__)

# A task crashed the trainer this many times: give it back rather than loop.
MAX_CRASHES_PER_TASK = 3
# Hold a leased task this long while suspended/paused, then give it back to the project.
MAX_HOLD_SUSPENDED_S = 300.0
# Backoff when the coordinator is unreachable or failing: doubles from MIN to MAX.
MIN_BACKOFF_S = 2.0
MAX_BACKOFF_S = 300.0
# After a task ends without an accepted update: doubles from MIN to MAX, per project.
MIN_REJECTION_BACKOFF_S = 5.0
MAX_REJECTION_BACKOFF_S = 600.0
# While a task is in hand, its deadline is judged at least this often (also while paused).
DEADLINE_CHECK_S = 5.0
# A project its organiser closed is asked again this rarely (it may be reopened).
CLOSED_RECHECK_S = 3600.0
# Refusals the trainer finds before sending (the coordinator would answer the same).
UNSENDABLE_CODES = frozenset(UPDATE_REJECTION_CODES) | {"payload_too_large"}
# Ask the coordinator for our leaderboard rank at most this often (after accepted updates).
RANK_REFRESH_S = 30.0


def _local_now() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True)
class EngineOptions:
    insecure: bool = False
    lease_wait_s: float = 25.0
    sensor_interval_s: float = 5.0
    checkpoint_interval_s: float | None = None  # None: the setting
    max_hold_suspended_s: float = MAX_HOLD_SUSPENDED_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    start_trainer_eagerly: bool = True


# --------------------------------------------------------------------------- engine


@dataclass
class _Project:
    ref: ProjectRef
    creds: ProjectCredentials
    client: CoordinatorClient
    signing_key: SigningKey
    dir: Path
    files: TaskFiles
    disabled_reason: str | None = None
    backoff_s: float = 0.0
    not_before: float = 0.0
    offline: bool = False  # the last try could not reach the coordinator
    closed: bool = False  # the organiser closed the project: asked again only rarely
    rejections: int = 0  # tasks in a row that ended without an accepted update
    ended: deque[str] = field(default_factory=lambda: deque(maxlen=64))  # refused task ids
    key_change: KeyChange | None = None  # the coordinator signs with an unpinned key
    rank: int | None = None
    rank_checked_at: float = float("-inf")
    resume_task: LeasedTask | None = None  # a task carried over from before a restart
    # A trained update the coordinator has not acknowledged yet, with its manifest.
    pending_upload: tuple[LeasedTask, dict[str, Any]] | None = None
    give_back: bool = False  # the task in hand was stopped to be given back
    late: str | None = None  # ... because it could not be finished in time (the numbers)


class _TaskLost(Exception):
    pass


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
        self.paths = paths or EnginePaths.default()
        self.credentials = credentials
        self.options = options or EngineOptions()
        self._settings = settings or default_settings()
        self._sensors: Sensors = sensors or SystemSensors()
        self._clock = clock
        self.events = EventBus()
        self.ledger = Ledger(self.paths.ledger_path)

        self._lock = threading.RLock()
        self._apply_lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._cancel = threading.Event()  # cuts long polls and backoff sleeps on stop
        self._state = EngineState.STOPPED
        self._state_project: str | None = None
        self._state_task: str | None = None
        self._policy_state = policy.PolicyState()
        self._readings = SensorReadings()
        self._decision: policy.Decision | None = None
        self._projects: dict[str, _Project] = {}
        self._projects_dirty = True
        self._round_robin = 0
        self._current: dict[str, Any] | None = None  # project key, task id, last progress
        self._thread: threading.Thread | None = None
        self._policy_thread: threading.Thread | None = None
        self._watcher: ScheduleWatcher | None = None
        self._suspended_since: float | None = None
        self._last_error: str | None = None
        # Why the engine stopped on its own (an unexpected error), else None: the headless
        # command exits non-zero on it, so a service manager restarts the engine.
        self.failure: str | None = None
        limits = self._limits_for(self._decide_locked())
        self.trainer = TrainerHandle(limits, on_message=self._on_trainer_message)

    # ======================================================================= public API
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Receive every event; returns an unsubscribe function."""
        return self.events.subscribe(callback)

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def settings(self) -> Settings:
        return self._settings

    def start(self) -> None:
        """Start the engine threads (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._cancel.clear()
            self._thread = threading.Thread(target=self._main, name="barnraise-engine", daemon=True)
            self._policy_thread = threading.Thread(
                target=self._policy_loop, name="barnraise-policy", daemon=True
            )
        self._refresh_readings()
        self._reconsider()
        self._watcher = ScheduleWatcher(
            lambda: self._settings.schedule, lambda _a, _t: self._reconsider(), clock=self._clock
        )
        self._watcher.start()
        self._thread.start()
        assert self._policy_thread is not None
        self._policy_thread.start()

    def stop(self) -> None:
        """Ask the engine to stop: checkpoint, give the lease back, end the trainer.
        Returns at once; ``wait()`` for the end."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            self._cancel.set()
            self._wake.notify_all()
        self._set_state(EngineState.STOPPING)
        self.trainer.stop_task()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the engine to stop; True if it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def pause(self) -> None:
        """Pause computing until ``resume()`` (training blocks within a second)."""
        with self._lock:
            self._policy_state = self._policy_state.pause()
        self._reconsider()

    def resume(self) -> None:
        """Undo pause and snooze."""
        with self._lock:
            self._policy_state = self._policy_state.resume()
        self._reconsider()

    def snooze(self, until: datetime | timedelta | float) -> datetime:
        """Pause until a time (or for a timedelta / seconds); returns when it ends."""
        now = self._clock()
        if isinstance(until, datetime):
            end = until
        elif isinstance(until, timedelta):
            end = now + until
        else:
            end = now + timedelta(seconds=float(until))
        with self._lock:
            self._policy_state = self._policy_state.snooze(end)
        self._reconsider()
        return end

    def retry_now(self) -> None:
        """Ask every waiting project for work now instead of at the end of its backoff
        (the "Retry now" of "Can't reach the server")."""
        with self._lock:
            for project in self._projects.values():
                project.not_before = 0.0
                project.backoff_s = 0.0
            self._wake.notify_all()

    def accept_new_key(self, key: str, fingerprint: str) -> ProjectCredentials:
        """Pin the key the project's coordinator signs with now, keeping this machine's
        identity and credit. Only on the volunteer's explicit say-so, naming the new
        ``fingerprint`` they checked; refusing (doing nothing) leaves the project stopped."""
        with self._lock:
            project = self._projects.get(key)
        change = project.key_change if project is not None else None
        if project is None or change is None:
            raise ClientError("no key change is waiting to be accepted for this project")
        if fingerprint.strip() != change.new_fingerprint:
            raise ClientError(
                f"the project now signs with {change.new_fingerprint}, not {fingerprint!r}; "
                "nothing was changed"
            )
        accept_new_key(self.credentials, project.creds, change)
        with self._lock:
            self._projects.pop(key, None)
            self._projects_dirty = True
            self._wake.notify_all()
        updated = self.credentials.load(key)
        assert updated is not None
        return updated

    def apply_settings(self, settings: Settings) -> None:
        """Use ``settings`` from now on (limits change between steps, without losing work)."""
        with self._lock:
            self._settings = settings
            for project in self._projects.values():
                project.client.upload_kbps_cap = float(settings.upload_kbps_cap)
        if self._watcher is not None:
            self._watcher.refresh()
        self._reconsider()

    def set_sensors(self, sensors: Sensors) -> None:
        with self._lock:
            self._sensors = sensors
        self._refresh_readings()
        self._reconsider()

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
        preview = (
            text
            if isinstance(text, JoinPreview)
            else preview_join(text, insecure=self.options.insecure)
        )
        creds = complete_join(
            preview,
            self.credentials,
            display_name=display_name,
            team=team,
            insecure=self.options.insecure,
        )
        if data_path is not None:
            save_project_data_path(self.paths, creds.key, creds.project, data_path)
        with self._lock:
            known = self._projects.get(creds.key)
            if known is not None:
                # A re-join (same key, same identity) got a new token; the old one no longer
                # works. Swapped in place so that a task in hand carries on with it.
                known.creds, known.client.token = creds, creds.token
                known.disabled_reason = None
            self._projects_dirty = True
            self._wake.notify_all()
        return creds

    def leave(self, key: str) -> None:
        """Forget a project: give back its task, delete its credentials and local state."""
        with self._lock:
            project = self._projects.get(key)
            current = self._current
        if current is not None and current.get("key") == key:
            self.trainer.stop_task()
        if project is not None:
            self._drop_task_files(project, release=True)
        self.credentials.delete(key)
        with self._lock:
            self._projects.pop(key, None)
            self._projects_dirty = True
            self._wake.notify_all()

    def project_data_path(self, key: str, project: str) -> str | None:
        return project_data_path(self.paths, key, project)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the engine (what `barnraise status` prints)."""
        with self._lock:
            decision = self._decision
            current = dict(self._current) if self._current else None
            projects = list(self._projects.values())
            policy_state = self._policy_state
            state, state_project = self._state, self._state_project
        refs = {p.ref.key: p for p in projects}
        listed = []
        try:
            known = self.credentials.list_projects()
        except Exception:
            known = [p.ref for p in projects]
        for ref in known:
            totals = self.ledger.totals(ref.key)
            loaded = refs.get(ref.key)
            listed.append(
                {
                    "key": ref.key,
                    "project": ref.project,
                    "server_url": ref.server_url,
                    "tasks": totals.tasks,
                    "examples": totals.examples,
                    "compute_seconds": round(totals.compute_seconds, 3),
                    "credit": totals.credit,
                    "credit_unit": totals.credit_unit,
                    "last_update": totals.last_at,
                    "rank": loaded.rank if loaded else None,
                    "disabled": loaded.disabled_reason if loaded else None,
                    "closed": loaded.closed if loaded else False,
                    "offline": loaded.offline if loaded else False,
                    "rejected": totals.rejected,
                    "key_change": dataclasses.asdict(loaded.key_change)
                    if loaded and loaded.key_change
                    else None,
                }
            )
        return {
            "state": state.value,
            "project": state_project,
            "task": current,
            "paused": policy_state.paused,
            "snoozed_until": policy_state.snoozed_until.isoformat()
            if policy_state.snoozed_until
            else None,
            "decision": None
            if decision is None
            else {
                "action": decision.action.value,
                "reasons": decision.describe(),
                "summary": decision.summary(),
            },
            "limits": self.trainer.limits.to_json(),
            "trainer": {
                "pid": self.trainer.pid,
                "device": self.trainer.device,
                "starts": self.trainer.starts,
            },
            "projects": listed,
            "last_error": self._last_error,
            "failure": self.failure,
        }

    def handle_command(self, command: str, args: Mapping[str, Any]) -> Any:
        """The control channel's dispatcher (ping, status, pause, resume, snooze, retry, stop)."""
        if command == "ping":
            return {"pid": os.getpid()}
        if command == "status":
            return self.snapshot()
        if command == "pause":
            self.pause()
            return self.snapshot()
        if command == "resume":
            self.resume()
            return self.snapshot()
        if command == "snooze":
            end = self.snooze(float(args.get("seconds", 3600)))
            return {"until": end.isoformat()}
        from app.contributor.control import ControlError

        if command == "trust":
            try:
                self.accept_new_key(str(args.get("key", "")), str(args.get("fingerprint", "")))
            except ClientError as exc:
                raise ControlError(str(exc)) from None
            return self.snapshot()
        if command == "retry":
            self.retry_now()
            return self.snapshot()
        if command == "stop":
            self.stop()
            return {"stopping": True}
        raise ControlError(f"unknown command {command!r}")

    # ======================================================================= events
    def _publish(self, event: Event) -> None:
        self.events.publish(event)

    def _set_state(
        self,
        state: EngineState,
        *,
        project: str | None = None,
        task_id: str | None = None,
        reasons: tuple[str, ...] = (),
    ) -> None:
        with self._lock:
            previous = self._state
            if previous == state and self._state_project == project and self._state_task == task_id:
                return
            if previous == EngineState.STOPPING and state not in (EngineState.STOPPED,):
                return  # nothing but STOPPED follows STOPPING
            self._state, self._state_project, self._state_task = state, project, task_id
        self._publish(
            StateChanged(
                state=state, previous=previous, project=project, task_id=task_id, reasons=reasons
            )
        )

    def _error(
        self, message: str, *, project: str | None = None, code: str = "", fatal: bool = False
    ) -> None:
        log.warning("%s%s", f"[{project}] " if project else "", message)
        self._last_error = message
        self._publish(Error(message=message, project=project, code=code, fatal=fatal))

    def _on_trainer_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        with self._lock:
            current = self._current
        if current is None or message.get("task_id") != current.get("task_id"):
            return
        project = str(current["project"])
        if kind == "progress":
            current["step"], current["total_steps"] = message["step"], message["total_steps"]
            current["loss"] = message["loss"]
            current["compute_s"] = float(message.get("elapsed_s", 0.0))
            self._give_back_if_late(current)
            self._publish(
                Progress(
                    project=project,
                    task_id=str(message["task_id"]),
                    step=int(message["step"]),
                    total_steps=int(message["total_steps"]),
                    examples=int(message["examples"]),
                    loss=float(message["loss"]),
                    examples_per_second=float(message["examples_per_second"]),
                )
            )
        elif kind == "paused":
            current["paused_at"] = time.time()
            self._set_state(
                self._paused_state(),
                project=project,
                task_id=current["task_id"],
                reasons=self._reasons(),
            )
        elif kind == "resumed":
            paused_at = current.get("paused_at")
            if paused_at is not None:
                current["paused_s"] += time.time() - paused_at
                current["paused_at"] = None
            self._set_state(EngineState.TRAINING, project=project, task_id=current["task_id"])

    # ======================================================================= policy
    def _decide_locked(self) -> policy.Decision:
        return policy.decide(self._settings, self._clock(), self._readings, self._policy_state)

    def _limits_for(self, decision: policy.Decision) -> Limits:
        profile = decision.limits or self._settings.in_use
        return Limits.from_profile(profile)

    def _reasons(self) -> tuple[str, ...]:
        decision = self._decision
        return tuple(decision.describe()) if decision else ()

    def _paused_state(self) -> EngineState:
        return (
            EngineState.PAUSED
            if self._policy_state.paused or self._policy_state.snoozed_until
            else EngineState.SUSPENDED
        )

    def _refresh_readings(self) -> None:
        try:
            readings = self._sensors.read()
        except Exception as exc:  # a sensor must never stop the engine
            log.warning("reading sensors failed: %s", exc)
            return
        with self._lock:
            self._readings = readings

    def _reconsider(self) -> None:
        """Re-decide now and apply the decision to the trainer (any thread)."""
        with self._apply_lock:  # decisions are applied in the order they are made
            self._reconsider_serialized()

    def _reconsider_serialized(self) -> None:
        with self._lock:
            decision = self._decide_locked()
            self._policy_state = decision.state
            previous, self._decision = self._decision, decision
            training = self._current is not None
            current = self._current
        if previous is None or (previous.action, previous.reasons) != (
            decision.action,
            decision.reasons,
        ):
            profile = (
                "idle"
                if decision.action is policy.Action.RUN
                else "in_use"
                if decision.computing
                else ""
            )
            self._publish(
                PolicyChanged(
                    action=decision.action.value,
                    reasons=tuple(decision.describe()),
                    profile=profile,
                )
            )
        if decision.computing:
            with self._lock:
                self._suspended_since = None
            limits = self._limits_for(decision)
            if limits != self.trainer.limits:
                self.trainer.set_limits(limits)
            if self.trainer.paused:
                self.trainer.resume()
        else:
            with self._lock:
                if self._suspended_since is None:
                    self._suspended_since = time.monotonic()
            if not self.trainer.paused:
                self.trainer.pause()
            if training and current is not None:
                self._set_state(
                    self._paused_state(),
                    project=str(current["project"]),
                    task_id=str(current["task_id"]),
                    reasons=tuple(decision.describe()),
                )
        with self._lock:
            self._wake.notify_all()

    def _policy_loop(self) -> None:
        while not self._stop.wait(self.options.sensor_interval_s):
            self._refresh_readings()
            self._reconsider()

    # ======================================================================= projects
    def _load_projects(self) -> list[_Project]:
        with self._lock:
            if not self._projects_dirty:
                return list(self._projects.values())
        refs = self.credentials.list_projects()
        loaded: dict[str, _Project] = {}
        for ref in refs:
            with self._lock:
                existing = self._projects.get(ref.key)
            if existing is not None:
                loaded[ref.key] = existing
                continue
            try:
                creds = self.credentials.load(ref.key)
            except Exception as exc:
                self._error(
                    f"cannot read the credentials of {ref.project}: {exc}",
                    project=ref.project,
                    code="credentials",
                )
                continue
            if creds is None:
                continue
            try:
                loaded[ref.key] = self._make_project(ref, creds)
            except ClientError as exc:
                self._error(str(exc), project=ref.project, code="insecure", fatal=True)
        with self._lock:
            self._projects = loaded
            self._projects_dirty = False
            return list(loaded.values())

    def _make_project(self, ref: ProjectRef, creds: ProjectCredentials) -> _Project:
        import base64

        client = CoordinatorClient(
            creds.server_url,
            creds.project,
            token=creds.token,
            project_public_key_b64=creds.project_public_key_b64,
            cache_dir=self.paths.cache_dir,
            insecure=self.options.insecure,
            upload_kbps_cap=float(self._settings.upload_kbps_cap),
            retry=self.options.retry,
            cancel=self._cancel,
        )
        key = SigningKey.from_private_bytes(base64.b64decode(creds.private_key_b64))
        folder = self.paths.project_dir(ref.key, ref.project)
        return _Project(
            ref=ref,
            creds=creds,
            client=client,
            signing_key=key,
            dir=folder,
            files=TaskFiles(folder),
        )

    def _quiet_client(self, project: _Project) -> CoordinatorClient:
        """A client for the goodbye calls (release) that the stop event does not cancel."""
        return CoordinatorClient(
            project.creds.server_url,
            project.creds.project,
            token=project.creds.token,
            project_public_key_b64=project.creds.project_public_key_b64,
            insecure=self.options.insecure,
            retry=RetryPolicy(attempts=2, base_s=0.2, cap_s=1.0),
            timeout=(3.0, 5.0),
        )

    # ======================================================================= main loop
    def _wait(self, seconds: float) -> None:
        with self._wake:
            if not self._stop.is_set():
                self._wake.wait(seconds)

    def _main(self) -> None:
        try:
            self._set_state(EngineState.IDLE)  # at once: the trainer takes seconds to start
            if self.options.start_trainer_eagerly:
                try:
                    self.trainer.start()
                except TrainerError as exc:
                    self._error(
                        f"the training process could not start: {exc}", code="trainer_start"
                    )
            self._restore()
            while not self._stop.is_set():
                self._step()
        except Exception as exc:  # the engine must report, not vanish
            log.exception("engine failed")
            self.failure = f"{type(exc).__name__}: {exc}"
            self._error(
                f"the engine stopped after an unexpected error: {exc}", code="internal", fatal=True
            )
        finally:
            with contextlib.suppress(Exception):
                if self._watcher is not None:
                    self._watcher.stop()
            self.trainer.close()
            for project in list(self._projects.values()):
                project.client.close()
            with self._lock:
                self._state = EngineState.STOPPING  # let the final transition through
            self._set_state(EngineState.STOPPED)

    def _step(self) -> None:
        with self._lock:
            decision = self._decision
        if decision is None or not decision.computing:
            self._set_state(
                EngineState.PAUSED
                if self._policy_state.paused or self._policy_state.snoozed_until
                else EngineState.WAITING,
                reasons=self._reasons(),
            )
            self._wait(self.options.sensor_interval_s)
            return
        projects = [p for p in self._load_projects() if p.disabled_reason is None]
        if not projects:
            self._set_state(EngineState.IDLE)
            self._wait(self.options.sensor_interval_s)
            return
        now = time.monotonic()
        ready = [p for p in projects if p.not_before <= now]
        if not ready:
            waiting = [p for p in projects if not p.closed]
            offline = bool(waiting) and all(p.offline for p in waiting)
            self._set_state(EngineState.OFFLINE if offline else EngineState.BACKOFF)
            self._wait(min(p.not_before for p in projects) - now)
            return
        self._round_robin = (self._round_robin + 1) % len(ready)
        project = ready[self._round_robin]
        name = project.ref.project
        try:
            self._work_on(project, wait=self.options.lease_wait_s if len(ready) == 1 else 0.0)
            project.backoff_s = 0.0
            project.offline = False
        except Cancelled:
            pass
        except UntrustedError as exc:
            project.disabled_reason = str(exc)
            project.key_change = self._key_change_of(project)
            message = project.key_change.describe() if project.key_change else str(exc)
            code = "key_changed" if project.key_change else "untrusted"
            self._error(f"{name}: {message}", project=name, code=code, fatal=True)
        except AuthError as exc:
            if self._token_was_replaced(project):
                self._back_off(project, exc)  # a re-join swapped the token mid-request
                return
            project.disabled_reason = str(exc)
            self._error(
                f"{name}: the coordinator no longer accepts this machine ({exc.message}); "
                "leave the project and join it again",
                project=name,
                code=exc.code,
                fatal=True,
            )
        except (UnavailableError, ServerError, TrainerError, OSError) as exc:
            self._back_off(project, exc)

    def _token_was_replaced(self, project: _Project) -> bool:
        """After a 401: does the token we hold now work? (A join while this request was
        under way replaced it; the request carried the old one.)"""
        try:
            stored = self.credentials.load(project.ref.key)
        except Exception:
            return False
        if stored is not None and stored.token != project.client.token:
            project.creds, project.client.token = stored, stored.token
        try:
            project.client.me()
        except ClientError:
            return False
        return True

    def _back_off(self, project: _Project, exc: Exception) -> None:
        """One project failed: it waits (doubling, capped) while the others go on."""
        name = project.ref.project
        if isinstance(exc, ServerError) and exc.code == "project_closed":
            project.closed = True
            project.not_before = time.monotonic() + CLOSED_RECHECK_S
            self._error(
                f"{name} is closed by its organiser; it no longer needs work from you",
                project=name,
                code="project_closed",
            )
            return
        project.offline = isinstance(exc, UnavailableError)
        project.backoff_s = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, project.backoff_s * 2))
        project.not_before = time.monotonic() + project.backoff_s
        if project.offline:
            self._set_state(EngineState.OFFLINE, project=name)
            message = f"can't reach the server of {name}; retrying in {project.backoff_s:.0f}s"
        else:
            message = f"{name}: {exc}; retrying in {project.backoff_s:.0f}s"
        self._error(message, project=name, code=getattr(exc, "code", "unavailable"))

    def _key_change_of(self, project: _Project) -> KeyChange | None:
        try:
            return detect_key_change(project.creds, insecure=self.options.insecure)
        except ClientError as exc:
            log.info("could not ask %s for its key: %s", project.ref.project, exc)
            return None

    # --- one task ----------------------------------------------------------------------
    def _drop_task_files(self, project: _Project, *, release: bool) -> None:
        """Forget the task in hand (giving its lease back first if ``release``)."""
        task_id = project.files.saved_task_id()
        if release and task_id:
            self._give_back_id(project, task_id)
        project.files.drop()

    def _restore(self) -> None:
        """After a restart: send an update that was trained but not acknowledged, carry on
        with a task whose lease may still be live, and forget the rest."""
        for project in self._load_projects():
            files = project.files
            try:
                task = files.saved_task()
                if task is not None:
                    project.client._verify("task", task.manifest, task.signature)
            except (ValueError, UntrustedError) as exc:
                log.info("forgetting the saved task of %s: %s", project.ref.project, exc)
                files.drop()
                continue
            if task is None:
                files.drop()  # leftovers of a crash between two tasks
                continue
            manifest = files.saved_upload(task.task_id)
            if manifest is not None:
                # Answered with the first receipt if it did arrive before the restart.
                log.info("sending the trained update of task %s again", task.task_id)
                project.pending_upload = (task, manifest)
                continue
            try:
                project.client.heartbeat(task.task_id)
            except LeaseLostError as exc:
                log.info("the saved task of %s is gone (%s)", project.ref.project, exc.code)
                files.drop()
                continue
            except Exception as exc:  # unreachable now: keep the work; heartbeats will tell
                log.info("could not check the saved task of %s: %s", project.ref.project, exc)
            log.info("carrying on with task %s of %s", task.task_id, project.ref.project)
            project.resume_task = task

    def _lease(self, project: _Project, wait: float) -> LeasedTask | None:
        """Lease in a helper thread so that stop() does not wait for a long poll to end."""
        result: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                result["task"] = project.client.lease(wait=wait)
            except BaseException as exc:
                result["error"] = exc
            done.set()
            if self._stop.is_set() and result.get("task") is not None:
                self._give_back_id(project, result["task"].task_id)

        threading.Thread(target=call, name="barnraise-lease", daemon=True).start()
        while not done.wait(0.1):
            if self._stop.is_set():
                raise Cancelled("stopping")
        if "error" in result:
            raise result["error"]
        task: LeasedTask | None = result.get("task")
        return task

    def _give_back_id(self, project: _Project, task_id: str) -> None:
        client = self._quiet_client(project)
        try:
            client.release(task_id)
            log.info("gave back task %s of %s", task_id, project.ref.project)
        except ClientError as exc:
            log.info("could not give back task %s (%s); it will expire on the server", task_id, exc)
        finally:
            client.close()

    def _work_on(self, project: _Project, *, wait: float) -> None:
        name = project.ref.project
        if project.pending_upload is not None:
            unsent, manifest = project.pending_upload
            project.pending_upload = None
            self._send_update(project, unsent, manifest)
            return
        task, project.resume_task = project.resume_task, None
        if task is None:
            self._set_state(EngineState.LEASING, project=name)
            task = self._lease(project, wait)
            project.closed = False
            if task is None:
                return
            if task.task_id in project.ended:
                # A coordinator that hands out a task it refused: never train it twice.
                self._give_back_id(project, task.task_id)
                self._rejected(
                    project, task, "task_ended", "handed out again", examples=0, seconds=0.0
                )
                return
            project.files.save_task(task)
        manifest = task.manifest
        if self._stop.is_set():
            self._drop_task_files(project, release=True)
            return
        useful_until = manifest.get("useful_until")
        if isinstance(useful_until, int | float):
            # Nothing trained yet: only a task already past its useful time is late.
            arrived = estimate_finish(
                now=time.time(),
                useful_until=float(useful_until),
                steps_done=0,
                total_steps=1,
                compute_s=0.0,
                computing_share=1.0,
            )
            if not arrived.in_time:
                self._drop_task_files(project, release=True)
                self._rejected(
                    project, task, "gave_back_late", arrived.reason, examples=0, seconds=0.0
                )
                return
        self._set_state(EngineState.DOWNLOADING, project=name, task_id=task.task_id)
        try:
            model_path = project.client.download_model(str(manifest["base_digest"]))
            self._trim_cache(keep=str(manifest["base_digest"]))
            outcome = self._train(project, task, model_path)
        except _TaskLost as exc:
            self._error(
                f"{name}: task {task.task_id} was lost ({exc}); moving on",
                project=name,
                code="lease_lost",
            )
            self._drop_task_files(project, release=False)
            return
        except TrainerError as exc:
            self._drop_task_files(project, release=True)
            if exc.code in UNSENDABLE_CODES:
                # The coordinator would refuse it: say why, and do not send or retrain it.
                self._rejected(project, task, exc.code, str(exc), examples=0, seconds=0.0)
                return
            raise
        except (UntrustedError, Cancelled):
            self._drop_task_files(project, release=True)
            raise
        if outcome is None:  # stopped: give the task back (a clean quit, or too late)
            self._drop_task_files(project, release=True)
            late, project.late = project.late, None
            if late is not None:
                self._rejected(
                    project,
                    task,
                    "gave_back_late",
                    f"{GIVE_BACK_REASON} ({late})",
                    examples=0,
                    seconds=0.0,
                )
            return
        upload = self._update_manifest(project, task, outcome)
        project.files.save_upload(task.task_id, upload)
        self._send_update(project, task, upload)

    def _trim_cache(self, *, keep: str) -> None:
        """Hold the model cache to the volunteer's ``cache_size_mb``, least recently used
        first, never the model about to be trained."""
        limit = int(self._settings.cache_size_mb) * 1024 * 1024
        try:
            ModelCache(self.paths.cache_dir).enforce(limit, keep={keep})
        except OSError as exc:
            log.warning("could not trim the model cache: %s", exc)

    def _train(self, project: _Project, task: LeasedTask, model_path: Path) -> Any:
        manifest = task.manifest
        name = project.ref.project
        interval = self.options.checkpoint_interval_s or float(self._settings.checkpoint_interval_s)
        project.give_back, project.late = False, None
        max_norm = manifest.get("max_update_norm")
        max_bytes = manifest.get("max_payload_bytes")
        job = TrainJob(
            task_id=task.task_id,
            project=name,
            recipe=str(manifest["recipe"]),
            hparams=dict(manifest["hparams"]),
            shard_index=int(manifest["shard_index"]),
            base_model_path=str(model_path),
            base_digest=str(manifest["base_digest"]),
            checkpoint_path=str(project.files.checkpoint(task.task_id)),
            payload_path=str(project.files.payload(task.task_id)),
            codec=str(manifest.get("codec", "f32")),
            checkpoint_interval_s=interval,
            max_examples=int(manifest["max_examples"]) if manifest.get("max_examples") else None,
            feedback_path=str(project.dir / "error-feedback.safetensors"),
            data_path=self.project_data_path(project.ref.key, name),
            seed=int(hashlib.sha256(task.task_id.encode()).hexdigest()[:8], 16) % (2**31),
            max_update_norm=float(max_norm) if isinstance(max_norm, int | float) else None,
            max_payload_bytes=int(max_bytes) if isinstance(max_bytes, int) else None,
        )
        with self._lock:
            self._current = {
                "key": project.ref.key,
                "project": name,
                "task_id": task.task_id,
                "step": 0,
                "total_steps": 0,
                "useful_until": manifest.get("useful_until"),
                "issued_at": manifest.get("issued_at"),
                "started_at": time.time(),
                "paused_s": 0.0,  # wall time the trainer sat paused, for the running time
                "paused_at": None,
            }
        lost = threading.Event()
        heartbeat_done = threading.Event()
        heart = threading.Thread(
            target=self._heartbeat_loop,
            args=(project, task, lost, heartbeat_done),
            name="barnraise-heartbeat",
            daemon=True,
        )
        heart.start()
        crashes = 0
        try:
            while True:
                self._set_state(
                    self._paused_state() if self.trainer.paused else EngineState.TRAINING,
                    project=name,
                    task_id=task.task_id,
                    reasons=self._reasons(),
                )
                try:
                    outcome = self.trainer.run(job)
                except TrainerCrashed as exc:
                    crashes += 1
                    if self._stop.is_set():
                        return None
                    if crashes >= MAX_CRASHES_PER_TASK:
                        raise TrainerError(
                            f"the training process crashed {crashes} times on this task ({exc})"
                        ) from exc
                    self._error(
                        f"{name}: {exc}; restarting it and resuming from the last checkpoint",
                        project=name,
                        code="trainer_crashed",
                    )
                    continue
                if lost.is_set():
                    raise _TaskLost("the coordinator no longer holds the lease")
                if outcome.done:
                    return outcome
                if self._stop.is_set():
                    return None
                # Stopped for a restart (limits change) or a suspension held too long.
                if project.give_back:
                    project.give_back = False
                    return None
        finally:
            heartbeat_done.set()
            with self._lock:
                self._current = None

    def _computing_share(self) -> tuple[float, float | None]:
        """(share of wall time training may use now, when a snooze ends if snoozed)."""
        with self._lock:
            decision = self._decision
            snoozed = self._policy_state.snoozed_until
        if decision is None or not decision.computing or self.trainer.paused:
            return 0.0, snoozed.timestamp() if snoozed else None
        return min(1.0, self.trainer.limits.cpu_percent / 100.0), None

    def _give_back_if_late(self, current: Mapping[str, Any]) -> None:
        """Stop the task in hand when its update could no longer be used when it arrives
        (paused, throttled, too slow): the work left is given back, not wasted."""
        with self._lock:
            project = self._projects.get(str(current["key"]))
        useful_until = current.get("useful_until")
        if project is None or project.give_back or not isinstance(useful_until, int | float):
            return
        share, resumes_at = self._computing_share()
        now = time.time()
        paused_at = current.get("paused_at")
        paused_s = float(current.get("paused_s", 0.0)) + (now - paused_at if paused_at else 0.0)
        issued_at = current.get("issued_at")
        estimate = estimate_finish(
            now=now,
            useful_until=float(useful_until),
            steps_done=int(current.get("step", 0)),
            total_steps=max(1, int(current.get("total_steps", 0) or 1)),
            compute_s=float(current.get("compute_s", 0.0)),
            computing_share=share,
            resumes_at=resumes_at,
            issued_at=float(issued_at) if isinstance(issued_at, int | float) else None,
            running_s=max(0.0, now - float(current["started_at"]) - paused_s),
        )
        if estimate.in_time:
            return
        log.info(
            "giving task %s back: %s (%s)", current["task_id"], estimate.reason, estimate.detail
        )
        project.give_back = True
        project.late = estimate.detail
        self.trainer.stop_task()

    def _heartbeat_loop(
        self, project: _Project, task: LeasedTask, lost: threading.Event, done: threading.Event
    ) -> None:
        """Keep the lease alive until ``done``. Survives any single failure: a cut answer
        or an unreachable coordinator is tried again sooner, while the lease may still live."""
        deadline = task.deadline
        issued = float(task.manifest.get("issued_at", time.time()))
        interval = max(10.0, deadline - issued) / 3
        next_beat = time.monotonic() + interval
        while not done.wait(max(0.0, min(DEADLINE_CHECK_S, next_beat - time.monotonic()))):
            with self._lock:
                suspended_since = self._suspended_since
                current = dict(self._current) if self._current else None
            if current is not None and current.get("task_id") == task.task_id:
                self._give_back_if_late(current)  # progress reports stop while paused
            if time.monotonic() < next_beat:
                continue
            if (
                suspended_since is not None
                and time.monotonic() - suspended_since > self.options.max_hold_suspended_s
            ):
                log.info("suspended for long; giving task %s back", task.task_id)
                project.give_back = True
                self.trainer.stop_task()
                return
            try:
                deadline = project.client.heartbeat(task.task_id)
                wait = max(1.0, min(interval, deadline - time.time() - 5))
            except LeaseLostError:
                lost.set()
                self.trainer.stop_task()
                return
            except Cancelled:
                return
            except Exception as exc:
                wait = max(1.0, min(interval / 3, deadline - time.time() - 2))
                log.info(
                    "heartbeat of task %s failed (%s); again in %.0fs", task.task_id, exc, wait
                )
            next_beat = time.monotonic() + wait

    def _update_manifest(self, project: _Project, task: LeasedTask, outcome: Any) -> dict[str, Any]:
        """The manifest to sign and send with the trained update (kept until acknowledged)."""
        metrics = {
            k: float(outcome.metrics[k])
            for k in ("loss_before", "loss_after", "seconds", "examples_per_second")
        }
        return {
            "project": project.ref.project,
            "task_id": task.task_id,
            "client_id": project.creds.client_id,
            "base_digest": task.manifest["base_digest"],
            "payload_digest": outcome.payload_digest,
            "codec": outcome.codec,
            "num_examples": outcome.num_examples,
            "metrics": metrics,
        }

    def _send_update(self, project: _Project, task: LeasedTask, manifest: dict[str, Any]) -> None:
        """Upload; a final refusal is recorded and the task dropped (never sent again); when
        the coordinator cannot take it now, the update is kept and sent after the backoff.
        Re-sending is safe: the coordinator answers the same update with its first receipt."""
        name = project.ref.project
        self._set_state(EngineState.UPLOADING, project=name, task_id=task.task_id)
        try:
            payload = project.files.payload(task.task_id).read_bytes()
        except OSError as exc:
            self._error(f"{name}: the trained update is gone ({exc})", project=name, code="lost")
            self._drop_task_files(project, release=True)
            return
        examples = int(manifest["num_examples"])
        seconds = float(manifest["metrics"]["seconds"])
        try:
            receipt = project.client.upload_update(
                task.task_id, payload, manifest, project.signing_key
            )
        except AuthError:
            project.pending_upload = (task, manifest)
            raise
        except ServerError as exc:
            if exc.status >= 500 or exc.status == 429:
                project.pending_upload = (task, manifest)
                raise
            project.files.drop()
            self._rejected(project, task, exc.code, exc.message, examples=examples, seconds=seconds)
            return
        except ClientError:
            project.pending_upload = (task, manifest)
            raise
        project.files.drop()
        project.rejections = 0
        credit = float(receipt.get("credit", 0.0))
        self.ledger.record(
            Contribution(
                project=project.ref.key,  # server and project: two servers may reuse a name
                task_id=task.task_id,
                examples=examples,
                compute_seconds=seconds,
                credit=credit,
                credit_unit=str(receipt.get("credit_unit", "")),
                update_id=str(receipt.get("update_id", "")),
            )
        )
        self._publish(
            TaskFinished(
                project=name,
                task_id=task.task_id,
                num_examples=examples,
                compute_seconds=seconds,
                credit=credit,
                accepted=True,
                metrics=dict(manifest["metrics"]),
            )
        )
        totals = self.ledger.totals(project.ref.key)
        self._refresh_rank(project)
        self._publish(
            CreditUpdated(
                project=name,
                credit=totals.credit,
                credit_unit=totals.credit_unit,
                rank=project.rank,
                tasks=totals.tasks,
            )
        )

    def _rejected(
        self,
        project: _Project,
        task: LeasedTask,
        code: str,
        message: str,
        *,
        examples: int,
        seconds: float,
    ) -> None:
        """A task that ended without an accepted update: recorded in the ledger with its
        reason, reported once, and the project backs off (doubling, capped) before it asks
        for work again, so a refusal can never turn into a retraining loop."""
        name = project.ref.project
        project.ended.append(task.task_id)
        project.rejections += 1
        delay = min(
            MAX_REJECTION_BACKOFF_S, MIN_REJECTION_BACKOFF_S * 2 ** (project.rejections - 1)
        )
        project.not_before = time.monotonic() + delay
        self.ledger.record(
            Contribution(
                project=project.ref.key,
                task_id=task.task_id,
                examples=examples,
                compute_seconds=seconds,
                credit=0.0,
                accepted=False,
                reason=code,
            )
        )
        self._error(
            f"{name}: task {task.task_id} was not accepted ({code}: {message}); "
            f"asking for new work in {delay:.0f}s",
            project=name,
            code=code,
        )
        self._publish(
            TaskFinished(
                project=name,
                task_id=task.task_id,
                num_examples=examples,
                compute_seconds=seconds,
                credit=0.0,
                accepted=False,
                metrics={},
                reason=code,
            )
        )

    def _refresh_rank(self, project: _Project) -> None:
        """Ask the coordinator for our place on the leaderboard, at most every RANK_REFRESH_S
        (it ranks every contributor to answer); a failure keeps the last known rank."""
        now = time.monotonic()
        if now - project.rank_checked_at < RANK_REFRESH_S:
            return
        project.rank_checked_at = now
        try:
            rank = project.client.me().get("rank")
        except ClientError as exc:
            log.debug("could not read our rank in %s: %s", project.ref.project, exc)
            return
        if isinstance(rank, int):
            project.rank = rank
