"""The training child process and its handle in the engine.

One long-lived child (multiprocessing ``spawn``) imports torch once and trains task after
task; the engine restarts it only after a crash or a limits change that needs a fresh
process (device, thread pool). The engine itself never imports torch.

Parent and child exchange small JSON-able dicts over a duplex ``Pipe``; tensors go through
files (the base model, checkpoints and the encoded update, all safetensors), never pickled.

Parent → child::

    {"type": "task", **TrainJob}      train one task (see TrainJob)
    {"type": "pause"} / {"type": "resume"}
    {"type": "stop_task"}             checkpoint now and give the task up ("stopped")
    {"type": "limits", "limits": {...}}
    {"type": "shutdown"}

Child → parent::

    {"type": "ready", "pid", "device", "torch"}
    {"type": "progress", "task_id", "step", "total_steps", "examples", "loss",
     "examples_per_second", "elapsed_s"}
    {"type": "checkpoint", "task_id", "path", "step"}
    {"type": "paused", "task_id"} / {"type": "resumed", "task_id"}
    {"type": "done", "task_id", "payload_path", "payload_digest", "codec", "num_examples",
     "steps", "metrics"}
    {"type": "stopped", "task_id", "checkpoint_path", "step"}
    {"type": "error", "task_id", "message", "code"}

Inside the child, the training hooks enforce the duty cycle (``limits.DutyCycle``), block
while paused (after writing a checkpoint), checkpoint every ``checkpoint_interval_s`` and
report progress at most every ``PROGRESS_INTERVAL_S``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.contributor.limits import Limits, thread_env

__all__ = [
    "PAUSE_ACK_TIMEOUT_S",
    "TrainJob",
    "TrainOutcome",
    "TrainerCrashed",
    "TrainerError",
    "TrainerHandle",
]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
# How long the parent waits for the child to confirm a pause before it suspends the process
# outright (a step that runs for seconds must not keep the owner's CPU busy).
PAUSE_ACK_TIMEOUT_S = 0.8
START_TIMEOUT_S = 120.0
_MEMORY_CHECK_INTERVAL_S = 0.5


class TrainerError(Exception):
    """The child reported that a task cannot be trained (bad data, recipe, memory cap)."""

    def __init__(self, message: str, code: str = "training_failed") -> None:
        super().__init__(message)
        self.code = code


class TrainerCrashed(TrainerError):
    """The child process died; restart it and resume from the last checkpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "trainer_crashed")


@dataclass(frozen=True)
class TrainJob:
    """One task for the child, all paths absolute."""

    task_id: str
    project: str
    recipe: str
    hparams: dict[str, Any]
    shard_index: int
    base_model_path: str
    base_digest: str
    checkpoint_path: str
    payload_path: str
    codec: str
    checkpoint_interval_s: float = 60.0
    max_examples: int | None = None
    data_path: str | None = None
    feedback_path: str | None = None  # error-feedback residual of this project (lossy codecs)
    seed: int | None = None
    # The task's bounds, checked here as the coordinator will check them, so that an update
    # it would refuse is never sent (the engine gives the task back with the reason).
    max_update_norm: float | None = None
    max_payload_bytes: int | None = None


@dataclass(frozen=True)
class TrainOutcome:
    """``done``: ``payload_path`` holds the encoded update. Otherwise the task was stopped
    and ``checkpoint_path`` holds where it got to."""

    task_id: str
    done: bool
    payload_path: str | None = None
    payload_digest: str = ""
    codec: str = ""
    num_examples: int = 0
    steps: int = 0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    checkpoint_path: str | None = None


Message = dict[str, Any]


def encode_message(message: Message) -> bytes:
    """Pipe messages are JSON, not pickle: neither side ever unpickles what the other sent,
    and the tray (which never imports torch) cannot be made to import it by a message."""
    return json.dumps(message).encode("utf-8")


def decode_message(data: bytes) -> Message:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a trainer message must be a JSON object")
    return message


# =========================================================================== parent side


class TrainerHandle:
    """The engine's handle on the child. All methods are thread-safe.

    ``on_message`` receives every child message (progress, checkpoint, paused, ...) on the
    handle's reader thread.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        on_message: Callable[[Message], None] | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self._limits = limits
        self._on_message = on_message
        self._start_timeout = start_timeout
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._results: queue.Queue[Message] = queue.Queue()
        self._ready = threading.Event()
        self._paused_ack = threading.Event()
        self._paused = False
        self._hard_suspended = False
        self._running_task: str | None = None
        self._restart_pending = False
        self.device = "cpu"
        self.starts = 0

    # --- lifecycle -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else int(process.pid)

    @property
    def alive(self) -> bool:
        process = self._process
        return process is not None and process.is_alive()

    @property
    def limits(self) -> Limits:
        return self._limits

    def start(self) -> None:
        """Start the child if it is not running and wait until it has imported torch."""
        with self._lock:
            if self.alive:
                return
            self._cleanup_locked()
            ctx = mp.get_context("spawn")
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            config = {"limits": self._limits.to_json(), "paused": self._paused}
            process = ctx.Process(
                target=child_main,
                args=(child_conn, json.dumps(config)),
                name="barnraise-trainer",
                daemon=True,
            )
            process.start()
            child_conn.close()
            self._process, self._conn = process, parent_conn
            self._ready.clear()
            self._results = queue.Queue()
            self._reader = threading.Thread(
                target=self._read_loop,
                args=(parent_conn, self._results),
                name="trainer-reader",
                daemon=True,
            )
            self._reader.start()
            self.starts += 1
        deadline = time.monotonic() + self._start_timeout
        while not self._ready.wait(0.05):
            if not self.alive:
                code = self._process.exitcode if self._process is not None else None
                raise TrainerCrashed(
                    f"the training process exited while starting (exit code {code}); "
                    "if you embed the engine, guard your main module with "
                    "`if __name__ == '__main__':` (multiprocessing spawn re-imports it)"
                )
            if time.monotonic() > deadline:
                self.close()
                raise TrainerCrashed(
                    f"the training process did not start within {self._start_timeout:.0f}s"
                )

    @property
    def ready(self) -> bool:
        """The child has imported torch and the core and answered its first message."""
        return self._ready.is_set()

    def _cleanup_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None
        if self._process is not None:
            self._process.join(timeout=0)
        self._process = None
        self._hard_suspended = False

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to exit; kill it if it does not within ``timeout`` (idempotent)."""
        with self._lock:
            process = self._process
            if process is None:
                return
            self._resume_process_locked()
            with contextlib.suppress(OSError, ValueError):
                self._send({"type": "shutdown"})
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(5)
            self._cleanup_locked()

    def kill(self) -> None:
        """Kill the child abruptly (tests, and a child that ignores shutdown)."""
        with self._lock:
            if self._process is not None and self._process.is_alive():
                self._resume_process_locked()
                self._process.kill()
                self._process.join(5)

    def restart(self) -> None:
        self.close()
        self.start()

    # --- messages --------------------------------------------------------------------------
    def _send(self, message: Message) -> None:
        conn = self._conn
        if conn is None:
            raise TrainerCrashed("the training process is not running")
        with self._send_lock:
            conn.send_bytes(encode_message(message))

    def _read_loop(self, conn: Connection, results: queue.Queue[Message]) -> None:
        while True:
            try:
                message = decode_message(conn.recv_bytes())
            except (EOFError, OSError, ValueError):
                results.put({"type": "crashed"})
                return
            kind = message.get("type")
            if kind == "ready":
                self.device = str(message.get("device", "cpu"))
                self._ready.set()
            elif kind == "paused":
                self._paused_ack.set()
            elif kind in ("done", "stopped", "error"):
                results.put(message)
            if self._on_message is not None:
                try:
                    self._on_message(message)
                except Exception:
                    log.exception("trainer message callback failed")

    # --- work ------------------------------------------------------------------------------
    def run(self, job: TrainJob) -> TrainOutcome:
        """Train ``job`` and block until it is done or stopped.

        Raises TrainerCrashed if the child dies (restart with :meth:`start` and run the job
        again: it resumes from its checkpoint) and TrainerError if the task cannot be trained.
        """
        self.start()
        with self._lock:
            results = self._results
            self._running_task = job.task_id
            self._send({"type": "task", **dataclasses.asdict(job)})
        try:
            while True:
                message = results.get()
                kind = message["type"]
                if kind == "crashed":
                    code = self._process.exitcode if self._process is not None else None
                    raise TrainerCrashed(f"the training process died (exit code {code})")
                if message.get("task_id") != job.task_id:
                    continue  # a late answer about an earlier task
                if kind == "done":
                    return TrainOutcome(
                        task_id=job.task_id,
                        done=True,
                        payload_path=str(message["payload_path"]),
                        payload_digest=str(message["payload_digest"]),
                        codec=str(message["codec"]),
                        num_examples=int(message["num_examples"]),
                        steps=int(message["steps"]),
                        metrics={k: float(v) for k, v in message["metrics"].items()},
                        checkpoint_path=job.checkpoint_path,
                    )
                if kind == "stopped":
                    return TrainOutcome(
                        task_id=job.task_id,
                        done=False,
                        checkpoint_path=message.get("checkpoint_path"),
                    )
                raise TrainerError(
                    str(message["message"]), str(message.get("code", "training_failed"))
                )
        finally:
            with self._lock:
                self._running_task = None
                restart = self._restart_pending
            if restart and self.alive:
                self.restart()

    @property
    def running_task(self) -> str | None:
        return self._running_task

    def pause(self, *, ack_timeout: float = PAUSE_ACK_TIMEOUT_S) -> bool:
        """Pause training (the child checkpoints and blocks). Returns True when the child
        confirmed; otherwise, while a task runs, the process is suspended by the OS."""
        with self._lock:
            if self._paused:
                return True
            self._paused = True
            self._paused_ack.clear()
            if not self.alive:
                return True
            self._send({"type": "pause"})
            running = self._running_task is not None
        if not running or self._paused_ack.wait(ack_timeout):
            return True
        with self._lock:
            if self._paused and self.alive and not self._hard_suspended:
                try:
                    import psutil

                    psutil.Process(self.pid).suspend()
                    self._hard_suspended = True
                    log.info("the trainer did not pause within %.1fs; suspended it", ack_timeout)
                except (ImportError, OSError) as exc:
                    log.warning("could not suspend the trainer: %s", exc)
        return False

    def _resume_process_locked(self) -> None:
        if self._hard_suspended and self._process is not None:
            with contextlib.suppress(Exception):
                import psutil

                psutil.Process(self.pid).resume()
        self._hard_suspended = False

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._resume_process_locked()
            if self.alive:
                self._send({"type": "resume"})

    @property
    def paused(self) -> bool:
        return self._paused

    def stop_task(self) -> None:
        """Ask the child to checkpoint and give up the current task (``run`` returns)."""
        with self._lock:
            self._resume_process_locked()
            if self.alive and self._running_task is not None:
                self._send({"type": "stop_task"})

    def set_limits(self, limits: Limits) -> bool:
        """Apply new limits: live between steps, or by restarting the child (after the task
        that runs now, which is then stopped at a checkpoint). Returns True if a restart is
        needed."""
        with self._lock:
            needs_restart = self._limits.needs_restart(limits)
            self._limits = limits
            if not self.alive:
                return needs_restart
            if needs_restart:
                if self._running_task is not None:
                    self._restart_pending = True
                    self.stop_task()
                else:
                    self.restart()
            else:
                self._send({"type": "limits", "limits": limits.to_json()})
            return needs_restart


# =========================================================================== child side


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
        from federated.codec import ErrorFeedback, decode_model, encode_update
        from federated.recipes import get_recipe
        from federated.training import Checkpoint, TrainingInterrupted, train_locally

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
        try:
            result = train_locally(
                recipe,
                hparams,
                base,
                data,
                hooks=hooks,
                resume=resume,
                device=self.device,
                max_examples=job.max_examples,
                seed=job.seed,
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
        _write_atomic(Path(job.payload_path), encoded.payload)
        if feedback is not None and job.feedback_path is not None:
            _write_atomic(Path(job.feedback_path), feedback.to_bytes())
        self.state.send(
            {
                "type": "done",
                "task_id": job.task_id,
                "payload_path": job.payload_path,
                "payload_digest": encoded.digest,
                "codec": encoded.codec,
                "num_examples": result.num_examples,
                "steps": result.steps,
                "metrics": result.metrics(),
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


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # No fsync: after a power cut a torn checkpoint or payload is detected (unreadable or
    # digest mismatch) and the work is redone, which is cheaper than syncing every write.
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
        checkpoint.extra = {**checkpoint.extra, "base_digest": self.job.base_digest}
        _write_atomic(Path(self.job.checkpoint_path), checkpoint.to_bytes())
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
