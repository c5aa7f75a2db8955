"""What the trainer reports about the task in hand, kept on ``EngineCore.current``.

Progress (step, loss, compute time) is published as a ``Progress`` event and the task's
deadline is judged on each report (``check_late``: ``TaskFlow.give_back_if_late``); pauses
and resumes move the engine's state and count the time the task sat paused, which the
deadline estimate leaves out of its running time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.contributor.core import CurrentTask, EngineCore
from app.contributor.events import EngineState, Progress
from app.contributor.trainer import Message

__all__ = ["TrainerReports"]


class TrainerReports:
    def __init__(self, core: EngineCore, *, check_late: Callable[[CurrentTask], None]) -> None:
        self._core = core
        self._check_late = check_late

    def on_message(self, message: Message) -> None:
        """One message of the trainer (on the trainer handle's thread)."""
        core = self._core
        kind = message.get("type")
        with core.lock:
            current = core.current
        if current is None or message.get("task_id") != current.task_id:
            return
        project = current.project
        if kind == "progress":
            current.step, current.total_steps = message["step"], message["total_steps"]
            current.loss = message["loss"]
            current.compute_s = float(message.get("elapsed_s", 0.0))
            self._check_late(current)
            core.publish(
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
            current.paused_at = time.time()
            core.set_state(
                core.paused_state(),
                project=project,
                task_id=current.task_id,
                reasons=core.reasons(),
            )
        elif kind == "resumed":
            paused_at = current.paused_at
            if paused_at is not None:
                current.paused_s += time.time() - paused_at
                current.paused_at = None
            core.set_state(EngineState.TRAINING, project=project, task_id=current.task_id)
