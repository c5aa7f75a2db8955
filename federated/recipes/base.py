"""The recipe contract: everything a project can ask a contributor to train, named and bounded.

A project names a recipe and sets hyperparameters inside the bounds declared here; a
server can never make a contributor run code it sent.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from federated.errors import RecipeError
from federated.tensors import StateDict, TensorSpec, spec_of

HParamValue = int | float | str | bool

EVAL_EXAMPLES = 512
"""Loss before/after a local task is measured on at most this many local examples, so it
costs one forward pass (recipes with large examples lower it: ``Recipe.local_eval_size``)."""


@dataclass(frozen=True)
class HyperParam:
    """One tunable: its type, default and bounds (inclusive) or allowed choices."""

    name: str
    kind: type
    default: HParamValue
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def coerce(self, value: Any) -> HParamValue:
        """Return ``value`` as this parameter's type, or raise RecipeError saying why not."""
        where = f"hyperparameter {self.name!r}"
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    if value.lower() not in {"true", "false", "1", "0"}:
                        raise ValueError(value)
                    coerced: HParamValue = value.lower() in {"true", "1"}
                else:
                    coerced = bool(value)
            elif self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                coerced = int(value)
            elif self.kind is float:
                coerced = float(value)
            else:
                coerced = str(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: {value!r} is not a valid {self.kind.__name__}") from None
        if isinstance(coerced, float) and coerced != coerced:  # NaN
            raise RecipeError(f"{where}: NaN is not allowed")
        if self.choices is not None and coerced not in self.choices:
            raise RecipeError(f"{where}: {coerced!r} is not one of {', '.join(self.choices)}")
        if isinstance(coerced, int | float) and not isinstance(coerced, bool):
            if self.low is not None and coerced < self.low:
                raise RecipeError(f"{where}: {coerced} is below the minimum {self.low}")
            if self.high is not None and coerced > self.high:
                raise RecipeError(f"{where}: {coerced} is above the maximum {self.high}")
        return coerced


LR_SCHEDULES = ("constant", "cosine")
MAX_SCHEDULE_STEPS = 10**9
"""Bound of ``warmup_steps``, ``schedule_steps`` and ``schedule_offset``."""

# Training hyperparameters every recipe shares; recipes add their own in ``extra_hparams``.
COMMON_HPARAMS: tuple[HyperParam, ...] = (
    HyperParam("optimizer", str, "sgd", "local optimizer", choices=("sgd", "adamw")),
    HyperParam("lr", float, 0.05, "local learning rate", low=1e-6, high=10.0),
    HyperParam("momentum", float, 0.0, "SGD momentum", low=0.0, high=0.999),
    HyperParam("weight_decay", float, 0.0, "weight decay", low=0.0, high=1.0),
    HyperParam("batch_size", int, 32, "examples per step", low=1, high=4096),
    HyperParam(
        "local_epochs", float, 1.0, "passes over the local shard per task", low=0.0, high=100.0
    ),
    HyperParam(
        "max_steps", int, 0, "step budget per task (0: use local_epochs)", low=0, high=1_000_000
    ),
    HyperParam("prox_mu", float, 0.0, "FedProx proximal term μ (0: off)", low=0.0, high=100.0),
    HyperParam("clip_norm", float, 0.0, "gradient clipping norm (0: off)", low=0.0, high=1e6),
    HyperParam("partition", str, "iid", "how the data is split: iid, dirichlet:ALPHA or shard"),
    HyperParam(
        "num_shards", int, 10, "how many shards the data is split into", low=1, high=100_000
    ),
    HyperParam(
        "seed", int, 0, "seed of the initial model and of the partition", low=0, high=2**31 - 1
    ),
    # The learning-rate schedule (``federated.training.lr_factor``); constant: none of the
    # four after it has any effect.
    HyperParam(
        "lr_schedule",
        str,
        "constant",
        "learning-rate schedule: constant, or cosine (linear warm-up, then cosine decay)",
        choices=LR_SCHEDULES,
    ),
    HyperParam(
        "warmup_steps", int, 0, "warm-up steps of the schedule", low=0, high=MAX_SCHEDULE_STEPS
    ),
    HyperParam(
        "schedule_steps",
        int,
        0,
        "inner steps of the whole schedule across versions (0: each task runs it alone)",
        low=0,
        high=MAX_SCHEDULE_STEPS,
    ),
    HyperParam(
        "min_lr_ratio", float, 0.1, "the schedule's final lr, as a share of lr", low=0.0, high=1.0
    ),
    HyperParam(
        "schedule_offset",
        int,
        0,
        "the schedule's step at this task's first step (set per task by the coordinator)",
        low=0,
        high=MAX_SCHEDULE_STEPS,
    ),
)


@dataclass(frozen=True)
class Dataset:
    """Features and labels as tensors: float32 features and int64 class labels [N] for the
    classifiers; int64 token windows [N, T] and their next tokens [N, T] for language models."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Recipe(ABC):
    """A named, versioned training job: model, data, loss, metrics and cost."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    description: ClassVar[str]
    data_mode: ClassVar[Literal["builtin", "local"]] = "builtin"
    extra_hparams: ClassVar[tuple[HyperParam, ...]] = ()
    default_overrides: ClassVar[dict[str, HParamValue]] = {}
    """Recipe-specific defaults for common hyperparameters (tuned so the recipe trains well)."""

    # --- hyperparameters -------------------------------------------------------------------
    @classmethod
    def hyperparams(cls) -> dict[str, HyperParam]:
        merged = {p.name: p for p in COMMON_HPARAMS}
        merged.update({p.name: p for p in cls.extra_hparams})
        for name, value in cls.default_overrides.items():
            merged[name] = dataclasses.replace(merged[name], default=value)
        return merged

    @classmethod
    def resolve_hparams(cls, overrides: Mapping[str, Any] | None = None) -> dict[str, HParamValue]:
        """Defaults overlaid with ``overrides``, each validated; unknown names are an error."""
        declared = cls.hyperparams()
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise RecipeError(
                f"recipe {cls.name!r} has no hyperparameter {unknown[0]!r}; "
                f"known: {', '.join(sorted(declared))}"
            )
        resolved = {name: p.default for name, p in declared.items()}
        for name, value in overrides.items():
            resolved[name] = declared[name].coerce(value)
        from federated.data import parse_partition  # local import: data imports recipes.base

        try:
            parse_partition(str(resolved["partition"]))
        except ValueError as exc:
            raise RecipeError(f"hyperparameter 'partition': {exc}") from None
        cls._check_schedule(resolved)
        return resolved

    @classmethod
    def _check_schedule(cls, resolved: Mapping[str, HParamValue]) -> None:
        """A schedule across versions (``schedule_steps`` > 0) counts inner steps: its
        warm-up fits in it, and every task's step count is known to the coordinator, which
        places each task on it (``schedule_offset``): local data sets differ in size, so a
        local-data recipe's tasks need ``max_steps``."""
        if resolved["lr_schedule"] == "constant" or int(resolved["schedule_steps"]) == 0:
            return
        if int(resolved["warmup_steps"]) > int(resolved["schedule_steps"]):
            raise RecipeError(
                f"hyperparameter 'warmup_steps': {resolved['warmup_steps']} is more than "
                f"schedule_steps ({resolved['schedule_steps']})"
            )
        if cls.data_mode == "local" and int(resolved["max_steps"]) == 0:
            raise RecipeError(
                "hyperparameter 'max_steps': a learning-rate schedule across versions "
                "(schedule_steps > 0) on local data needs a step count per task (max_steps > 0)"
            )

    # --- model -----------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, hparams: Mapping[str, HParamValue]) -> nn.Module:
        """A freshly constructed model (weights not yet meaningful)."""

    def initial_state(self, hparams: Mapping[str, HParamValue]) -> StateDict:
        """The seeded initial global model: same hparams, same bytes, on every machine."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(hparams["seed"]))
            model = self.build_model(hparams)
        return {
            k: v.detach().to(torch.float32).contiguous().clone()
            for k, v in model.state_dict().items()
        }

    def tensor_spec(self, hparams: Mapping[str, HParamValue]) -> TensorSpec:
        """Names, shapes and dtypes an update or model for this recipe must have."""
        return spec_of(self.build_model(hparams).state_dict())

    # --- data ------------------------------------------------------------------------------
    @abstractmethod
    def load_shard(
        self,
        hparams: Mapping[str, HParamValue],
        shard_index: int,
        *,
        data_path: str | None = None,
    ) -> Dataset:
        """The training examples of one shard (builtin data) or of the participant's file."""

    @abstractmethod
    def load_test(self, hparams: Mapping[str, HParamValue]) -> Dataset | None:
        """Held-out data the server evaluates on; None for local-data recipes."""

    # --- objective -------------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset, batch_size: int = 1024) -> dict[str, float]:
        """Mean loss and accuracy of ``model`` on ``data``."""
        model.eval()
        total_loss, correct, n = 0.0, 0, 0
        for start in range(0, len(data), batch_size):
            x = data.features[start : start + batch_size]
            y = data.labels[start : start + batch_size]
            out = model(x)
            total_loss += float(self.loss(out, y)) * len(y)
            correct += int((out.argmax(dim=1) == y).sum())
            n += len(y)
        if n == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0.0}
        return {"loss": total_loss / n, "accuracy": correct / n, "examples": float(n)}

    def local_eval_size(self, hparams: Mapping[str, HParamValue]) -> tuple[int, int]:
        """(examples, batch): the loss before and after a local task is measured on at most
        ``examples`` local examples, ``batch`` of them per forward pass."""
        return EVAL_EXAMPLES, EVAL_EXAMPLES

    @abstractmethod
    def flops_per_example(self, hparams: Mapping[str, HParamValue]) -> float:
        """Training FLOPs for one example (forward + backward, about 3x forward)."""
