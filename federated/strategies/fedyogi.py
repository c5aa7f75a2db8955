"""FedYogi (Reddi et al. 2021): a second moment that grows and shrinks additively."""

from __future__ import annotations

from typing import ClassVar

import torch

from federated.strategies.aggregate import yogi_second_moment_
from federated.strategies.fedopt import FedOptWithBeta2


class FedYogi(FedOptWithBeta2):
    """``v <- v - (1 - beta2) * d^2 * sign(v - d^2)``: ``v`` moves by at most
    ``(1 - beta2) * d^2`` a round, so the effective learning rate rises more gently than
    Adam's when the pseudo-gradients shrink; see ``FedOpt`` for the rest of the step."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment_(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        yogi_second_moment_(v, delta, beta2=self.beta2)
