"""The joined projects as the engine works them: one client and signing key each, which
one asks for work next, and how long each waits after a failure.

``ProjectBook`` loads projects from the credential store (again after a join, a leave or a
key change), picks the next ready one by its resource share and mode
(``app.contributor.scheduling``), and books failures: an unreachable or
failing coordinator backs off (doubling, capped) while the other projects go on; a closed
project is asked again only rarely; an untrusted key or a refused identity stops the
project until the volunteer acts. It also gives leases back and draws the projects'
part of the engine's snapshot.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from app.contributor.client import (
    AuthError,
    ClientError,
    CoordinatorClient,
    LeasedTask,
    RetryPolicy,
    ServerError,
    UnavailableError,
    UntrustedError,
)
from app.contributor.core import EngineCore
from app.contributor.credentials import ProjectCredentials, ProjectRef
from app.contributor.events import EngineState
from app.contributor.joining import (
    JoinPreview,
    KeyChange,
    complete_join,
    preview_join,
    save_consent,
    save_project_data_path,
)
from app.contributor.key_change import accept_key_change, key_change_of
from app.contributor.privacy import summary as privacy_summary
from app.contributor.scheduling import Scheduler
from app.contributor.shares import Mode
from app.contributor.snapshot import KeyChangeSnapshot, ProjectSnapshot
from app.contributor.task_files import TaskFiles
from app.contributor.trainer import TrainerError
from federated import protocol
from federated.signing import SigningKey

__all__ = ["PROJECT_FAILURES", "Project", "ProjectBook"]

log = logging.getLogger(__name__)

# Backoff when the coordinator is unreachable or failing: doubles from MIN to MAX.
MIN_BACKOFF_S = 2.0
MAX_BACKOFF_S = 300.0
# A project its organiser closed is asked again this rarely (it may be reopened).
CLOSED_RECHECK_S = 3600.0
# Ask the coordinator for our leaderboard rank at most this often (after accepted updates).
RANK_REFRESH_S = 30.0
# What a step on one project may fail with and ``ProjectBook.failed`` books (stop the
# project, or back off); anything else is unexpected and stops the engine.
PRIVACY_STOP_CODES = frozenset(
    {"privacy_budget_spent", "privacy_terms_changed", "privacy_unsupported"}
)
"""Failures that stop work on a project for good (``app.contributor.privacy``)."""

PROJECT_FAILURES = (UntrustedError, AuthError, UnavailableError, ServerError, TrainerError, OSError)


@dataclass
class Project:
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
    finished: bool = False  # it finished training (closed too): its model is final
    rejections: int = 0  # tasks in a row that ended without an accepted update
    ended: deque[str] = field(default_factory=lambda: deque(maxlen=64))  # refused task ids
    key_change: KeyChange | None = None  # the coordinator signs with an unpinned key
    rank: int | None = None
    rank_checked_at: float = float("-inf")
    resume_task: LeasedTask | None = None  # a task carried over from before a restart
    # A trained update the coordinator has not acknowledged yet, with its manifest.
    pending_upload: tuple[LeasedTask, protocol.UpdateManifest] | None = None
    give_back: bool = False  # the task in hand was stopped to be given back
    late: str | None = None  # ... because it could not be finished in time (the numbers)
    held: bool = False  # the volunteer suspended it: a task it trains is stopped, given back

    @property
    def in_hand(self) -> bool:
        """Between steps: it holds work to finish (an update to send, a task to go on with)."""
        return self.pending_upload is not None or self.resume_task is not None


class ProjectBook:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._projects: dict[str, Project] = {}
        self._dirty = True
        self.scheduler = Scheduler(core)

    # --- which projects ------------------------------------------------------------------
    def get(self, key: str) -> Project | None:
        with self._core.lock:
            return self._projects.get(key)

    def loaded(self) -> list[Project]:
        with self._core.lock:
            return list(self._projects.values())

    def reload(self, *, forget: str | None = None) -> None:
        """Read the projects again before the next step (after ``forget``-ting one)."""
        with self._core.lock:
            if forget is not None:
                self._projects.pop(forget, None)
            self._dirty = True
            self._core.wake.notify_all()

    def joined(self, creds: ProjectCredentials) -> None:
        """A join stored ``creds``; a project already loaded carries on with its new token."""
        with self._core.lock:
            known = self._projects.get(creds.key)
            if known is not None:
                # A re-join (same key, same identity) got a new token; the old one no longer
                # works. Swapped in place so that a task in hand carries on with it.
                known.creds, known.client.token = creds, creds.token
                known.disabled_reason = None
            self.reload()

    def join(
        self,
        text: str | JoinPreview,
        *,
        display_name: str,
        team: str | None = None,
        data_path: str | None = None,
    ) -> ProjectCredentials:
        core = self._core
        insecure = core.options.insecure
        preview = text if isinstance(text, JoinPreview) else preview_join(text, insecure=insecure)
        creds = complete_join(
            preview, core.credentials, display_name=display_name, team=team, insecure=insecure
        )
        save_consent(core.paths, creds, preview)
        if data_path is not None:
            save_project_data_path(core.paths, creds.key, creds.project, data_path)
        self.joined(creds)
        return creds

    def leave(self, key: str) -> None:
        core = self._core
        with core.lock:
            project = self._projects.get(key)
            current = core.current
        if current is not None and current.key == key:
            core.trainer.stop_task()
        if project is not None:
            self.drop_task_files(project, release=True)
        for ref in core.credentials.list_projects():
            if ref.key == key:  # its share and mode go with it (joining again starts afresh)
                self.scheduler.forget(key, core.paths.project_dir(key, ref.project))
        core.credentials.delete(key)
        self.reload(forget=key)

    def accept_new_key(self, key: str, fingerprint: str) -> ProjectCredentials:
        core = self._core
        project = self.get(key)
        creds, change = (project.creds, project.key_change) if project else (None, None)
        accept_key_change(core.credentials, creds, change, fingerprint)
        self.reload(forget=key)
        updated = core.credentials.load(key)
        assert updated is not None
        return updated

    def retry_now(self) -> None:
        with self._core.lock:
            for project in self._projects.values():
                project.not_before = 0.0
                project.backoff_s = 0.0
            self._core.wake.notify_all()

    def set_upload_cap(self, kbps: float) -> None:
        with self._core.lock:
            for project in self._projects.values():
                project.client.upload_kbps_cap = kbps

    def load(self) -> list[Project]:
        core = self._core
        with core.lock:
            if not self._dirty:
                return list(self._projects.values())
        refs = core.credentials.list_projects()
        loaded: dict[str, Project] = {}
        for ref in refs:
            with core.lock:
                existing = self._projects.get(ref.key)
            if existing is not None:
                loaded[ref.key] = existing
                continue
            try:
                creds = core.credentials.load(ref.key)
            except Exception as exc:
                core.error(
                    f"cannot read the credentials of {ref.project}: {exc}",
                    project=ref.project,
                    code="credentials",
                )
                continue
            if creds is None:
                continue
            try:
                loaded[ref.key] = self._make(ref, creds)
            except ClientError as exc:
                core.error(str(exc), project=ref.project, code="insecure", fatal=True)
        with core.lock:
            self._projects = loaded
            self._dirty = False
            return list(loaded.values())

    def _make(self, ref: ProjectRef, creds: ProjectCredentials) -> Project:
        core = self._core
        client = CoordinatorClient(
            creds.server_url,
            creds.project,
            token=creds.token,
            project_public_key_b64=creds.project_public_key_b64,
            cache_dir=core.paths.cache_dir,
            insecure=core.options.insecure,
            upload_kbps_cap=float(core.settings.upload_kbps_cap),
            retry=core.options.retry,
            cancel=core.cancel,
        )
        key = SigningKey.from_private_bytes(base64.b64decode(creds.private_key_b64))
        folder = core.paths.project_dir(ref.key, ref.project)
        return Project(
            ref=ref,
            creds=creds,
            client=client,
            signing_key=key,
            dir=folder,
            files=TaskFiles(folder),
        )

    def close_clients(self) -> None:
        for project in self.loaded():
            project.client.close()

    def next_ready(self) -> tuple[Project, int] | None:
        """The next project to work on, by share (``Scheduler.choose``), and how many are
        ready; None after the engine's state says why there is none (no project; all
        suspended, waiting or offline). A suspended project's carried-over task goes back."""
        core = self._core
        projects = []
        for p in self.load():
            mode = self.scheduler.of(p.ref.key, p.dir).mode
            p.held = mode is Mode.SUSPENDED
            if p.held and p.resume_task is not None:
                p.resume_task = None
                self.drop_task_files(p, release=True)
            if p.disabled_reason is None and self.scheduler.admits(
                p.ref.key, p.dir, p.ref.project, in_hand=p.in_hand
            ):
                projects.append(p)
        if not projects:
            core.set_state(EngineState.IDLE)
            core.wait(core.options.sensor_interval_s)
            return None
        now = time.monotonic()
        ready = [p for p in projects if p.not_before <= now]
        if not ready:
            waiting = [p for p in projects if not p.closed]
            offline = bool(waiting) and all(p.offline for p in waiting)
            core.set_state(EngineState.OFFLINE if offline else EngineState.BACKOFF)
            core.wait(min(p.not_before for p in projects) - now)
            return None
        chosen = self.scheduler.choose([(p.ref.key, p.dir) for p in ready])
        return next(p for p in ready if p.ref.key == chosen), len(ready)

    # --- leases --------------------------------------------------------------------------
    def _quiet_client(self, project: Project) -> CoordinatorClient:
        """A client for the goodbye calls (release) that the stop event does not cancel."""
        return CoordinatorClient(
            project.creds.server_url,
            project.creds.project,
            token=project.creds.token,
            project_public_key_b64=project.creds.project_public_key_b64,
            insecure=self._core.options.insecure,
            retry=RetryPolicy(attempts=2, base_s=0.2, cap_s=1.0),
            timeout=(3.0, 5.0),
        )

    def give_back_id(self, project: Project, task_id: str) -> None:
        client = self._quiet_client(project)
        try:
            client.release(task_id)
            log.info("gave back task %s of %s", task_id, project.ref.project)
        except ClientError as exc:
            log.info("could not give back task %s (%s); it will expire on the server", task_id, exc)
        finally:
            client.close()

    def drop_task_files(self, project: Project, *, release: bool) -> None:
        """Forget the task in hand (giving its lease back first if ``release``)."""
        task_id = project.files.saved_task_id()
        if release and task_id:
            self.give_back_id(project, task_id)
        project.files.drop()

    # --- failures ------------------------------------------------------------------------
    def worked(self, project: Project) -> None:
        """A step on ``project`` ended without a failure."""
        project.backoff_s = 0.0
        project.offline = False

    def failed(self, project: Project, exc: Exception) -> None:
        """A step on ``project`` failed with ``exc``: stop the project, or back off."""
        core = self._core
        name = project.ref.project
        if isinstance(exc, UntrustedError):
            project.disabled_reason = str(exc)
            project.key_change = key_change_of(project.creds, insecure=core.options.insecure)
            message = project.key_change.describe() if project.key_change else str(exc)
            code = "key_changed" if project.key_change else "untrusted"
            core.error(f"{name}: {message}", project=name, code=code, fatal=True)
        elif getattr(exc, "code", None) in PRIVACY_STOP_CODES:
            # The budget on this machine's data is spent, the project's is, or the terms
            # changed: no retry can help; joining again (new terms) or nothing.
            project.disabled_reason = str(getattr(exc, "message", None) or exc)
            core.error(
                f"{name}: {project.disabled_reason}",
                project=name,
                code=str(getattr(exc, "code", "")),
                fatal=True,
            )
        elif isinstance(exc, AuthError):
            if self._token_was_replaced(project):
                self._back_off(project, exc)  # a re-join swapped the token mid-request
                return
            project.disabled_reason = str(exc)
            core.error(
                f"{name}: the coordinator no longer accepts this machine ({exc.message}); "
                "leave the project and join it again",
                project=name,
                code=exc.code,
                fatal=True,
            )
        else:
            self._back_off(project, exc)

    def _token_was_replaced(self, project: Project) -> bool:
        """After a 401: does the token we hold now work? (A join while this request was
        under way replaced it; the request carried the old one.)"""
        try:
            stored = self._core.credentials.load(project.ref.key)
        except Exception:
            return False
        if stored is not None and stored.token != project.client.token:
            project.creds, project.client.token = stored, stored.token
        try:
            project.client.me()
        except ClientError:
            return False
        return True

    def _back_off(self, project: Project, exc: Exception) -> None:
        """One project failed: it waits (doubling, capped) while the others go on."""
        core = self._core
        name = project.ref.project
        if isinstance(exc, ServerError) and exc.code in ("project_closed", "project_finished"):
            project.closed = True
            project.finished = exc.code == "project_finished"
            project.not_before = time.monotonic() + CLOSED_RECHECK_S
            core.error(
                f"{name} has finished training — thank you! Its model is final"
                if project.finished
                else f"{name} is closed by its organiser; it no longer needs work from you",
                project=name,
                code=exc.code,
            )
            return
        project.offline = isinstance(exc, UnavailableError)
        project.backoff_s = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, project.backoff_s * 2))
        project.not_before = time.monotonic() + project.backoff_s
        if project.offline:
            core.set_state(EngineState.OFFLINE, project=name)
            message = f"can't reach the server of {name}; retrying in {project.backoff_s:.0f}s"
        else:
            message = f"{name}: {exc}; retrying in {project.backoff_s:.0f}s"
        core.error(message, project=name, code=getattr(exc, "code", "unavailable"))

    # --- what the volunteer sees ---------------------------------------------------------
    def refresh_rank(self, project: Project) -> None:
        """Ask the coordinator for our place on the leaderboard, at most every RANK_REFRESH_S
        (it ranks every contributor to answer); a failure keeps the last known rank."""
        now = time.monotonic()
        if now - project.rank_checked_at < RANK_REFRESH_S:
            return
        project.rank_checked_at = now
        try:
            rank = project.client.me().rank
        except ClientError as exc:
            log.debug("could not read our rank in %s: %s", project.ref.project, exc)
            return
        if isinstance(rank, int):
            project.rank = rank

    def snapshots(self) -> tuple[ProjectSnapshot, ...]:
        """Every joined project, with its totals and what the engine knows of it."""
        core = self._core
        loaded = self.loaded()
        refs = {p.ref.key: p for p in loaded}
        try:
            known = core.credentials.list_projects()
        except Exception:
            known = [p.ref for p in loaded]
        listed = []
        for ref in known:
            totals = core.ledger.totals(ref.key)
            project = refs.get(ref.key)
            change = project.key_change if project else None
            schedule = self.scheduler.of(ref.key, core.paths.project_dir(ref.key, ref.project))
            listed.append(
                ProjectSnapshot(
                    key=ref.key,
                    project=ref.project,
                    server_url=ref.server_url,
                    tasks=totals.tasks,
                    examples=totals.examples,
                    compute_seconds=round(totals.compute_seconds, 3),
                    credit=totals.credit,
                    credit_unit=totals.credit_unit,
                    last_update=totals.last_at,
                    rank=project.rank if project else None,
                    disabled=project.disabled_reason if project else None,
                    privacy=privacy_summary(core.paths.project_dir(ref.key, ref.project)),
                    closed=project.closed if project else False,
                    finished=project.finished if project else False,
                    offline=project.offline if project else False,
                    rejected=totals.rejected,
                    energy_joules=totals.energy_joules,
                    energy_measured_joules=totals.energy_measured_joules,
                    share=schedule.share,
                    mode=schedule.mode.value,
                    key_change=KeyChangeSnapshot(
                        project=change.project,
                        pinned_fingerprint=change.pinned_fingerprint,
                        new_fingerprint=change.new_fingerprint,
                        new_public_key_b64=change.new_public_key_b64,
                    )
                    if change
                    else None,
                )
            )
        return tuple(listed)
