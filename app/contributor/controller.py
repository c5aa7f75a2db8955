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
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import platformdirs

from app.contributor import policy
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
    remove_quietly,
    save_json_atomic,
)
from app.contributor.credentials import CredentialStore, ProjectCredentials, ProjectRef, project_key
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
from app.contributor.invites import JoinTarget, parse_join_target
from app.contributor.ledger import Contribution, Ledger
from app.contributor.limits import Limits
from app.contributor.schedule import ScheduleWatcher
from app.contributor.sensors import SensorReadings, Sensors, SystemSensors
from app.contributor.settings import Settings, default_settings
from app.contributor.trainer import TrainerCrashed, TrainerError, TrainerHandle, TrainJob
from federated.signing import SigningKey, fingerprint

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

DATA_DIR_ENV = "BARNRAISE_DATA_DIR"
# A task crashed the trainer this many times: give it back rather than loop.
MAX_CRASHES_PER_TASK = 3
# Hold a leased task this long while suspended/paused, then give it back to the project.
MAX_HOLD_SUSPENDED_S = 300.0
# Backoff when the coordinator is unreachable: doubles from MIN to MAX.
MIN_BACKOFF_S = 2.0
MAX_BACKOFF_S = 300.0
# Ask the coordinator for our leaderboard rank at most this often (after accepted updates).
RANK_REFRESH_S = 30.0


def _local_now() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True)
class EnginePaths:
    """Where the engine keeps its files; everything below ``data_dir``."""

    data_dir: Path

    @classmethod
    def default(cls, data_dir: Path | None = None) -> EnginePaths:
        if data_dir is None:
            env = os.environ.get(DATA_DIR_ENV)
            data_dir = (
                Path(env) if env else Path(platformdirs.user_data_dir("barnraise", appauthor=False))
            )
        return cls(data_dir=data_dir)

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    def project_dir(self, key: str, project: str) -> Path:
        return self.state_dir / f"{project}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class EngineOptions:
    insecure: bool = False
    lease_wait_s: float = 25.0
    sensor_interval_s: float = 5.0
    checkpoint_interval_s: float | None = None  # None: the setting
    max_hold_suspended_s: float = MAX_HOLD_SUSPENDED_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    start_trainer_eagerly: bool = True


# --------------------------------------------------------------------------- joining


@dataclass(frozen=True)
class JoinPreview:
    """What the volunteer consents to: the project as the coordinator describes it."""

    target: JoinTarget
    project: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint(str(self.project["public_key"]))

    @property
    def data_mode(self) -> str:
        return str(self.project.get("data_mode", "builtin"))

    def disclosure(
        self, *, display_name: str, team: str | None, data_path: str | None = None
    ) -> list[str]:
        """Each thing that will leave this machine, and what stays, as lines for the user."""
        codec = self.project.get("codec", "?")
        lines = [
            f"Project {self.project['name']!r} at {self.target.server_url}: {self.project.get('description', '')}",
            f"Recipe: {self.project.get('recipe')} v{self.project.get('recipe_version')} "
            "(a built-in training recipe; the server cannot send code)",
            f"Project key fingerprint: {self.fingerprint} (pinned now; tasks signed by any other key are refused)",
        ]
        if self.data_mode == "local":
            lines.append(
                f"Training data: your file {data_path or '(choose with --data PATH)'}; it is read "
                "here and never leaves this machine"
            )
        else:
            lines.append(
                "Training data: a shard of the project's built-in data set (none of your files are read)"
            )
        lines += [
            "What leaves this machine:",
            f"  - your display name {display_name!r}"
            + (f" and team {team!r}" if team else "")
            + ", shown publicly on the project's leaderboard",
            "  - a public key made for this project (the private key stays in your keychain)",
            f"  - per task: the model update (the change to the shared model, codec {codec}), "
            "the number of examples trained on, and loss before/after, seconds and examples/s",
            "  - your IP address, as with any connection to the server",
        ]
        return lines


def preview_join(text: str, *, insecure: bool = False) -> JoinPreview:
    """Parse ``text`` (page URL, invite link) and fetch the project; raises InviteError,
    ClientError."""
    target = parse_join_target(text)
    client = CoordinatorClient(target.server_url, target.project, insecure=insecure)
    try:
        info = client.get_project()
    finally:
        client.close()
    if info.get("name") != target.project or "public_key" not in info:
        raise ClientError(f"{target.page_url} did not describe project {target.project!r}")
    return JoinPreview(target=target, project=info)


def complete_join(
    preview: JoinPreview,
    credentials: CredentialStore,
    *,
    display_name: str,
    team: str | None = None,
    insecure: bool = False,
) -> ProjectCredentials:
    """Make a key pair, register it, and store key, token and the pinned project key."""
    key = SigningKey.generate()
    target = preview.target
    client = CoordinatorClient(
        target.server_url,
        target.project,
        insecure=insecure,
        project_public_key_b64=str(preview.project["public_key"]),
    )
    try:
        answer = client.join(key, display_name=display_name, team=team, invite=target.invite)
    finally:
        client.close()
    if answer.project.get("public_key") != preview.project["public_key"]:
        raise UntrustedError(
            "the project key changed between showing it to you and joining; nothing was saved, try again"
        )
    import base64

    creds = ProjectCredentials(
        server_url=target.server_url,
        project=target.project,
        client_id=answer.client_id,
        token=answer.token,
        private_key_b64=base64.b64encode(key.private_bytes()).decode("ascii"),
        project_public_key_b64=str(preview.project["public_key"]),
    )
    credentials.save(creds.key, creds)
    return creds


def save_project_data_path(
    paths: EnginePaths, key: str, project: str, data_path: str | None
) -> None:
    """Remember the local data file of a local-data project (it never leaves the machine)."""
    save_json_atomic(paths.project_dir(key, project) / "config.json", {"data_path": data_path})


def project_data_path(paths: EnginePaths, key: str, project: str) -> str | None:
    try:
        config = json.loads((paths.project_dir(key, project) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("data_path")
    return str(value) if value else None


# --------------------------------------------------------------------------- engine


@dataclass
class _Project:
    ref: ProjectRef
    creds: ProjectCredentials
    client: CoordinatorClient
    signing_key: SigningKey
    dir: Path
    disabled_reason: str | None = None
    backoff_s: float = 0.0
    not_before: float = 0.0
    rank: int | None = None
    rank_checked_at: float = float("-inf")
    resume_task: LeasedTask | None = None  # a task carried over from before a restart
    # A trained update the coordinator could not take yet (network, 5xx): sent before leasing.
    pending_upload: tuple[LeasedTask, Any] | None = None
    give_back: bool = False  # the task in hand was stopped to be given back


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
        }

    def handle_command(self, command: str, args: Mapping[str, Any]) -> Any:
        """The control channel's dispatcher (ping, status, pause, resume, snooze, stop)."""
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
        if command == "stop":
            self.stop()
            return {"stopping": True}
        from app.contributor.control import ControlError

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
            self._set_state(
                self._paused_state(),
                project=project,
                task_id=current["task_id"],
                reasons=self._reasons(),
            )
        elif kind == "resumed":
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
        return _Project(
            ref=ref,
            creds=creds,
            client=client,
            signing_key=key,
            dir=self.paths.project_dir(ref.key, ref.project),
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
            self._set_state(EngineState.BACKOFF)
            self._wait(min(p.not_before for p in projects) - now)
            return
        self._round_robin = (self._round_robin + 1) % len(ready)
        project = ready[self._round_robin]
        try:
            self._work_on(project, wait=self.options.lease_wait_s if len(ready) == 1 else 0.0)
            project.backoff_s = 0.0
        except Cancelled:
            pass
        except UntrustedError as exc:
            project.disabled_reason = str(exc)
            self._error(str(exc), project=project.ref.project, code="untrusted", fatal=True)
        except AuthError as exc:
            project.disabled_reason = str(exc)
            self._error(
                f"{project.ref.project}: the coordinator no longer accepts this machine ({exc.message}); "
                "leave the project and join it again",
                project=project.ref.project,
                code=exc.code,
                fatal=True,
            )
        except (UnavailableError, ServerError, TrainerError, OSError) as exc:
            project.backoff_s = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, project.backoff_s * 2))
            project.not_before = time.monotonic() + project.backoff_s
            code = getattr(exc, "code", "unavailable")
            self._error(
                f"{project.ref.project}: {exc}; retrying in {project.backoff_s:.0f}s",
                project=project.ref.project,
                code=code,
            )

    # --- one task ----------------------------------------------------------------------
    def _task_file(self, project: _Project) -> Path:
        return project.dir / "task.json"

    def _checkpoint_path(self, project: _Project, task_id: str) -> Path:
        return project.dir / f"{task_id}.ckpt"

    def _payload_path(self, project: _Project, task_id: str) -> Path:
        return project.dir / f"{task_id}.update"

    def _drop_task_files(self, project: _Project, *, release: bool) -> None:
        path = self._task_file(project)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        task_id = str(saved.get("manifest", {}).get("task_id", ""))
        if release and task_id:
            client = self._quiet_client(project)
            try:
                client.release(task_id)
                log.info("gave back task %s of %s", task_id, project.ref.project)
            except ClientError as exc:
                log.info(
                    "could not give back task %s (%s); it will expire on the server", task_id, exc
                )
            finally:
                client.close()
        if task_id:
            remove_quietly(self._checkpoint_path(project, task_id))
            remove_quietly(self._payload_path(project, task_id))
        remove_quietly(path)

    def _restore(self) -> None:
        """After a restart: carry on with a task whose lease is still live, else forget it."""
        for project in self._load_projects():
            path = self._task_file(project)
            if not path.exists():
                continue
            try:
                saved = json.loads(path.read_text())
                task = LeasedTask(manifest=saved["manifest"], signature=saved["signature"])
                project.client._verify("task", task.manifest, task.signature)
                project.client.heartbeat(task.task_id)
            except LeaseLostError as exc:
                log.info(
                    "the saved task of %s is gone (%s); forgetting it",
                    project.ref.project,
                    exc.code,
                )
                self._drop_task_files(project, release=False)
                continue
            except (ClientError, ValueError, KeyError) as exc:
                log.info(
                    "cannot resume the saved task of %s (%s); giving it back",
                    project.ref.project,
                    exc,
                )
                self._drop_task_files(project, release=True)
                continue
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
                self._give_back(project, result["task"])

        threading.Thread(target=call, name="barnraise-lease", daemon=True).start()
        while not done.wait(0.1):
            if self._stop.is_set():
                raise Cancelled("stopping")
        if "error" in result:
            raise result["error"]
        task: LeasedTask | None = result.get("task")
        return task

    def _give_back(self, project: _Project, task: LeasedTask) -> None:
        client = self._quiet_client(project)
        try:
            client.release(task.task_id)
        except ClientError as exc:
            log.info("could not give back task %s: %s", task.task_id, exc)
        finally:
            client.close()

    def _work_on(self, project: _Project, *, wait: float) -> None:
        name = project.ref.project
        if project.pending_upload is not None:
            unsent, outcome = project.pending_upload
            project.pending_upload = None
            self._upload_keeping_on_failure(project, unsent, outcome)
            return
        task, project.resume_task = project.resume_task, None
        if task is None:
            self._set_state(EngineState.LEASING, project=name)
            task = self._lease(project, wait)
            if task is None:
                return
            save_json_atomic(self._task_file(project), task.to_json())
        manifest = task.manifest
        if self._stop.is_set():
            self._drop_task_files(project, release=True)
            return
        self._set_state(EngineState.DOWNLOADING, project=name, task_id=task.task_id)
        try:
            model_path = project.client.download_model(str(manifest["base_digest"]))
            outcome = self._train(project, task, model_path)
        except _TaskLost as exc:
            self._error(
                f"{name}: task {task.task_id} was lost ({exc}); moving on",
                project=name,
                code="lease_lost",
            )
            self._drop_task_files(project, release=False)
            return
        except (TrainerError, UntrustedError) as exc:
            self._drop_task_files(project, release=True)
            raise exc
        except Cancelled:
            self._drop_task_files(project, release=True)
            raise
        if outcome is None:  # stopped: give the task back (a clean quit)
            self._drop_task_files(project, release=True)
            return
        self._upload_keeping_on_failure(project, task, outcome)

    def _upload_keeping_on_failure(self, project: _Project, task: LeasedTask, outcome: Any) -> None:
        """Upload; if the coordinator cannot be reached (after the client's own retries), keep
        the trained update and send it again after the backoff instead of training anew.
        Retrying is safe: uploads are idempotent, and a lease that expired meanwhile is
        answered with lease_expired, which drops the update."""
        try:
            self._upload(project, task, outcome)
        except ClientError:
            project.pending_upload = (task, outcome)
            raise

    def _train(self, project: _Project, task: LeasedTask, model_path: Path) -> Any:
        manifest = task.manifest
        name = project.ref.project
        interval = self.options.checkpoint_interval_s or float(self._settings.checkpoint_interval_s)
        job = TrainJob(
            task_id=task.task_id,
            project=name,
            recipe=str(manifest["recipe"]),
            hparams=dict(manifest["hparams"]),
            shard_index=int(manifest["shard_index"]),
            base_model_path=str(model_path),
            base_digest=str(manifest["base_digest"]),
            checkpoint_path=str(self._checkpoint_path(project, task.task_id)),
            payload_path=str(self._payload_path(project, task.task_id)),
            codec=str(manifest.get("codec", "f32")),
            checkpoint_interval_s=interval,
            max_examples=int(manifest["max_examples"]) if manifest.get("max_examples") else None,
            feedback_path=str(project.dir / "error-feedback.safetensors"),
            data_path=self.project_data_path(project.ref.key, name),
            seed=int(hashlib.sha256(task.task_id.encode()).hexdigest()[:8], 16) % (2**31),
        )
        with self._lock:
            self._current = {
                "key": project.ref.key,
                "project": name,
                "task_id": task.task_id,
                "step": 0,
                "total_steps": 0,
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

    def _heartbeat_loop(
        self, project: _Project, task: LeasedTask, lost: threading.Event, done: threading.Event
    ) -> None:
        deadline = task.deadline
        issued = float(task.manifest.get("issued_at", time.time()))
        lease_s = max(10.0, deadline - issued)
        while not done.wait(max(1.0, min(lease_s / 3, deadline - time.time() - 5))):
            with self._lock:
                suspended_since = self._suspended_since
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
            except LeaseLostError:
                lost.set()
                self.trainer.stop_task()
                return
            except ClientError as exc:
                log.info("heartbeat failed: %s", exc)

    def _upload(self, project: _Project, task: LeasedTask, outcome: Any) -> None:
        name = project.ref.project
        self._set_state(EngineState.UPLOADING, project=name, task_id=task.task_id)
        payload = Path(outcome.payload_path).read_bytes()
        metrics = {
            k: float(outcome.metrics[k])
            for k in ("loss_before", "loss_after", "seconds", "examples_per_second")
        }
        manifest = {
            "project": name,
            "task_id": task.task_id,
            "client_id": project.creds.client_id,
            "base_digest": task.manifest["base_digest"],
            "payload_digest": outcome.payload_digest,
            "codec": outcome.codec,
            "num_examples": outcome.num_examples,
            "metrics": metrics,
        }
        try:
            receipt = project.client.upload_update(
                task.task_id, payload, manifest, project.signing_key
            )
        except LeaseLostError as exc:
            self._error(
                f"{name}: the update for task {task.task_id} came too late ({exc.code})",
                project=name,
                code=exc.code,
            )
            self._drop_task_files(project, release=False)
            return
        except ServerError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise
            self._error(
                f"{name}: the coordinator rejected the update: {exc}", project=name, code=exc.code
            )
            self._drop_task_files(project, release=False)
            self._publish(
                TaskFinished(
                    project=name,
                    task_id=task.task_id,
                    num_examples=outcome.num_examples,
                    compute_seconds=metrics["seconds"],
                    credit=0.0,
                    accepted=False,
                    metrics=metrics,
                )
            )
            return
        self._drop_task_files(project, release=False)
        credit = float(receipt.get("credit", 0.0))
        self.ledger.record(
            Contribution(
                project=project.ref.key,  # server and project: two servers may reuse a name
                task_id=task.task_id,
                examples=outcome.num_examples,
                compute_seconds=metrics["seconds"],
                credit=credit,
                credit_unit=str(receipt.get("credit_unit", "")),
                update_id=str(receipt.get("update_id", "")),
            )
        )
        self._publish(
            TaskFinished(
                project=name,
                task_id=task.task_id,
                num_examples=outcome.num_examples,
                compute_seconds=metrics["seconds"],
                credit=credit,
                accepted=True,
                metrics=metrics,
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


def project_key_of(target: JoinTarget) -> str:
    return project_key(target.server_url, target.project)


def snapshot_to_json(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True, default=str)
