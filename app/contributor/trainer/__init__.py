"""The training child process and its handle in the engine.

One long-lived child (multiprocessing ``spawn``) imports torch once and trains task after
task; the engine restarts it only after a crash or a limits change that needs a fresh
process (device, thread pool). The engine itself never imports torch.

- ``messages``: the pipe's JSON message format, ``TrainJob``/``TrainOutcome``, the errors;
- ``handle``: ``TrainerHandle``, the engine side;
- ``child``: ``child_main`` (the spawn target), the worker, its training hooks and the
  check of an update against the task's bounds.
"""

from __future__ import annotations

from app.contributor.trainer.child import PROGRESS_INTERVAL_S, child_main
from app.contributor.trainer.child import _ChildState as _ChildState  # bench/limits.py
from app.contributor.trainer.child import _ChildWorker as _ChildWorker
from app.contributor.trainer.child import _Hooks as _Hooks  # bench/limits.py
from app.contributor.trainer.handle import PAUSE_ACK_TIMEOUT_S, START_TIMEOUT_S, TrainerHandle
from app.contributor.trainer.messages import (
    Message,
    TrainerCrashed,
    TrainerError,
    TrainJob,
    TrainOutcome,
    decode_message,
    encode_message,
)

__all__ = [
    "PAUSE_ACK_TIMEOUT_S",
    "PROGRESS_INTERVAL_S",
    "START_TIMEOUT_S",
    "Message",
    "TrainJob",
    "TrainOutcome",
    "TrainerCrashed",
    "TrainerError",
    "TrainerHandle",
    "child_main",
    "decode_message",
    "encode_message",
]
