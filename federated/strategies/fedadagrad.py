"""FedAdagrad (Reddi et al. 2021): Adagrad's accumulated second moment on the server."""

from __future__ import annotations

from typing import ClassVar

import torch

from federated.strategies.aggregate import adagrad_second_moment_
from federated.strategies.fedopt import DEFAULT_ETA, DEFAULT_TAU, FedOpt

DEFAULT_ADAGRAD_BETA1 = 0.0
"""No server momentum by default, as in plain Adagrad (the paper allows beta1 > 0)."""


class FedAdagrad(FedOpt):
    """``v <- v + d^2``; see ``FedOpt`` for the rest of the step. Adagrad has no ``beta2``."""

    name: ClassVar[str] = "fedadagrad"

    def __init__(
        self,
        *,
        eta: float = DEFAULT_ETA,
        beta1: float = DEFAULT_ADAGRAD_BETA1,
        tau: float = DEFAULT_TAU,
    ) -> None:
        super().__init__(eta=eta, beta1=beta1, tau=tau)

    def _second_moment_(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        adagrad_second_moment_(v, delta)
