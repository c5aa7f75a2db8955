"""FedOpt: an adaptive server optimiser on the averaged pseudo-gradient.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2. Each round the weighted
mean delta ``d`` (the pseudo-gradient, pointing downhill) updates the moments

    m <- beta1 * m + (1 - beta1) * d
    v <- (FedAdam / FedYogi / FedAdagrad rule, see the subclasses)
    x <- x + eta * m / (sqrt(v) + tau)

as in the paper: no bias correction, and ``v`` starts at ``tau**2`` (the paper's
``v_{-1} >= tau^2``). Non-floating tensors (integer buffers) get the plain mean delta.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from federated.strategies import _checks
from federated.strategies.aggregate import (
    adaptive_step_into,
    momentum_update_,
    weighted_mean_delta,
)
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict

DEFAULT_ETA = 1e-2
"""Server learning rate; the paper tunes it per task and 1e-2 is a common middle of its grid."""
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.99
DEFAULT_TAU = 1e-3
"""Adaptivity floor; the paper's experiments use 1e-3."""

_MOMENT_PREFIXES = ("m/", "v/")
_STEP_KEY = "step"


class FedOpt(Strategy):
    """Shared machinery of FedAdam, FedYogi and FedAdagrad.

    Server state: first and second moments per tensor and the round count, exposed by
    ``state_tensors()`` as ``m/<name>``, ``v/<name>`` and ``step``. Moments are created on
    the first round from the base's shapes. The state changes only after the whole round
    has been read, so a round that raises leaves it as it was.
    """

    streaming: ClassVar[bool] = True

    def __init__(self, *, eta: float, beta1: float, tau: float) -> None:
        self.eta = _checks.number("eta", eta, low=0.0, low_open=True)
        self.beta1 = _checks.number("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.tau = _checks.number("tau", tau, low=0.0, low_open=True)
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}
        self._step = 0

    @abstractmethod
    def _second_moment_(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        """Update ``v`` in place from the pseudo-gradient ``delta`` of one tensor."""

    @property
    def step(self) -> int:
        """Rounds aggregated so far (continues across a state save and load)."""
        return self._step

    def _check_state_matches(self, base: StateDict) -> None:
        _checks.state_matches_model(self.name, self._m, base)

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        if self._step > 0:
            self._check_state_matches(base)
        mean = weighted_mean_delta(base, updates)
        if self._step == 0:
            for name, t in base.items():
                if t.dtype.is_floating_point:
                    self._m[name] = torch.zeros(t.shape, dtype=torch.float32)
                    self._v[name] = torch.full(t.shape, self.tau**2, dtype=torch.float32)
        result: StateDict = {}
        for name, b in base.items():
            d = mean[name]
            if name not in self._m:
                result[name] = torch.round(b + d).to(b.dtype)
                continue
            m, v = self._m[name], self._v[name]
            d32 = d if d.dtype == torch.float32 else d.float()
            momentum_update_(m, d32, beta1=self.beta1)
            self._second_moment_(v, d32)
            step = adaptive_step_into(b.float(), m, v, d32, eta=self.eta, tau=self.tau)
            result[name] = step if step.dtype == b.dtype else step.to(b.dtype)
        self._step += 1
        return result

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self._step == 0:
            return {}
        tensors = {f"m/{name}": t.clone() for name, t in self._m.items()}
        tensors.update({f"v/{name}": t.clone() for name, t in self._v.items()})
        tensors[_STEP_KEY] = torch.tensor(self._step, dtype=torch.int64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore state saved by ``state_tensors()``; an empty dict means a fresh start.
        Raises ValueError (and keeps the current state) if the tensors are not such a state."""
        if not tensors:
            self._m, self._v, self._step = {}, {}, 0
            return
        unknown = [k for k in tensors if k != _STEP_KEY and not k.startswith(_MOMENT_PREFIXES)]
        if unknown or _STEP_KEY not in tensors:
            raise ValueError(
                f"not a {self.name} state: unknown tensors {sorted(unknown)[:3]}"
                + ("" if _STEP_KEY in tensors else f", missing {_STEP_KEY!r}")
            )
        step_tensor = tensors[_STEP_KEY]
        if step_tensor.numel() != 1 or step_tensor.dtype.is_floating_point:
            raise ValueError(f"{self.name} state: {_STEP_KEY!r} must be one integer")
        step = int(step_tensor.item())
        m = {k[2:]: t for k, t in tensors.items() if k.startswith("m/")}
        v = {k[2:]: t for k, t in tensors.items() if k.startswith("v/")}
        if step < 1 or m.keys() != v.keys() or not m:
            raise ValueError(
                f"{self.name} state is inconsistent: step {step}, first moments for "
                f"{len(m)} tensors, second moments for {len(v)}"
            )
        for name in m:
            if m[name].shape != v[name].shape:
                raise ValueError(f"{self.name} state: moments of {name!r} differ in shape")
        self._m = {k: t.to(torch.float32, copy=True) for k, t in m.items()}
        self._v = {k: t.to(torch.float32, copy=True) for k, t in v.items()}
        self._step = step

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "eta": self.eta, "beta1": self.beta1, "tau": self.tau}


class FedOptWithBeta2(FedOpt):
    """FedOpt whose second-moment rule has a decay ``beta2`` (FedAdam, FedYogi)."""

    def __init__(
        self,
        *,
        eta: float = DEFAULT_ETA,
        beta1: float = DEFAULT_BETA1,
        beta2: float = DEFAULT_BETA2,
        tau: float = DEFAULT_TAU,
    ) -> None:
        super().__init__(eta=eta, beta1=beta1, tau=tau)
        self.beta2 = _checks.number("beta2", beta2, low=0.0, high=1.0, high_open=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta2": self.beta2}
