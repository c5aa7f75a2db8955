"""DiLoCo: an outer Nesterov momentum step on the averaged pseudo-gradient.

Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models":
each contributor runs H inner steps (AdamW in the paper) from the current model and sends the
pseudo-gradient; the coordinator averages them and takes one step of an *outer* optimiser,
SGD with Nesterov momentum (the paper's outer lr 0.7, momentum 0.9).

With ``d`` the weighted mean delta (local minus base, pointing downhill, as every strategy
here receives it), per floating tensor::

    m <- mu * m + d
    step = d + mu * m          (Nesterov; plain heavy-ball momentum: step = m)
    x <- x + outer_lr * step

This is exactly ``torch.optim.SGD(lr=outer_lr, momentum=mu, nesterov=True, dampening=0)``
stepping on the gradient ``g = -d`` (the paper's outer gradient, base minus local): PyTorch
keeps ``b <- mu * b + g`` and steps ``x <- x - lr * (g + mu * b)``; with ``g = -d`` its
buffer is ``b = -m`` and its step ``-lr * (-d - mu * m) = +outer_lr * step``. Its first step
sets ``b = g``, which is the same as ``m`` starting at zero. With ``outer_lr = 1`` and
``mu = 0`` the step is ``d``: plain FedAvg.

Asynchronous rounds: an update's weight is its examples times its staleness factor
(``ClientUpdate.weight``, set by the coordinator from ``staleness_factor``), exactly as for
FedAvg; refusing updates that are too stale is the coordinator's ``max_staleness``. A
contributor may start from any version: its delta is relative to its own base, and the
outer state lives only on the coordinator.

Non-floating tensors (integer buffers) get the plain mean delta, as in ``FedOpt``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from federated.strategies import _checks
from federated.strategies.aggregate import weighted_mean_delta
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict

DEFAULT_OUTER_LR = 0.7
"""The DiLoCo paper's outer learning rate (tuned there for language models; tune per task)."""
DEFAULT_OUTER_MOMENTUM = 0.9
"""The DiLoCo paper's outer Nesterov momentum."""

_MOMENTUM_PREFIX = "m/"
_STEP_KEY = "step"


def outer_step_into(
    base: torch.Tensor,
    m: torch.Tensor,
    delta: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
) -> torch.Tensor:
    """Update the momentum ``m`` in place from the pseudo-gradient ``delta`` and return
    ``base + lr * step``, written over ``delta`` (which the caller gives up).

    The same float32 operations, in the same order, as PyTorch's SGD on ``-delta``, so the
    two agree to the last bit up to the sign (negation is exact)."""
    m.mul_(momentum).add_(delta)
    step = delta.add_(m, alpha=momentum) if nesterov else m
    return torch.add(base, step, alpha=lr, out=delta)


class DiLoCo(Strategy):
    """Outer Nesterov momentum SGD on the weighted mean pseudo-gradient (see the module).

    Server state: the momentum per floating tensor and the round count, exposed by
    ``state_tensors()`` as ``m/<name>`` and ``step`` (float32 momentum), so a coordinator
    restarted between rounds continues identically. The momentum is created on the first
    round from the base's shapes. The state changes only after the whole round has been
    read, so a round that raises leaves it as it was.

    Streams: one pass over ``updates`` with one accumulator (which becomes the result), plus
    the momentum: O(model) memory however many updates arrive.
    """

    name: ClassVar[str] = "diloco"
    streaming: ClassVar[bool] = True

    def __init__(
        self,
        *,
        outer_lr: float = DEFAULT_OUTER_LR,
        outer_momentum: float = DEFAULT_OUTER_MOMENTUM,
        nesterov: bool = True,
    ) -> None:
        self.outer_lr = _checks.number("outer_lr", outer_lr, low=0.0, low_open=True)
        self.outer_momentum = _checks.number(
            "outer_momentum", outer_momentum, low=0.0, high=1.0, high_open=True
        )
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be true or false, got {nesterov!r}")
        self.nesterov = nesterov
        self._m: dict[str, torch.Tensor] = {}
        self._step = 0

    @property
    def step(self) -> int:
        """Rounds aggregated so far (continues across a state save and load)."""
        return self._step

    def _check_state_matches(self, base: StateDict) -> None:
        _checks.state_matches_model(self.name, self._m, base)

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        if self._step > 0:
            self._check_state_matches(base)
        mean = weighted_mean_delta(base, updates)  # raises before any state is touched
        if self._step == 0:
            self._m = {
                name: torch.zeros(t.shape, dtype=torch.float32)
                for name, t in base.items()
                if t.dtype.is_floating_point
            }
        result: StateDict = {}
        for name, b in base.items():
            d = mean[name]
            if name not in self._m:
                result[name] = torch.round(b + d).to(b.dtype)
                continue
            d32 = d if d.dtype == torch.float32 else d.float()
            moved = outer_step_into(
                b if b.dtype == torch.float32 else b.float(),
                self._m[name],
                d32,
                lr=self.outer_lr,
                momentum=self.outer_momentum,
                nesterov=self.nesterov,
            )
            result[name] = moved if moved.dtype == b.dtype else moved.to(b.dtype)
        self._step += 1
        return result

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self._step == 0:
            return {}
        tensors = {f"{_MOMENTUM_PREFIX}{name}": t.clone() for name, t in self._m.items()}
        tensors[_STEP_KEY] = torch.tensor(self._step, dtype=torch.int64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore state saved by ``state_tensors()``; an empty dict means a fresh start.
        Raises ValueError (and keeps the current state) if the tensors are not such a state."""
        if not tensors:
            self._m, self._step = {}, 0
            return
        unknown = [k for k in tensors if k != _STEP_KEY and not k.startswith(_MOMENTUM_PREFIX)]
        if unknown or _STEP_KEY not in tensors:
            raise ValueError(
                f"not a {self.name} state: unknown tensors {sorted(unknown)[:3]}"
                + ("" if _STEP_KEY in tensors else f", missing {_STEP_KEY!r}")
            )
        step_tensor = tensors[_STEP_KEY]
        if step_tensor.numel() != 1 or step_tensor.dtype.is_floating_point:
            raise ValueError(f"{self.name} state: {_STEP_KEY!r} must be one integer")
        step = int(step_tensor.item())
        m = {k[len(_MOMENTUM_PREFIX) :]: t for k, t in tensors.items() if k != _STEP_KEY}
        if step < 1 or not m:
            raise ValueError(
                f"{self.name} state is inconsistent: step {step}, momentum for {len(m)} tensors"
            )
        for name, t in m.items():
            if not t.dtype.is_floating_point:
                raise ValueError(f"{self.name} state: momentum of {name!r} is not floating point")
        self._m = {k: t.to(torch.float32, copy=True) for k, t in m.items()}
        self._step = step

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outer_lr": self.outer_lr,
            "outer_momentum": self.outer_momentum,
            "nesterov": self.nesterov,
        }
