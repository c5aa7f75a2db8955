"""What happens to one task, top to bottom.

``TaskFlow.work_on(project)`` is one step of the engine on one project:

1. an update trained before but not acknowledged (after a backoff or a restart) is sent
   again, and that is the step;
2. else a task carried over from before a restart, or a new lease (a task the coordinator
   refused before is never trained twice); it is saved so a restart can carry on;
3. a task already past its useful time is given back at once;
4. download the base model (cached, the cache held to its size);
5. train it in the trainer child (``TrainerHandle.run``: it encodes the update into the
   payload file), a heartbeat keeping the lease alive, resuming from the checkpoint after
   a crash; a task that could no longer be finished in time (paused, throttled, too slow)
   is stopped and given back (``give_back_if_late``, judged on every progress report,
   ``progress.py``, and by the heartbeat while paused);
6. the update's manifest is saved (kept until acknowledged), signed and uploaded;
7. the ledger records the contribution, with its credit, or the refusal and its reason
   (the project then backs off: a refusal never turns into a retraining loop).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from app.contributor.cache import ModelCache
from app.contributor.client import (
    AuthError,
    Cancelled,
    ClientError,
    LeasedTask,
    ServerError,
    UntrustedError,
)
from app.contributor.core import CurrentTask, EngineCore
from app.contributor.deadline import GIVE_BACK_REASON, estimate_finish
from app.contributor.events import CreditUpdated, EngineState, TaskFinished
from app.contributor.heartbeat import Heartbeat
from app.contributor.joining import project_data_path
from app.contributor.ledger import Contribution
from app.contributor.policy_driver import PolicyDriver
from app.contributor.privacy import PrivacyRecord
from app.contributor.progress import TrainerReports
from app.contributor.projects import Project, ProjectBook
from app.contributor.trainer import TrainerCrashed, TrainerError, TrainJob, TrainOutcome
from federated import protocol
from federated.errors import UPDATE_REJECTION_CODES
from federated.protocol.ids import task_seed

__all__ = ["TaskFlow"]

log = logging.getLogger(__name__)

# A task crashed the trainer this many times: give it back rather than loop.
MAX_CRASHES_PER_TASK = 3
# After a task ends without an accepted update: doubles from MIN to MAX, per project.
MIN_REJECTION_BACKOFF_S = 5.0
MAX_REJECTION_BACKOFF_S = 600.0
# Refusals the trainer finds before sending (the coordinator would answer the same).
UNSENDABLE_CODES = frozenset(UPDATE_REJECTION_CODES) | {"payload_too_large"}


REPORTED_METRICS = (
    "loss_before",
    "loss_after",
    "seconds",
    "examples_per_second",
    "dp_within_clip",
    "dp_epsilon",
)
"""What an update's manifest reports of the trainer's metrics; a private task's trainer
leaves the losses out (``app.contributor.trainer.private``)."""


class _TaskLost(Exception):
    pass


def _energy_fields(outcome: TrainOutcome) -> dict[str, Any]:
    """The manifest's energy fields: what training took here, within what is reportable."""
    energy = outcome.energy
    if energy is None or not 0 <= energy.joules <= protocol.limits.MAX_ENERGY_JOULES:
        return {}
    return {"energy_joules": round(energy.joules, 3), "energy_method": energy.method}


class TaskFlow:
    def __init__(self, core: EngineCore, projects: ProjectBook, policy: PolicyDriver) -> None:
        self._core = core
        self._projects = projects
        self._policy = policy
        # The trainer's reports on the task in hand (given to the TrainerHandle).
        self.on_trainer_message = TrainerReports(core, check_late=self.give_back_if_late).on_message

    # --- 1-7: one step on one project ----------------------------------------------------
    def work_on(self, project: Project, *, wait: float) -> None:
        core, projects = self._core, self._projects
        name = project.ref.project
        if project.pending_upload is not None:
            unsent, signed_later = project.pending_upload
            project.pending_upload = None
            self._send_update(project, unsent, signed_later)
            return
        task, project.resume_task = project.resume_task, None
        if task is None:
            core.set_state(EngineState.LEASING, project=name)
            task = self._lease(project, wait)
            project.closed = project.finished = False
            if task is None:
                return
            if task.task_id in project.ended:
                # A coordinator that hands out a task it refused: never train it twice.
                projects.give_back_id(project, task.task_id)
                self._rejected(
                    project, task, "task_ended", "handed out again", examples=0, seconds=0.0
                )
                return
            project.files.save_task(task)
        manifest = task.manifest
        if core.stop.is_set():
            projects.drop_task_files(project, release=True)
            return
        privacy = PrivacyRecord.load(project.dir)
        problem = privacy.task_problem(manifest)
        if problem is not None:
            projects.drop_task_files(project, release=True)
            raise TrainerError(problem, code="privacy_terms_changed")
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
                projects.drop_task_files(project, release=True)
                self._rejected(
                    project, task, "gave_back_late", arrived.reason, examples=0, seconds=0.0
                )
                return
        core.set_state(EngineState.DOWNLOADING, project=name, task_id=task.task_id)
        try:
            model_path = project.client.download_model(str(manifest["base_digest"]))
            self._trim_cache(keep=str(manifest["base_digest"]))
            outcome = self._train(project, task, model_path, privacy)
        except _TaskLost as exc:
            core.error(
                f"{name}: task {task.task_id} was lost ({exc}); moving on",
                project=name,
                code="lease_lost",
            )
            projects.drop_task_files(project, release=False)
            return
        except TrainerError as exc:
            projects.drop_task_files(project, release=True)
            if exc.code in UNSENDABLE_CODES:
                # The coordinator would refuse it: say why, and do not send or retrain it.
                self._rejected(project, task, exc.code, str(exc), examples=0, seconds=0.0)
                return
            raise
        except (UntrustedError, Cancelled):
            projects.drop_task_files(project, release=True)
            raise
        if outcome is None:  # stopped: give the task back (a clean quit, or too late)
            projects.drop_task_files(project, release=True)
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
        if outcome.privacy_spend is not None:  # trained: it counts, sent or not
            privacy.add_spend(outcome.privacy_spend, outcome.metrics.get("dp_epsilon"))
        upload = self._update_manifest(project, task, outcome)
        project.files.save_upload(task.task_id, upload)
        self._send_update(project, task, upload)

    # --- 2: lease ------------------------------------------------------------------------
    def _lease(self, project: Project, wait: float) -> LeasedTask | None:
        """Lease in a helper thread so that stop() does not wait for a long poll to end."""
        stop = self._core.stop
        result: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                result["task"] = project.client.lease(wait=wait)
            except BaseException as exc:
                result["error"] = exc
            done.set()
            if stop.is_set() and result.get("task") is not None:
                self._projects.give_back_id(project, result["task"].task_id)

        threading.Thread(target=call, name="barnraise-lease", daemon=True).start()
        while not done.wait(0.1):
            if stop.is_set():
                raise Cancelled("stopping")
        if "error" in result:
            raise result["error"]
        task: LeasedTask | None = result.get("task")
        return task

    # --- 4: the model --------------------------------------------------------------------
    def _trim_cache(self, *, keep: str) -> None:
        """Hold the model cache to the volunteer's ``cache_size_mb``, least recently used
        first, never the model about to be trained."""
        core = self._core
        limit = int(core.settings.cache_size_mb) * 1024 * 1024
        try:
            ModelCache(core.paths.cache_dir).enforce(limit, keep={keep})
        except OSError as exc:
            log.warning("could not trim the model cache: %s", exc)

    # --- 5: train ------------------------------------------------------------------------
    def _job(
        self, project: Project, task: LeasedTask, model_path: Path, privacy: PrivacyRecord
    ) -> TrainJob:
        core = self._core
        manifest = task.manifest
        name = project.ref.project
        interval = core.options.checkpoint_interval_s or float(core.settings.checkpoint_interval_s)
        max_norm = manifest.get("max_update_norm")
        max_bytes = manifest.get("max_payload_bytes")
        clip = manifest.get("update_clip_norm")
        return TrainJob(
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
            data_path=project_data_path(core.paths, project.ref.key, name),
            seed=task_seed(task.task_id),
            max_update_norm=float(max_norm) if isinstance(max_norm, int | float) else None,
            max_payload_bytes=int(max_bytes) if isinstance(max_bytes, int) else None,
            privacy=privacy.terms,
            update_clip_norm=float(clip) if isinstance(clip, int | float) else None,
            privacy_spends=list(privacy.spends),
            cpu_tdp_watts=float(core.settings.cpu_tdp_watts),
        )

    def _train(
        self, project: Project, task: LeasedTask, model_path: Path, privacy: PrivacyRecord
    ) -> TrainOutcome | None:
        """The trained outcome, or None when the task was stopped to be given back."""
        core = self._core
        trainer = core.trainer
        name = project.ref.project
        project.give_back, project.late = False, None
        job = self._job(project, task, model_path, privacy)
        with core.lock:
            core.current = CurrentTask(
                key=project.ref.key,
                project=name,
                task_id=task.task_id,
                useful_until=task.manifest.get("useful_until"),
                issued_at=task.manifest.get("issued_at"),
                started_at=time.time(),
            )
        heart = Heartbeat(core, project, task, check_late=self.give_back_if_late)
        heart.start()
        crashes = 0
        try:
            while True:
                core.set_state(
                    core.paused_state() if trainer.paused else EngineState.TRAINING,
                    project=name,
                    task_id=task.task_id,
                    reasons=core.reasons(),
                )
                try:
                    outcome = trainer.run(job)
                except TrainerCrashed as exc:
                    crashes += 1
                    if core.stop.is_set():
                        return None
                    if crashes >= MAX_CRASHES_PER_TASK:
                        raise TrainerError(
                            f"the training process crashed {crashes} times on this task ({exc})"
                        ) from exc
                    core.error(
                        f"{name}: {exc}; restarting it and resuming from the last checkpoint",
                        project=name,
                        code="trainer_crashed",
                    )
                    continue
                if heart.lost.is_set():
                    raise _TaskLost("the coordinator no longer holds the lease")
                if outcome.done:
                    return outcome
                if core.stop.is_set():
                    return None
                # Stopped for a restart (limits change) or a suspension held too long.
                if project.give_back:
                    project.give_back = False
                    return None
        finally:
            heart.stop()
            with core.lock:
                core.current = None

    def give_back_if_late(self, current: CurrentTask) -> None:
        """Stop the task in hand when its update could no longer be used when it arrives
        (paused, throttled, too slow): the work left is given back, not wasted."""
        project = self._projects.get(current.key)
        useful_until = current.useful_until
        if project is None or project.give_back or not isinstance(useful_until, int | float):
            return
        share, resumes_at = self._policy.computing_share()
        now = time.time()
        paused_at = current.paused_at
        paused_s = float(current.paused_s) + (now - paused_at if paused_at else 0.0)
        issued_at = current.issued_at
        estimate = estimate_finish(
            now=now,
            useful_until=float(useful_until),
            steps_done=int(current.step),
            total_steps=max(1, int(current.total_steps or 1)),
            compute_s=float(current.compute_s or 0.0),
            computing_share=share,
            resumes_at=resumes_at,
            issued_at=float(issued_at) if isinstance(issued_at, int | float) else None,
            running_s=max(0.0, now - float(current.started_at) - paused_s),
        )
        if estimate.in_time:
            return
        log.info("giving task %s back: %s (%s)", current.task_id, estimate.reason, estimate.detail)
        project.give_back = True
        project.late = estimate.detail
        self._core.trainer.stop_task()

    # --- 6: sign and upload --------------------------------------------------------------
    def _update_manifest(
        self, project: Project, task: LeasedTask, outcome: TrainOutcome
    ) -> protocol.UpdateManifest:
        """The manifest to sign and send with the trained update (kept until acknowledged)."""
        metrics = protocol.limits.reportable_metrics(
            {k: float(outcome.metrics[k]) for k in REPORTED_METRICS if k in outcome.metrics}
        )
        return protocol.UpdateManifest(
            project=project.ref.project,
            task_id=task.task_id,
            client_id=project.creds.client_id,
            base_digest=str(task.manifest["base_digest"]),
            payload_digest=outcome.payload_digest,
            codec=outcome.codec,
            num_examples=outcome.num_examples,
            metrics=metrics,
            # Only where the coordinator said it takes them: an older one refuses them.
            **(_energy_fields(outcome) if task.manifest.get("report_energy") is True else {}),
        )

    def _send_update(
        self, project: Project, task: LeasedTask, manifest: protocol.UpdateManifest
    ) -> None:
        """Upload; a final refusal is recorded and the task dropped (never sent again); when
        the coordinator cannot take it now, the update is kept and sent after the backoff.
        Re-sending is safe: the coordinator answers the same update with its first receipt."""
        core = self._core
        name = project.ref.project
        core.set_state(EngineState.UPLOADING, project=name, task_id=task.task_id)
        try:
            payload = project.files.payload(task.task_id).read_bytes()
        except OSError as exc:
            core.error(f"{name}: the trained update is gone ({exc})", project=name, code="lost")
            self._projects.drop_task_files(project, release=True)
            return
        examples = manifest.num_examples
        seconds = manifest.metrics.get("seconds", 0.0)
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
        # --- 7: the ledger ---------------------------------------------------------------
        project.files.drop()
        project.rejections = 0
        credit = float(receipt.credit)
        core.ledger.record(
            Contribution(
                project=project.ref.key,  # server and project: two servers may reuse a name
                task_id=task.task_id,
                examples=examples,
                compute_seconds=seconds,
                credit=credit,
                credit_unit=receipt.credit_unit,
                update_id=receipt.update_id,
                energy_joules=manifest.energy_joules,
                energy_method=manifest.energy_method or "",
            )
        )
        core.publish(
            TaskFinished(
                project=name,
                task_id=task.task_id,
                num_examples=examples,
                compute_seconds=seconds,
                credit=credit,
                accepted=True,
                metrics=dict(manifest.metrics),
            )
        )
        totals = core.ledger.totals(project.ref.key)
        self._projects.refresh_rank(project)
        core.publish(
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
        project: Project,
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
        core = self._core
        name = project.ref.project
        project.ended.append(task.task_id)
        project.rejections += 1
        delay = min(
            MAX_REJECTION_BACKOFF_S, MIN_REJECTION_BACKOFF_S * 2 ** (project.rejections - 1)
        )
        project.not_before = time.monotonic() + delay
        core.ledger.record(
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
        core.error(
            f"{name}: task {task.task_id} was not accepted ({code}: {message}); "
            f"asking for new work in {delay:.0f}s",
            project=name,
            code=code,
        )
        core.publish(
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
