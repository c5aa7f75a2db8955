"""The engine's handle on the training child (the engine side; it never imports torch).

One long-lived child (multiprocessing ``spawn``, see ``child.child_main``) imports torch
once and trains task after task; the handle restarts it only after a crash or a limits
change that needs a fresh process (device, thread pool). Messages: ``messages``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from app.contributor.energy import Energy
from app.contributor.limits import Limits
from app.contributor.trainer.child import child_main
from app.contributor.trainer.messages import (
    Message,
    TrainerCrashed,
    TrainerError,
    TrainJob,
    TrainOutcome,
    decode_message,
    encode_message,
)

__all__ = ["PAUSE_ACK_TIMEOUT_S", "START_TIMEOUT_S", "TrainerHandle"]

log = logging.getLogger(__name__)

# How long the parent waits for the child to confirm a pause before it suspends the process
# outright (a step that runs for seconds must not keep the owner's CPU busy).
PAUSE_ACK_TIMEOUT_S = 0.8
START_TIMEOUT_S = 120.0


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
                        privacy_spend=_spend(message.get("privacy_spend")),
                        energy=Energy.from_json(message.get("energy")),
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


def _spend(value: Any) -> dict[str, Any] | None:
    """The child's report of a dp-sgd task's spend, as a JSON object or None."""
    return dict(value) if isinstance(value, dict) else None
