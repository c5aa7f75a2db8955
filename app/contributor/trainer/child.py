"""The training child process (multiprocessing ``spawn`` target ``child_main``).

The child imports torch once and trains task after task, reading commands from the engine
over the pipe (``messages``). Inside it, the training hooks enforce the duty cycle
(``limits.DutyCycle``), block while paused (after writing a checkpoint), checkpoint every
``checkpoint_interval_s`` and report progress at most every ``PROGRESS_INTERVAL_S``; an
update the coordinator would refuse for the task's bounds is never sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.contributor.energy import Energy, EnergyMeter, combine
from app.contributor.limits import Limits, thread_env
from app.contributor.trainer.messages import (
    Message,
    TrainerError,
    TrainJob,
    decode_message,
    encode_message,
)
from federated.files import write_atomic

__all__ = ["PROGRESS_INTERVAL_S", "child_main"]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
_MEMORY_CHECK_INTERVAL_S = 0.5


class _StopTask(Exception):
    pass


class _ChildState:
    """What the child's reader thread shares with its training thread."""

    def __init__(self, conn: Connection, limits: Limits, paused: bool) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.tasks: queue.Queue[Message | None] = queue.Queue()
        self.pause_requested = threading.Event()
        if paused:
            self.pause_requested.set()
        self.wake = threading.Condition()
        self.stop_requested = threading.Event()
        self.limits = limits
        self.pending_limits: Limits | None = None

    def send(self, message: Message) -> None:
        with self.send_lock, contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(encode_message(message))

    def read_loop(self) -> None:
        while True:
            try:
                message = decode_message(self.conn.recv_bytes())
            except (EOFError, OSError, ValueError):
                # The engine is gone: stop training (checkpointing) and exit.
                self.stop_requested.set()
                self.tasks.put(None)
                self._notify()
                return
            kind = message.get("type")
            if kind == "task":
                self.stop_requested.clear()
                self.tasks.put(message)
            elif kind == "pause":
                self.pause_requested.set()
            elif kind == "resume":
                self.pause_requested.clear()
                self._notify()
            elif kind == "stop_task":
                self.stop_requested.set()
                self._notify()
            elif kind == "limits":
                self.pending_limits = Limits.from_json(message["limits"])
            elif kind == "shutdown":
                self.stop_requested.set()
                self.tasks.put(None)
                self._notify()
                return

    def _notify(self) -> None:
        with self.wake:
            self.wake.notify_all()


def child_main(conn: Connection, config_json: str) -> None:
    """Entry point of the training child (spawned)."""
    from app.contributor.limits import lower_priority

    config = json.loads(config_json)
    limits = Limits.from_json(config["limits"])
    # Before torch loads and before any thread starts, so every thread inherits both.
    lower_priority()
    os.environ.update(thread_env(limits.cpu_cores))
    logging.basicConfig(level=os.environ.get("BARNRAISE_TRAINER_LOG", "WARNING"))

    import torch

    from app.contributor.limits import apply_thread_limits, choose_device

    apply_thread_limits(limits.cpu_cores)
    device = choose_device(limits)
    # Import the core now, not on the first task, so the first task is as quick as the rest.
    import federated.codec
    import federated.recipes
    import federated.training  # noqa: F401

    state = _ChildState(conn, limits, bool(config.get("paused")))
    threading.Thread(target=state.read_loop, name="trainer-commands", daemon=True).start()
    state.send(
        {"type": "ready", "pid": os.getpid(), "device": device, "torch": str(torch.__version__)}
    )
    worker = _ChildWorker(state, device)
    while True:
        message = state.tasks.get()
        if message is None:
            return
        worker.run(message)


class _ChildWorker:
    def __init__(self, state: _ChildState, device: str) -> None:
        self.state = state
        self.device = device
        self._datasets: dict[str, Any] = {}
        self._feedback: dict[str, Any] = {}

    def _dataset(
        self, recipe: Any, hparams: dict[str, Any], shard: int, data_path: str | None
    ) -> Any:
        # Kept across tasks: loading and partitioning the data costs more than a small task.
        key = json.dumps([recipe.name, hparams, shard, data_path], sort_keys=True, default=str)
        if key not in self._datasets:
            if len(self._datasets) >= 4:
                self._datasets.pop(next(iter(self._datasets)))
            self._datasets[key] = recipe.load_shard(hparams, shard, data_path=data_path)
        return self._datasets[key]

    def run(self, message: Message) -> None:
        job = TrainJob(**{k: v for k, v in message.items() if k != "type"})
        from federated.errors import UpdateRejected

        try:
            self._train(job)
        except _StopTask:
            pass
        except UpdateRejected as exc:  # the update is over the task's bounds: not a failure
            self.state.send(
                {"type": "error", "task_id": job.task_id, "message": str(exc), "code": exc.code}
            )
        except Exception as exc:
            log.exception("task %s failed", job.task_id)
            self.state.send(
                {
                    "type": "error",
                    "task_id": job.task_id,
                    "message": f"{type(exc).__name__}: {exc}",
                    "code": getattr(exc, "code", "training_failed"),
                }
            )

    def _train(self, job: TrainJob) -> None:
        from app.contributor.trainer import private
        from federated.codec import ErrorFeedback, decode_model, encode_update
        from federated.recipes import get_recipe
        from federated.training import Checkpoint, TrainingInterrupted

        recipe = get_recipe(job.recipe)
        hparams = recipe.resolve_hparams(job.hparams)
        data = self._dataset(recipe, hparams, job.shard_index, job.data_path)
        base = decode_model(Path(job.base_model_path).read_bytes(), recipe.tensor_spec(hparams))
        resume = None
        checkpoint_path = Path(job.checkpoint_path)
        if checkpoint_path.exists():
            try:
                candidate = Checkpoint.from_bytes(checkpoint_path.read_bytes())
                if (
                    candidate.tag == job.task_id
                    and candidate.extra.get("base_digest") == job.base_digest
                ):
                    resume = candidate
            except ValueError as exc:
                log.warning("ignoring unreadable checkpoint %s: %s", checkpoint_path, exc)
        hooks = _Hooks(self.state, job, self.device)
        if resume is not None:  # the energy of the part trained before the restart
            hooks.prior_energy = Energy.from_json(resume.extra.get("energy"))
        try:
            outcome = private.train_task(
                job,
                recipe,
                hparams,
                base,
                data,
                hooks=hooks,
                resume=resume,
                device=self.device,
            )
        except TrainingInterrupted as stop:
            self.state.send(
                {
                    "type": "stopped",
                    "task_id": job.task_id,
                    "checkpoint_path": job.checkpoint_path,
                    "step": stop.checkpoint.step,
                }
            )
            raise _StopTask from None
        result = outcome.result
        feedback = None
        if job.feedback_path is not None and job.codec != "f32":
            feedback = self._feedback.get(job.project)
            if feedback is None:
                feedback = ErrorFeedback()
                path = Path(job.feedback_path)
                if path.exists():
                    try:
                        feedback = ErrorFeedback.from_bytes(path.read_bytes())
                    except Exception as exc:
                        log.warning("ignoring unreadable error feedback %s: %s", path, exc)
                self._feedback[job.project] = feedback
        try:
            encoded = encode_update(result.delta, job.codec, feedback=feedback)
        except ValueError:
            if feedback is None:
                raise
            feedback.reset()  # the model changed shape under us: start the residual afresh
            encoded = encode_update(result.delta, job.codec, feedback=feedback)
        _check_within_task_bounds(encoded.payload, job, recipe.tensor_spec(hparams))
        # No fsync (durable=False): after a power cut a torn payload or residual is detected
        # (unreadable or digest mismatch) and the work is redone, which is cheaper than
        # syncing every write.
        write_atomic(Path(job.payload_path), encoded.payload, durable=False)
        if feedback is not None and job.feedback_path is not None:
            write_atomic(Path(job.feedback_path), feedback.to_bytes(), durable=False)
        self.state.send(
            {
                "type": "done",
                "task_id": job.task_id,
                "payload_path": job.payload_path,
                "payload_digest": encoded.digest,
                "codec": encoded.codec,
                "num_examples": result.num_examples,
                "steps": result.steps,
                "metrics": outcome.metrics,
                "privacy_spend": outcome.spend,
                "energy": hooks.energy_so_far().to_json(),
            }
        )


def _check_within_task_bounds(payload: bytes, job: TrainJob, spec: Any) -> None:
    """Raise UpdateRejected (its code reaches the engine) when the coordinator would refuse
    ``payload`` for this task: too large, or an update norm over the task's bound."""
    from federated.codec import decode_update
    from federated.errors import UpdateRejected

    if job.max_payload_bytes is not None and len(payload) > job.max_payload_bytes:
        raise UpdateRejected(
            "payload_too_large",
            f"the encoded update is {len(payload):,} bytes; the task allows "
            f"{job.max_payload_bytes:,}",
        )
    decode_update(payload, spec, max_norm=job.max_update_norm, expected_codec=job.codec)


class _Hooks:
    """The training hooks inside the child: throttle, pause, checkpoint, report."""

    def __init__(self, state: _ChildState, job: TrainJob, device: str) -> None:
        from app.contributor.limits import DutyCycle

        self.state = state
        self.job = job
        self.device = device
        self._cuda = device == "cuda"
        self.duty = DutyCycle(100.0, busy_clock=self._busy_clock(), sleep=self._sleep)
        self._apply_limits(state.limits)
        now = time.perf_counter()
        self._last_checkpoint = now
        self._last_progress = 0.0
        self._last_memory_check = now
        self._pause_after_checkpoint = False
        self.energy = EnergyMeter(cpu_tdp_watts=job.cpu_tdp_watts, gpu=self._cuda)
        self.energy.start()
        self.prior_energy: Energy | None = None

    def energy_so_far(self) -> Energy:
        """The task's energy on this computer, with what was trained before a restart."""
        return combine(self.prior_energy, self.energy.total())

    def _busy_clock(self) -> Callable[[], float]:
        if self._cuda:
            return time.perf_counter  # wall time of GPU work (after synchronize)
        from app.contributor.limits import process_cpu_seconds

        return process_cpu_seconds

    def _apply_limits(self, limits: Limits) -> None:
        from app.contributor.limits import apply_thread_limits

        percent = min(limits.cpu_percent, limits.gpu_percent) if self._cuda else limits.cpu_percent
        self.duty.set_target(percent, cores=1 if self._cuda else limits.cpu_cores)
        if limits.cpu_cores != self.state.limits.cpu_cores:
            apply_thread_limits(limits.cpu_cores)
        self.state.limits = limits

    def _sleep(self, seconds: float) -> float:
        # Interrupted by a pause or stop so they take effect at once.
        start = time.perf_counter()
        if self.state.pause_requested.is_set() or self.state.stop_requested.is_set():
            return 0.0
        with self.state.wake:
            self.state.wake.wait(seconds)
        return time.perf_counter() - start

    def after_step(self, progress: Any) -> Any:
        from federated.training import StepDecision

        if self._cuda:
            import torch

            torch.cuda.synchronize()
        self.duty.after_step()
        self.energy.sample()
        state = self.state
        now = time.perf_counter()
        if (
            now - self._last_progress >= PROGRESS_INTERVAL_S
            or progress.step == progress.total_steps
        ):
            self._last_progress = now
            elapsed = max(progress.elapsed_s, 1e-9)
            state.send(
                {
                    "type": "progress",
                    "task_id": self.job.task_id,
                    "step": progress.step,
                    "total_steps": progress.total_steps,
                    "examples": progress.examples,
                    "loss": progress.loss,
                    "examples_per_second": progress.examples / elapsed,
                    "elapsed_s": progress.elapsed_s,
                    # What the duty cycle did so far (bench/limits.py reports these).
                    "longest_run_s": self.duty.longest_run_s,
                    "throttle_cycles": self.duty.cycles,
                }
            )
        if state.pending_limits is not None:
            limits, state.pending_limits = state.pending_limits, None
            self._apply_limits(limits)
        if now - self._last_memory_check >= _MEMORY_CHECK_INTERVAL_S:
            self._last_memory_check = now
            self._check_memory()
        if state.stop_requested.is_set():
            return StepDecision.STOP
        if state.pause_requested.is_set():
            self._pause_after_checkpoint = True
            return StepDecision.CHECKPOINT
        if now - self._last_checkpoint >= self.job.checkpoint_interval_s:
            return StepDecision.CHECKPOINT
        return StepDecision.CONTINUE

    def _check_memory(self) -> None:
        cap = self.state.limits.memory_cap_mb
        if not cap:
            return
        try:
            import psutil

            rss_mb = psutil.Process().memory_info().rss / 2**20
        except (ImportError, OSError):
            return
        if rss_mb > cap:
            raise TrainerError(
                f"training needs {rss_mb:.0f} MiB, more than the memory cap of {cap} MiB; "
                "raise the cap in the preferences or leave this project",
                code="memory_cap",
            )

    def save_checkpoint(self, checkpoint: Any) -> None:
        checkpoint.tag = self.job.task_id
        checkpoint.extra = {
            **checkpoint.extra,
            "base_digest": self.job.base_digest,
            "energy": self.energy_so_far().to_json(),
        }
        # No fsync: a checkpoint torn by a power cut is unreadable and ignored on resume.
        write_atomic(Path(self.job.checkpoint_path), checkpoint.to_bytes(), durable=False)
        self._last_checkpoint = time.perf_counter()
        self.state.send(
            {
                "type": "checkpoint",
                "task_id": self.job.task_id,
                "path": self.job.checkpoint_path,
                "step": checkpoint.step,
            }
        )
        if self._pause_after_checkpoint:
            self._pause_after_checkpoint = False
            self._block_while_paused()

    def _block_while_paused(self) -> None:
        state = self.state
        state.send({"type": "paused", "task_id": self.job.task_id})
        with state.wake:
            while state.pause_requested.is_set() and not state.stop_requested.is_set():
                state.wake.wait(1.0)
        state.send({"type": "resumed", "task_id": self.job.task_id})
        self.duty.reset()
