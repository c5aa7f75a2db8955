"""Local training: from a base model and a local data set to an update and its metrics.

The loop is deterministic on CPU for a given seed: the batch order of every epoch derives
from (seed, epoch), so a run that is checkpointed, stopped and resumed produces exactly the
delta of one uninterrupted run (the learning rate of a step, ``scheduled_lr``, depends on
its index alone). Between steps it calls cooperative hooks, which is where the
contributor throttles (sleeps), pauses (blocks) and asks for checkpoints.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from federated.protocol.ids import task_seed as task_seed
from federated.recipes.base import Dataset, HParamValue, Recipe
from federated.tensors import StateDict

CHECKPOINT_FORMAT = "barnraise-checkpoint/1"


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total_steps: int
    examples: int
    loss: float
    elapsed_s: float


class StepDecision(enum.Enum):
    CONTINUE = "continue"
    CHECKPOINT = "checkpoint"
    STOP = "stop"
    """Checkpoint, then raise TrainingInterrupted."""


class TrainingHooks(Protocol):
    def after_step(self, progress: TrainProgress) -> StepDecision:
        """Called between steps; may sleep (throttle) or block (pause) before returning."""
        ...

    def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...


@dataclass
class Checkpoint:
    """Everything needed to continue a local run exactly where it stopped.

    Serialised as safetensors plus JSON metadata (never pickle), so a checkpoint file from
    disk can be loaded without running code.
    """

    step: int
    model: StateDict
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    examples: int
    loss_before: float
    seconds: float
    loss_sum: float
    tag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in self.model.items()}
        tensors.update(
            {f"opt/{k}": v.detach().cpu().contiguous() for k, v in self.optimizer_tensors.items()}
        )
        meta = {
            "format": CHECKPOINT_FORMAT,
            "json": json.dumps(
                {
                    "step": self.step,
                    "optimizer_meta": self.optimizer_meta,
                    "examples": self.examples,
                    "loss_before": self.loss_before,
                    "seconds": self.seconds,
                    "loss_sum": self.loss_sum,
                    "tag": self.tag,
                    "extra": self.extra,
                }
            ),
        }
        return save_tensors(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint; ValueError if the bytes are not one."""
        try:
            tensors = load_tensors(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            meta = header.get("__metadata__", {})
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a Barnraise checkpoint")
            info = json.loads(meta["json"])
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"unreadable checkpoint: {exc}") from None
        return cls(
            step=int(info["step"]),
            model={k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
            optimizer_tensors={k[4:]: v for k, v in tensors.items() if k.startswith("opt/")},
            optimizer_meta=info["optimizer_meta"],
            examples=int(info["examples"]),
            loss_before=float(info["loss_before"]),
            seconds=float(info["seconds"]),
            loss_sum=float(info["loss_sum"]),
            tag=str(info.get("tag", "")),
            extra=dict(info.get("extra", {})),
        )


class TrainingInterrupted(Exception):
    """Raised after a STOP decision; carries the checkpoint that was just saved."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__(f"training stopped at step {checkpoint.step}")
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainResult:
    delta: StateDict
    num_examples: int
    steps: int
    loss_before: float
    loss_after: float
    seconds: float
    examples_per_second: float

    def metrics(self) -> dict[str, float]:
        return {
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "seconds": self.seconds,
            "examples_per_second": self.examples_per_second,
            "steps": float(self.steps),
        }


def between_steps(
    hooks: TrainingHooks, progress: TrainProgress, checkpoint: Callable[[], Checkpoint]
) -> None:
    """Let the hooks throttle, pause or ask for a checkpoint after a step; a STOP saves
    one and raises TrainingInterrupted carrying it."""
    decision = hooks.after_step(progress)
    if decision is not StepDecision.CONTINUE:
        saved = checkpoint()
        hooks.save_checkpoint(saved)
        if decision is StepDecision.STOP:
            raise TrainingInterrupted(saved)


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model`` in place; names and shapes must match exactly."""
    model.load_state_dict(dict(state), strict=True)


def apply_delta(base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: base[k] + delta[k] for k in base}


def total_steps_for(hparams: Mapping[str, HParamValue], num_examples: int) -> int:
    """Step budget of one task: ``max_steps`` if set, else ``local_epochs`` passes."""
    if int(hparams["max_steps"]) > 0:
        return int(hparams["max_steps"])
    steps_per_epoch = math.ceil(num_examples / int(hparams["batch_size"]))
    return max(1, math.ceil(float(hparams["local_epochs"]) * steps_per_epoch))


def lr_factor(
    step: int, *, schedule: str, warmup_steps: int, schedule_steps: int, min_lr_ratio: float
) -> float:
    """The share of ``lr`` at schedule step ``step`` (0-based).

    constant: 1. cosine, with W warm-up steps, T schedule steps and m the min_lr_ratio::

        f(s) = (s + 1) / W                                 s < W     (linear warm-up)
        f(s) = m + (1 - m) * (1 + cos(pi * (s - W) / (T - W))) / 2    W <= s < T
        f(s) = m                                           s >= T    (held after)

    so f reaches 1 at the warm-up's last step and m at step T."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= schedule_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / (schedule_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduled_lr(hparams: Mapping[str, HParamValue], step: int, total_steps: int) -> float:
    """The learning rate of a task's local step ``step`` (0-based) of ``total_steps``:
    ``lr`` x f(``schedule_offset`` + step) on a schedule of ``schedule_steps`` inner steps
    across versions, or, with ``schedule_steps`` 0, f(step) on the task's own steps (each
    task runs the whole schedule; the offset does not apply). Schedule hyperparameters that
    are absent read as their defaults (constant)."""
    lr = float(hparams["lr"])
    schedule = str(hparams.get("lr_schedule", "constant"))
    if schedule == "constant":
        return lr
    horizon = int(hparams.get("schedule_steps", 0) or 0)
    position = step
    if horizon > 0:
        position += int(hparams.get("schedule_offset", 0) or 0)
    else:
        horizon = total_steps
    return lr * lr_factor(
        position,
        schedule=schedule,
        warmup_steps=int(hparams.get("warmup_steps", 0) or 0),
        schedule_steps=horizon,
        min_lr_ratio=float(hparams.get("min_lr_ratio", 0.1)),
    )


def schedule_offset(
    hparams: Mapping[str, Any], base_version: int, task_steps: int | None
) -> int | None:
    """The ``schedule_offset`` of a task on ``base_version`` whose full size is
    ``task_steps`` inner steps: the global inner step at which its base model stands,
    ``base_version x task_steps`` (each version is one outer step of a full task's inner
    steps, in sync rounds and async buffers alike), held at ``schedule_steps`` (past it the
    rate is the same). None when the task needs none: a constant rate, a schedule each task
    runs alone (``schedule_steps`` 0), or a step count that is not known."""
    if str(hparams.get("lr_schedule", "constant")) == "constant":
        return None
    horizon = int(hparams.get("schedule_steps", 0) or 0)
    if horizon <= 0 or task_steps is None:
        return None
    return min(max(0, base_version) * task_steps, horizon)


def train_locally(
    recipe: Recipe,
    hparams: Mapping[str, HParamValue],
    base_state: Mapping[str, torch.Tensor],
    data: Dataset,
    *,
    hooks: TrainingHooks | None = None,
    resume: Checkpoint | None = None,
    device: str = "cpu",
    max_examples: int | None = None,
    seed: int | None = None,
) -> TrainResult:
    """Train ``recipe``'s model from ``base_state`` on ``data`` and return the delta.

    ``seed`` fixes the batch order (default: the project seed); give each task its own.
    ``max_examples`` caps the example count the result claims (the FedAvg weight).
    """
    n = len(data)
    if n == 0:
        raise ValueError("the local data set is empty; there is nothing to train on")
    batch_size = int(hparams["batch_size"])
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = total_steps_for(hparams, n)
    order_seed = int(hparams["seed"]) if seed is None else int(seed)

    dev = torch.device(device)
    model = recipe.build_model(hparams).to(dev)
    load_state_into(model, base_state)
    base = {k: v.detach().to(dev, torch.float32).clone() for k, v in base_state.items()}
    params = list(model.parameters())
    anchors = [base[name] for name, _ in model.named_parameters()]
    optimizer = build_optimizer(params, hparams)
    features = data.features.to(dev)
    labels = data.labels.to(dev)
    prox_mu = float(hparams["prox_mu"])
    clip = float(hparams["clip_norm"])

    if resume is not None:
        load_state_into(model, resume.model)
        load_optimizer(optimizer, resume)
        step, examples, loss_sum = resume.step, resume.examples, resume.loss_sum
        loss_before, prior_seconds = resume.loss_before, resume.seconds
    else:
        step, examples, loss_sum, prior_seconds = 0, 0, 0.0, 0.0
        loss_before = _sample_loss(recipe, hparams, model, features, labels, order_seed)

    def checkpoint(elapsed: float) -> Checkpoint:
        opt_tensors, opt_meta = optimizer_state(optimizer)
        return Checkpoint(
            step=step,
            model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            optimizer_tensors=opt_tensors,
            optimizer_meta=opt_meta,
            examples=examples,
            loss_before=loss_before,
            seconds=prior_seconds + elapsed,
            loss_sum=loss_sum,
        )

    model.train()
    started = time.perf_counter()
    paused_for = 0.0  # time spent inside hooks (throttle sleeps, pauses) is not training time
    permutation = torch.empty(0, dtype=torch.long)
    current_epoch = -1
    scheduled = str(hparams.get("lr_schedule", "constant")) != "constant"
    while step < total_steps:
        if scheduled:  # from the step index alone, so a resumed run sets the same rates
            step_lr = scheduled_lr(hparams, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != current_epoch:
            permutation = epoch_order(n, order_seed, epoch).to(dev)
            current_epoch = epoch
        batch = permutation[position * batch_size : (position + 1) * batch_size]
        x, y = features[batch], labels[batch]
        optimizer.zero_grad(set_to_none=True)
        loss = recipe.loss(model(x), y)
        objective = loss
        if prox_mu > 0:
            prox = sum(torch.sum((p - a) ** 2) for p, a in zip(params, anchors, strict=True))
            objective = loss + 0.5 * prox_mu * prox
        objective.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        step += 1
        examples += len(batch)
        loss_value = float(loss.detach())
        loss_sum += loss_value
        if hooks is not None:
            hook_started = time.perf_counter()
            elapsed = hook_started - started - paused_for
            progress = TrainProgress(
                step, total_steps, examples, loss_value, prior_seconds + elapsed
            )
            between_steps(hooks, progress, functools.partial(checkpoint, elapsed))
            paused_for += time.perf_counter() - hook_started

    seconds = prior_seconds + (time.perf_counter() - started - paused_for)
    loss_after = _sample_loss(recipe, hparams, model, features, labels, order_seed)
    delta = {
        k: (v.detach().to(torch.float32) - base[k]).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    claimed = n if max_examples is None else min(n, max_examples)
    return TrainResult(
        delta=delta,
        num_examples=claimed,
        steps=step,
        loss_before=loss_before,
        loss_after=loss_after,
        seconds=seconds,
        examples_per_second=examples / seconds if seconds > 0 else 0.0,
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The batch order of one epoch: a permutation from (seed, epoch) alone."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=generator)


@torch.no_grad()
def _sample_loss(
    recipe: Recipe,
    hparams: Mapping[str, HParamValue],
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
) -> float:
    """Mean loss on a fixed sample of local examples (``Recipe.local_eval_size``)."""
    limit, batch = recipe.local_eval_size(hparams)
    was_training = model.training
    model.eval()
    n = labels.shape[0]
    if n > limit:
        idx = epoch_order(n, seed, -1)[:limit].to(features.device)
        features, labels = features[idx], labels[idx]
    n = labels.shape[0]
    if n <= batch:
        value = float(recipe.loss(model(features), labels))
    else:  # example-weighted mean over batches
        total = sum(
            float(recipe.loss(model(features[s : s + batch]), labels[s : s + batch]))
            * len(labels[s : s + batch])
            for s in range(0, n, batch)
        )
        value = total / n
    model.train(was_training)
    return value


def build_optimizer(
    params: list[nn.Parameter], hparams: Mapping[str, HParamValue]
) -> torch.optim.Optimizer:
    """The local optimizer ``hparams`` name (``federated.privacy.dp_sgd`` wraps the same)."""
    lr, wd = float(hparams["lr"]), float(hparams["weight_decay"])
    if hparams["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=float(hparams["momentum"]), weight_decay=wd)


def optimizer_state(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON so it round-trips without pickle."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Restore the state ``optimizer_state`` split into a checkpoint."""
    entries: dict[int, dict[str, Any]] = {}
    for name, tensor in checkpoint.optimizer_tensors.items():
        index, key = name.split("/", 1)
        entries.setdefault(int(index), {})[key] = tensor
    for index, values in checkpoint.optimizer_meta.get("scalars", {}).items():
        entries.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict(
        {"state": entries, "param_groups": checkpoint.optimizer_meta["param_groups"]}
    )


__all__ = [
    "Checkpoint",
    "StepDecision",
    "TrainProgress",
    "TrainResult",
    "TrainingHooks",
    "TrainingInterrupted",
    "apply_delta",
    "between_steps",
    "build_optimizer",
    "epoch_order",
    "load_optimizer",
    "load_state_into",
    "lr_factor",
    "optimizer_state",
    "schedule_offset",
    "scheduled_lr",
    "total_steps_for",
    "train_locally",
]
