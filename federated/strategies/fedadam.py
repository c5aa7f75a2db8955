"""FedAdam (Reddi et al. 2021): Adam's second moment on the server."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from federated.strategies import _checks
from federated.strategies.aggregate import adam_second_moment_
from federated.strategies.fedopt import (
    DEFAULT_BETA1,
    DEFAULT_BETA2,
    DEFAULT_ETA,
    DEFAULT_TAU,
    FedOpt,
)


class FedAdam(FedOpt):
    """``v <- beta2 * v + (1 - beta2) * d^2``; see ``FedOpt`` for the rest of the step."""

    name: ClassVar[str] = "fedadam"

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
        adam_second_moment_(v, delta, beta2=self.beta2)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta2": self.beta2}
