"""A task under a project's differential-privacy terms, in the training child (issue 14).

- **dp-sgd**: the task trains with DP-SGD (``federated.privacy.dp_sgd``) on a noise seed
  drawn here from the operating system and kept only in this task's checkpoint, so the
  coordinator never learns it. Before a step is taken the volunteer's own accountant (the
  spends the engine kept, ``app.contributor.privacy``) must show that the whole task fits
  the epsilon it consented to; otherwise the task is refused with
  ``privacy_budget_spent`` and nothing of its data is touched.
- **dp-fedavg**: the task trains as usual and its update is clipped to the task's
  ``update_clip_norm`` before it is encoded; whether it was within the bound is reported
  (adaptive clipping needs it).
- Either way no loss computed on the volunteer's data is reported: it is not protected.

Runs in the child only (it imports torch and Opacus).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.contributor.trainer.messages import TrainerError, TrainJob
from federated.recipes.base import Dataset, Recipe
from federated.tensors import StateDict
from federated.training import (
    Checkpoint,
    TrainingHooks,
    TrainResult,
    total_steps_for,
    train_locally,
)

PRIVATE_METRICS_DROPPED = ("loss_before", "loss_after")
"""Metrics a private task does not report: they are computed on the volunteer's data."""


@dataclass
class PrivateOutcome:
    """What a private task adds to the plain one: metrics to report and, for dp-sgd, the
    spend to add to the volunteer's own accountant."""

    result: TrainResult
    metrics: dict[str, float] = field(default_factory=dict)
    spend: dict[str, Any] | None = None


def noise_seed_for(resume: Checkpoint | None) -> int:
    """The task's secret noise seed: the one its checkpoint kept (``train_dp_sgd`` keeps
    it there), else a fresh one."""
    from federated.privacy.dp_sgd import CHECKPOINT_KEY, draw_noise_seed

    kept = resume.extra.get(CHECKPOINT_KEY) if resume is not None else None
    if isinstance(kept, dict) and isinstance(kept.get("noise_seed"), int):
        return int(kept["noise_seed"])
    return draw_noise_seed()


def train_task(
    job: TrainJob,
    recipe: Recipe,
    hparams: Mapping[str, Any],
    base: StateDict,
    data: Dataset,
    *,
    hooks: TrainingHooks,
    resume: Checkpoint | None,
    device: str,
) -> PrivateOutcome:
    """Train ``job`` under its privacy terms (``job.privacy``; plain training without,
    which never imports Opacus: the desktop bundle cannot)."""
    terms = job.privacy or {}
    mechanism = terms.get("mechanism")
    if mechanism == "dp-sgd":
        return _dp_sgd(job, recipe, hparams, base, data, terms, hooks, resume, device)
    result = train_locally(
        recipe,
        hparams,
        base,
        data,
        hooks=hooks,
        resume=resume,
        device=device,
        max_examples=job.max_examples,
        seed=job.seed,
    )
    if mechanism != "dp-fedavg":
        return PrivateOutcome(result, result.metrics())
    from federated.privacy.clipping import clip_update

    if job.update_clip_norm is None:
        raise TrainerError(
            "the task carries user-level privacy terms but no update_clip_norm; refusing it",
            code="privacy_terms_changed",
        )
    delta, within = clip_update(result.delta, float(job.update_clip_norm))
    clipped = TrainResult(
        delta=delta,
        num_examples=result.num_examples,
        steps=result.steps,
        loss_before=result.loss_before,
        loss_after=result.loss_after,
        seconds=result.seconds,
        examples_per_second=result.examples_per_second,
    )
    return PrivateOutcome(clipped, {**_public(result), "dp_within_clip": 1.0 if within else 0.0})


def _dp_sgd(
    job: TrainJob,
    recipe: Recipe,
    hparams: Mapping[str, Any],
    base: StateDict,
    data: Dataset,
    terms: Mapping[str, Any],
    hooks: TrainingHooks,
    resume: Checkpoint | None,
    device: str,
) -> PrivateOutcome:
    noise = float(terms["noise_multiplier"])
    epsilon, delta = float(terms["epsilon"]), float(terms["delta"])
    steps = total_steps_for(hparams, len(data))
    try:  # Opacus' accountant needs scipy, which the desktop bundle leaves out (100+ MB)
        from federated.privacy.accounting import Spend, epsilon_spent, steps_within_budget
        from federated.privacy.dp_sgd import sample_rate, train_dp_sgd

        noise_seed = noise_seed_for(resume)
        history = [Spend.from_json(s) for s in job.privacy_spends]
        q = sample_rate(int(hparams["batch_size"]), len(data))
        allowed = steps_within_budget(
            history, noise_multiplier=noise, sample_rate=q, epsilon=epsilon, delta=delta
        )
    except ImportError as exc:
        raise TrainerError(
            f"this build of Barnraise cannot train with DP-SGD ({exc}); install it with pip "
            "to contribute to this project",
            code="privacy_unsupported",
        ) from None
    if steps > allowed:
        spent = epsilon_spent(history, delta)
        raise TrainerError(
            f"this task's {steps} steps would take the privacy spent on your data past "
            f"epsilon {epsilon:g} (spent so far: {spent:.3g}, {allowed} steps left): "
            "this computer has done all it may for this project",
            code="privacy_budget_spent",
        )
    trained = train_dp_sgd(
        recipe,
        hparams,
        base,
        data,
        noise_multiplier=noise,
        max_grad_norm=float(terms["clip_norm"]),
        noise_seed=noise_seed,
        hooks=hooks,
        resume=resume,
        device=device,
        max_examples=job.max_examples,
    )
    after = epsilon_spent([*history, trained.spend], delta)
    metrics = {**_public(trained.result), "dp_epsilon": after}
    return PrivateOutcome(trained.result, metrics, trained.spend.to_json())


def _public(result: TrainResult) -> dict[str, float]:
    return {k: v for k, v in result.metrics().items() if k not in PRIVATE_METRICS_DROPPED}
