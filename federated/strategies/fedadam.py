"""FedAdam (Reddi et al. 2021): Adam's second moment on the server."""

from __future__ import annotations

from typing import ClassVar

import torch

from federated.strategies.aggregate import adam_second_moment_
from federated.strategies.fedopt import FedOptWithBeta2


class FedAdam(FedOptWithBeta2):
    """``v <- beta2 * v + (1 - beta2) * d^2``; see ``FedOpt`` for the rest of the step."""

    name: ClassVar[str] = "fedadam"

    def _second_moment_(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        adam_second_moment_(v, delta, beta2=self.beta2)
