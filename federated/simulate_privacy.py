"""The simulator's differential-privacy modes, and the fast path that makes 1,000 clients cheap.

``federated.simulate.simulate`` takes ``privacy=`` one of:

- ``RecordLevelDP``: every client trains with DP-SGD (``federated.privacy.dp_sgd``), each
  with its own noise seed; each client's epsilon comes from the accountant over every
  task it ran;
- ``UserLevelDP``: every client clips its whole update to the server's current bound
  (``federated.privacy.clipping.clip_update``) and reports the clipping bit, and the
  server aggregates with ``DPFedAvg`` around the configured strategy.

and ``fast=True``: the round's clients train together, vectorised with ``torch.func``
(``train_vectorised``: the same batches, steps and SGD as ``train_locally``, to float
rounding), and the lossless ``f32`` codec's round trip is skipped (its bytes still counted).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from federated.privacy.accounting import Spend, epsilon_spent
from federated.privacy.user_level import default_count_stddev, user_level_epsilon
from federated.recipes.base import Dataset, HParamValue, Recipe
from federated.strategies import DPFedAvg, Strategy
from federated.tensors import StateDict
from federated.training import epoch_order, load_state_into, total_steps_for, train_locally

VECTORISED_CLIENTS = 512
"""Clients trained in one vectorised block: memory grows with it (a model and a padded
shard per client), the per-step Python overhead shrinks."""

DEFAULT_DELTA = 1e-5
"""The delta of the (epsilon, delta) reported: under 1 / (examples or contributors)."""


@dataclass(frozen=True)
class RecordLevelDP:
    """DP-SGD on every client: per-example gradients clipped to ``max_grad_norm``,
    Gaussian noise of ``noise_multiplier`` x that on each step's sum."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        _positive("max_grad_norm", self.max_grad_norm)
        _positive("delta", self.delta)
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")


@dataclass(frozen=True)
class UserLevelDP:
    """DP-FedAvg at the server: the arguments of ``DPFedAvg`` (``count_stddev`` None with
    adaptive clipping: ``default_count_stddev`` of the round's updates) and the reported
    delta."""

    noise_multiplier: float
    clip_norm: float
    clip_quantile: float = 0.0
    clip_lr: float = 0.2
    count_stddev: float | None = None
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        _positive("delta", self.delta)

    def wrap(self, inner: Strategy, *, per_round: int, seed: int) -> DPFedAvg:
        """The server strategy for rounds of ``per_round`` updates."""
        count_stddev = self.count_stddev
        if self.clip_quantile > 0 and count_stddev is None:
            count_stddev = default_count_stddev(per_round, noise_multiplier=self.noise_multiplier)
        return DPFedAvg(
            inner,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            clip_quantile=self.clip_quantile,
            clip_lr=self.clip_lr,
            count_stddev=count_stddev,
            seed=seed,
        )


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass
class ClientTraining:
    """How the simulator's clients train: plainly (``train_locally``), with DP-SGD
    (``record``), or vectorised across the round (``fast``); it keeps each client's
    privacy spend."""

    recipe: Recipe
    shards: Sequence[Dataset]
    record: RecordLevelDP | None = None
    fast: bool = False
    spends: dict[int, list[Spend]] = field(default_factory=dict)
    tasks: Counter[int] = field(default_factory=Counter)
    _ready: dict[int, StateDict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.record is not None and self.fast:
            raise ValueError("fast=True trains without DP-SGD; drop one of the two")

    def begin_round(
        self,
        hparams: Mapping[str, HParamValue],
        base: StateDict,
        chosen: Sequence[int],
        seeds: Sequence[int],
    ) -> None:
        """Train the whole round at once when ``fast`` (else nothing to do yet)."""
        self._ready = {}
        if self.fast:
            deltas = train_vectorised(
                self.recipe, hparams, base, [self.shards[c] for c in chosen], seeds
            )
            self._ready = dict(zip(chosen, deltas, strict=True))

    def train(
        self, client: int, hparams: Mapping[str, HParamValue], base: StateDict, seed: int
    ) -> tuple[StateDict, int]:
        """(delta, examples claimed) of one client's task."""
        data = self.shards[client]
        self.tasks[client] += 1
        if self.fast:
            return self._ready.pop(client), len(data)
        if self.record is None:
            trained = train_locally(self.recipe, hparams, base, data, seed=seed)
            return trained.delta, trained.num_examples
        from federated.privacy.dp_sgd import train_dp_sgd  # opacus: only a DP-SGD run loads it

        # A simulation derives the noise seed from its own; a contributor draws a secret one.
        private = train_dp_sgd(
            self.recipe,
            hparams,
            base,
            data,
            noise_multiplier=self.record.noise_multiplier,
            max_grad_norm=self.record.max_grad_norm,
            noise_seed=seed,
        )
        self.spends.setdefault(client, []).append(private.spend)
        return private.result.delta, private.result.num_examples

    def record_summary(self) -> dict[str, Any]:
        """Each client's epsilon over every task it ran, and the worst and mean of them."""
        assert self.record is not None
        epsilons = {
            c: float(epsilon_spent(history, self.record.delta))
            for c, history in sorted(self.spends.items())
        }
        values = list(epsilons.values())
        return {
            "level": "record",
            "noise_multiplier": self.record.noise_multiplier,
            "max_grad_norm": self.record.max_grad_norm,
            "delta": self.record.delta,
            "epsilon": max(values, default=0.0),
            "epsilon_mean": sum(values) / len(values) if values else 0.0,
            "epsilon_per_client": {str(c): e for c, e in epsilons.items()},
        }


def user_summary(
    privacy: UserLevelDP, strategy: DPFedAvg, training: ClientTraining, clip_norms: list[float]
) -> dict[str, Any]:
    """The spend of a user-level run: each client is charged a full Gaussian mechanism for
    every version it took part in (``user_level_epsilon``: participation is public, no
    amplification by sampling); the epsilon reported is the most any client spent."""
    versions = max(training.tasks.values(), default=0)
    return {
        "level": "user",
        "noise_multiplier": privacy.noise_multiplier,
        "update_noise_multiplier": strategy.update_noise_multiplier,
        "count_stddev": strategy.count_stddev,
        "delta": privacy.delta,
        "epsilon": user_level_epsilon(
            noise_multiplier=privacy.noise_multiplier, versions=versions, delta=privacy.delta
        ),
        "most_versions": versions,
        "clip_norms": clip_norms,
    }


# --- the fast path ------------------------------------------------------------------------


def why_not_vectorised(recipe: Recipe, hparams: Mapping[str, HParamValue]) -> str | None:
    """Why ``train_vectorised`` cannot train what ``train_locally`` would, or None."""
    if hparams["optimizer"] != "sgd":
        return f"optimizer {hparams['optimizer']!r} (the fast path runs SGD only)"
    for name in ("prox_mu", "clip_norm"):
        if float(hparams[name]) != 0.0:
            return f"{name} = {hparams[name]} (the fast path has no proximal term or clipping)"
    if str(hparams.get("lr_schedule", "constant")) != "constant":
        return "a learning-rate schedule (the fast path uses a constant rate)"
    model = recipe.build_model(hparams)
    if any(True for _ in model.buffers()):
        return f"recipe {recipe.name!r} has buffers (batch norm and the like)"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        return f"recipe {recipe.name!r} uses dropout (random per client)"
    return None


def train_vectorised(
    recipe: Recipe,
    hparams: Mapping[str, HParamValue],
    base: StateDict,
    shards: Sequence[Dataset],
    seeds: Sequence[int],
) -> list[StateDict]:
    """The delta of each shard's task, ``train_locally``'s (same steps, batch order from
    ``seeds``, SGD with momentum and weight decay) up to float rounding, all trained at
    once. Raises ValueError when the hyperparameters need the slow path."""
    reason = why_not_vectorised(recipe, hparams)
    if reason is not None:
        raise ValueError(f"the fast path cannot train {reason}; run without fast=True")
    if len(shards) != len(seeds):
        raise ValueError(f"{len(shards)} shards but {len(seeds)} seeds")
    deltas: list[StateDict] = []
    for start in range(0, len(shards), VECTORISED_CLIENTS):
        stop = start + VECTORISED_CLIENTS
        deltas.extend(_train_block(recipe, hparams, base, shards[start:stop], seeds[start:stop]))
    return deltas


def _batch_plan(
    sizes: Sequence[int], seeds: Sequence[int], hparams: Mapping[str, HParamValue]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [S, K, B], mask [S, K, B]): each client's batches as ``train_locally``
    draws them, padded to the longest task and the full batch."""
    batch = int(hparams["batch_size"])
    steps = [total_steps_for(hparams, n) for n in sizes]
    index = torch.zeros((max(steps), len(sizes), batch), dtype=torch.long)
    mask = torch.zeros((max(steps), len(sizes), batch))
    for k, (n, seed, count) in enumerate(zip(sizes, seeds, steps, strict=True)):
        per_epoch = math.ceil(n / batch)
        for epoch in range(math.ceil(count / per_epoch)):
            order = epoch_order(n, int(seed), epoch)
            for position in range(per_epoch):
                step = epoch * per_epoch + position
                if step >= count:
                    break
                chosen = order[position * batch : (position + 1) * batch]
                index[step, k, : len(chosen)] = chosen
                mask[step, k, : len(chosen)] = 1.0
    return index, mask


def _train_block(
    recipe: Recipe,
    hparams: Mapping[str, HParamValue],
    base: StateDict,
    shards: Sequence[Dataset],
    seeds: Sequence[int],
) -> list[StateDict]:
    model = recipe.build_model(hparams)
    load_state_into(model, base)
    count = len(shards)
    sizes = [len(s) for s in shards]
    longest = max(sizes)
    features = torch.zeros((count, longest, *shards[0].features.shape[1:]))
    labels = torch.zeros((count, longest), dtype=shards[0].labels.dtype)
    for k, shard in enumerate(shards):
        features[k, : len(shard)] = shard.features
        labels[k, : len(shard)] = shard.labels
    index, mask = _batch_plan(sizes, seeds, hparams)
    lr, momentum = float(hparams["lr"]), float(hparams["momentum"])
    decay = float(hparams["weight_decay"])

    def per_example(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return recipe.loss(output.unsqueeze(0), label.unsqueeze(0))

    def batch_loss(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        # The recipe's loss is a mean over the batch: the mean over its real examples.
        losses = vmap(per_example)(functional_call(model, params, (x,)), y)
        return (losses * m).sum() / m.sum().clamp(min=1.0)

    gradients = vmap(grad(batch_loss))
    params = {
        n: base[n].to(torch.float32).expand(count, *p.shape).clone()
        for n, p in model.named_parameters()
    }
    buffers = {n: torch.zeros_like(p) for n, p in params.items()}
    rows = torch.arange(count)[:, None]
    for step in range(index.shape[0]):
        m = mask[step]
        active = (m.sum(dim=1) > 0).to(torch.float32)
        g = gradients(params, features[rows, index[step]], labels[rows, index[step]], m)
        for n, p in params.items():
            shape = (count,) + (1,) * (p.dim() - 1)
            d = g[n] if decay == 0 else g[n].add(p, alpha=decay)
            on = active.view(shape)
            if momentum > 0:
                # torch's SGD: buf <- momentum * buf + d (the first step's buf is d itself)
                buffers[n] = torch.where(on > 0, buffers[n] * momentum + d, buffers[n])
                d = buffers[n]
            p.sub_(d * on, alpha=lr)
    deltas = {n: p - base[n].to(torch.float32) for n, p in params.items()}
    return [{n: deltas[n][k] for n in deltas} for k in range(count)]
