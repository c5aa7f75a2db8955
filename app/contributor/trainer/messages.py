"""The message format between the engine and the training child, and the trainer errors.

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
     "steps", "metrics", "privacy_spend", "energy": {"joules", "method"}}
    {"type": "stopped", "task_id", "checkpoint_path", "step"}
    {"type": "error", "task_id", "message", "code"}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from app.contributor.energy import DEFAULT_CPU_TDP_WATTS, Energy

__all__ = [
    "Message",
    "TrainJob",
    "TrainOutcome",
    "TrainerCrashed",
    "TrainerError",
    "decode_message",
    "encode_message",
]


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
    # The task's privacy terms (the protocol's PrivacyTerms, checked by the engine against
    # what the volunteer consented to), its update bound (dp-fedavg) and the volunteer's
    # own spends so far on this project (dp-sgd; app.contributor.privacy).
    privacy: dict[str, Any] | None = None
    update_clip_norm: float | None = None
    privacy_spends: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # The CPU's declared TDP (setting cpu_tdp_watts): what the energy estimate is made of
    # where the counters cannot be read (app.contributor.energy).
    cpu_tdp_watts: float = DEFAULT_CPU_TDP_WATTS


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
    privacy_spend: dict[str, Any] | None = None  # dp-sgd: what this task spent
    energy: Energy | None = None  # what training it took on this computer, and how known


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
