"""Record-level differential privacy for a contributor's local training: DP-SGD with opacus.

``train_dp_sgd`` keeps ``federated.training.train_locally``'s contract (the delta, the hooks
and their checkpoints, the learning-rate schedule, the step budget, the ``max_examples``
claim) and changes every step into one Sampled Gaussian Mechanism (Abadi et al. 2016):

1. **Poisson sampling.** Each local record is in the step's batch independently with
   probability q = ``sample_rate(batch_size, n)``; a batch may be empty (the step is noise).
2. **Per-example clipping** of every record's gradient to norm ``max_grad_norm`` (C), the sum,
   Gaussian noise of standard deviation ``noise_multiplier x C`` on it, and division by the
   *expected* batch size q x n: opacus' ``DPOptimizer``, as opacus does for Poisson batches.
3. The accountant (``federated.privacy.accounting``) charges ``Spend(noise_multiplier, q,
   steps)``: the record-level epsilon of the update the contributor sends.

Per-example gradients come from opacus' ``GradSampleModule``, with the *whole* model handed
to opacus' functorch path (``torch.func.vmap`` over examples) as one layer. Opacus' per-layer
hooks only see a parameter inside its own module, and miss, without a word, gradient that
flows through one used elsewhere: the byte-lm's output projection is its embedding matrix
(``F.linear(x, embed.weight)``), and the hooks dropped that part of its gradient. The whole
model at once is exact for any model without buffers, at about twice a layer-hook's cost.

**Secret randomness.** Sampling and noise are drawn from generators seeded from
(``noise_seed``, step), so a run checkpointed, stopped and resumed produces exactly the delta
of one uninterrupted run. ``noise_seed`` is a secret the contributor draws
(``draw_noise_seed``, os.urandom) and keeps in its checkpoints' ``extra``; the coordinator
never learns it, since whoever knows it can subtract the noise. That is why spot checks by
re-execution (``federated.replication``) are impossible for DP-SGD projects: nobody else can
replay the sampling and the noise. The noise uses opacus' ``secure_mode`` sampling (four
draws per value, against floating-point attacks) from torch's seeded generator, not a
cryptographic one.

**What a DP upload must not carry.** Nothing computed on the private records except the
noised update: ``loss_before`` and ``loss_after`` of the result are NaN (no evaluation on
the private data is made), and the per-step batch loss goes to the hooks only, for the
local chart. (``num_examples``, ``steps`` and ``examples_per_second`` still depend on the
local data set's size, as they do without DP.)

**FedProx.** ``prox_mu`` is supported: the proximal gradient mu x (w - w_base) depends on no
record, so it is added to the noised gradient, outside the clipped data gradient
(post-processing of a private output stays private). Weight decay is likewise applied by the
wrapped optimizer, outside the clip.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from federated.privacy.accounting import Spend
from federated.recipes.base import Dataset, HParamValue, Recipe
from federated.training import (
    Checkpoint,
    TrainingHooks,
    TrainProgress,
    TrainResult,
    between_steps,
    build_optimizer,
    load_optimizer,
    load_state_into,
    optimizer_state,
    scheduled_lr,
    total_steps_for,
)

CHECKPOINT_KEY = "dp_sgd"
"""The key of a DP-SGD checkpoint's ``extra``: the run's noise seed and privacy settings,
which a resumed run must share."""

NOISE_SEED_BYTES = 16
"""A noise seed is 128 secret bits: guessing it must be as hopeless as guessing the noise."""


@dataclass(frozen=True)
class DPTrainResult:
    """A DP-SGD run's result and what it spent: ``Spend(noise_multiplier, q, steps)``."""

    result: TrainResult
    spend: Spend


def draw_noise_seed() -> int:
    """A fresh secret noise seed for one task: keep it with the task, never send it."""
    return int.from_bytes(os.urandom(NOISE_SEED_BYTES), "big")


def sample_rate(batch_size: int, num_examples: int) -> float:
    """q, the probability that a record is in one step's Poisson batch: batch_size / n,
    at most 1, so a step takes ``batch_size`` records on average."""
    if batch_size < 1 or num_examples < 1:
        raise ValueError(
            f"batch_size ({batch_size}) and num_examples ({num_examples}) must be at least 1"
        )
    return min(1.0, batch_size / num_examples)


def check_dp_sgd_model(recipe: Recipe, hparams: Mapping[str, HParamValue]) -> list[str]:
    """What stops ``recipe``'s model from training with DP-SGD, each with what to do; empty
    when nothing does. Checked when a project asks for DP-SGD, so a contributor never
    leases a task it cannot run. The model is built on the meta device (no memory)."""
    with torch.device("meta"):
        model = recipe.build_model(hparams)
    model.train()
    where = f"recipe {recipe.name!r}: "
    problems = []
    for name, layer in model.named_modules():  # opacus' validators, each layer named
        validate = ModuleValidator.VALIDATORS.get(type(layer))
        if validate is None or not any(p.requires_grad for p in layer.parameters(recurse=False)):
            continue
        for error in validate(layer):
            reason = str(error).strip().rstrip(".")
            problems.append(
                where + f"layer {name!r} ({type(layer).__name__}): {reason}. Choose a model "
                "without this layer for a DP-SGD project"
            )
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        problems.append(
            where + f"the model keeps buffers ({', '.join(buffers[:3])}), state that mixes "
            "examples or that per-example gradients cannot follow; DP-SGD needs a model "
            "whose only state is its parameters"
        )
    dropout = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
    ]
    if dropout:
        problems.append(
            where + f"dropout ({', '.join(dropout[:3])}) draws random numbers per example, "
            "which per-example gradients of the whole model (torch.func.vmap) refuse; set "
            "its probability to 0 for a DP-SGD project"
        )
    return problems


def train_dp_sgd(
    recipe: Recipe,
    hparams: Mapping[str, HParamValue],
    base_state: Mapping[str, torch.Tensor],
    data: Dataset,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    noise_seed: int,
    hooks: TrainingHooks | None = None,
    resume: Checkpoint | None = None,
    device: str = "cpu",
    max_examples: int | None = None,
) -> DPTrainResult:
    """Train ``recipe``'s model from ``base_state`` on ``data`` with DP-SGD; return the delta
    and the spend. ``noise_multiplier`` 0 adds no noise (an infinite epsilon: for tests).

    ``resume`` must be a checkpoint of a DP-SGD run with the same ``noise_seed`` and
    settings (ValueError otherwise). The result's ``loss_before`` and ``loss_after`` are
    NaN: a DP upload must not send losses computed on the private records.
    """
    n = len(data)
    if n == 0:
        raise ValueError("the local data set is empty; there is nothing to train on")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, not {noise_multiplier}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be a finite number > 0, not {max_grad_norm}")
    if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
        raise ValueError("noise_seed must be a whole number >= 0 (draw one: draw_noise_seed())")
    batch_size = int(hparams["batch_size"])
    q = sample_rate(batch_size, n)
    total_steps = total_steps_for(hparams, n)
    settings: dict[str, Any] = {
        "noise_seed": noise_seed,
        "noise_multiplier": float(noise_multiplier),
        "max_grad_norm": float(max_grad_norm),
        "sample_rate": q,
    }

    dev = torch.device(device)
    model = recipe.build_model(hparams).to(dev)
    load_state_into(model, base_state)
    base = {k: v.detach().to(dev, torch.float32).clone() for k, v in base_state.items()}
    params = list(model.parameters())
    anchors = [base[name] for name, _ in model.named_parameters()]
    per_example = GradSampleModule(_WholeModel(model), loss_reduction="mean")
    inner = build_optimizer(params, hparams)
    optimizer = DPOptimizer(
        inner,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        expected_batch_size=min(batch_size, n),  # q x n, exactly
        loss_reduction="mean",
        secure_mode=True,
    )
    features, labels = data.features.to(dev), data.labels.to(dev)
    prox_mu = float(hparams["prox_mu"])
    # hparams["clip_norm"] (one clip of the whole batch gradient) does not apply: every
    # example's gradient is already clipped to max_grad_norm, and a clip after the noise
    # would mostly clip noise, changing the step size by chance.

    if resume is not None:
        if resume.extra.get(CHECKPOINT_KEY) != settings:
            raise ValueError(
                "the checkpoint is not one of this DP-SGD run (another noise seed or privacy "
                "setting, or no DP-SGD at all); start the task afresh"
            )
        load_state_into(model, resume.model)
        load_optimizer(inner, resume)
        step, examples, loss_sum, prior_seconds = (
            resume.step,
            resume.examples,
            resume.loss_sum,
            resume.seconds,
        )
    else:
        step, examples, loss_sum, prior_seconds = 0, 0, 0.0, 0.0

    def checkpoint(elapsed: float) -> Checkpoint:
        opt_tensors, opt_meta = optimizer_state(inner)
        return Checkpoint(
            step=step,
            model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            optimizer_tensors=opt_tensors,
            optimizer_meta=opt_meta,
            examples=examples,
            loss_before=math.nan,
            seconds=prior_seconds + elapsed,
            loss_sum=loss_sum,
            extra={CHECKPOINT_KEY: dict(settings)},
        )

    per_example.train()
    started = time.perf_counter()
    paused_for = 0.0  # time spent inside hooks (throttle sleeps, pauses) is not training time
    scheduled = str(hparams.get("lr_schedule", "constant")) != "constant"
    while step < total_steps:
        if scheduled:  # from the step index alone, so a resumed run sets the same rates
            step_lr = scheduled_lr(hparams, step, total_steps)
            for group in inner.param_groups:
                group["lr"] = step_lr
        batch = poisson_batch(n, q, _stream_seed(noise_seed, step, "sample")).to(dev)
        optimizer.zero_grad(set_to_none=True)
        per_example.zero_grad(set_to_none=True)
        loss_value = _per_example_gradients(
            recipe, per_example, params, features[batch], labels[batch]
        )
        optimizer.generator = torch.Generator(dev).manual_seed(
            _stream_seed(noise_seed, step, "noise")
        )
        optimizer.pre_step()  # clip, sum, noise, divide by q x n: p.grad is now private
        if prox_mu > 0:
            _add_proximal_gradient(params, anchors, prox_mu)
        inner.step()
        step += 1
        examples += len(batch)
        if not math.isnan(loss_value):
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
    delta = {
        k: (v.detach().to(torch.float32) - base[k]).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    claimed = n if max_examples is None else min(n, max_examples)
    result = TrainResult(
        delta=delta,
        num_examples=claimed,
        steps=step,
        loss_before=math.nan,
        loss_after=math.nan,
        seconds=seconds,
        examples_per_second=examples / seconds if seconds > 0 else 0.0,
    )
    return DPTrainResult(result=result, spend=Spend(float(noise_multiplier), q, step))


def poisson_batch(n: int, q: float, seed: int) -> torch.Tensor:
    """The indices of one Poisson batch: each of ``n`` records independently with
    probability ``q``, from a generator seeded with ``seed`` (drawn on the CPU, so the same
    on every device)."""
    generator = torch.Generator().manual_seed(seed)
    taken = torch.rand(n, generator=generator) < q
    return taken.nonzero().flatten()


class _WholeModel(nn.Module):
    """``model`` as a single layer for opacus: a type opacus has no grad sampler for, with a
    parameter of its own (empty, in no optimizer), so ``GradSampleModule`` hands the whole
    model to its functorch path instead of hooking each layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.marker = nn.Parameter(torch.zeros(0, device=next(model.parameters()).device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@torch.no_grad()
def _add_proximal_gradient(
    params: list[nn.Parameter], anchors: list[torch.Tensor], prox_mu: float
) -> None:
    """FedProx's mu x (w - w_base) on top of the noised gradient: it reads no record."""
    for p, anchor in zip(params, anchors, strict=True):
        if p.grad is not None:
            p.grad.add_(p - anchor, alpha=prox_mu)


def _per_example_gradients(
    recipe: Recipe,
    per_example: GradSampleModule,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """Fill each parameter's ``grad_sample`` for the batch (x, y); return the batch's mean
    loss (NaN for an empty batch, which has no loss and no per-example gradients: opacus'
    optimizer then adds the noise alone, as for an empty batch of its own data loader)."""
    if len(y) == 0:
        for p in params:  # opacus' per-example gradient attribute, with no example in it
            p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]
        return math.nan
    with _quiet_per_example():
        loss = recipe.loss(per_example(x), y)
        loss.backward()
    return float(loss.detach())


@contextmanager
def _quiet_per_example() -> Iterator[None]:
    """Silence three warnings that per-example gradients of the whole model set off, each
    understood and harmless; nothing else is hidden."""
    with warnings.catch_warnings():
        # torch: the whole model's backward hook fires on its output gradient because its
        # input (the data) needs no gradient; opacus only needs the output's.
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing when gradients are computed"
        )
        # opacus' functorch path reads integer inputs (byte-lm tokens) as mixed precision
        # and asks for autocast to an integer type, which torch refuses and turns off.
        warnings.filterwarnings(
            "ignore", message=r"In \w+ autocast, but the target dtype is not supported"
        )
        # torch.func.vmap has no batched rule for some kernels (CPU flash attention) and
        # loops over examples instead: slower, the same numbers.
        warnings.filterwarnings(
            "ignore", message="There is a performance drop because we have not yet implemented"
        )
        yield


def _stream_seed(noise_seed: int, step: int, purpose: str) -> int:
    """A 64-bit seed for one purpose ("sample" or "noise") of one step, from the secret
    ``noise_seed`` alone: a resumed run draws what the uninterrupted one drew."""
    digest = hashlib.blake2b(
        f"barnraise-dp-sgd/{purpose}/{noise_seed}/{step}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


__all__ = [
    "CHECKPOINT_KEY",
    "NOISE_SEED_BYTES",
    "DPTrainResult",
    "check_dp_sgd_model",
    "draw_noise_seed",
    "poisson_batch",
    "sample_rate",
    "train_dp_sgd",
]
