"""FedYogi (Reddi et al. 2021): a second moment that grows and shrinks additively."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from federated.strategies import _checks
from federated.strategies.aggregate import yogi_second_moment_
from federated.strategies.fedopt import (
    DEFAULT_BETA1,
    DEFAULT_BETA2,
    DEFAULT_ETA,
    DEFAULT_TAU,
    FedOpt,
)


class FedYogi(FedOpt):
    """``v <- v - (1 - beta2) * d^2 * sign(v - d^2)``: ``v`` moves by at most
    ``(1 - beta2) * d^2`` a round, so the effective learning rate rises more gently than
    Adam's when the pseudo-gradients shrink; see ``FedOpt`` for the rest of the step."""

    name: ClassVar[str] = "fedyogi"

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

    def _second_moment_(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        yogi_second_moment_(v, delta, beta2=self.beta2)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta2": self.beta2}
