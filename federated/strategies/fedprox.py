"""FedProx (Li et al. 2020): FedAvg on the server; the proximal term lives on the client."""

from __future__ import annotations

from typing import Any, ClassVar

from federated.strategies import _checks
from federated.strategies.fedavg import DEFAULT_SERVER_LR, FedAvg

DEFAULT_MU = 0.01
"""Proximal weight: small enough not to slow IID training, enough to help on skewed data."""


class FedProx(FedAvg):
    """Aggregates exactly as FedAvg. ``mu`` is the proximal weight ``mu/2 * ||w - w_base||^2``
    that the client training loop adds to its loss (task hyperparameter ``prox_mu``); the
    coordinator reads it from here (``describe()["mu"]``) when it writes tasks.
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, mu: float = DEFAULT_MU, server_lr: float = DEFAULT_SERVER_LR) -> None:
        super().__init__(server_lr=server_lr)
        self.mu = _checks.number("mu", mu, low=0.0)

    def client_hparams(self) -> dict[str, float]:
        """Hyperparameters the coordinator adds to every task of this project."""
        return {"prox_mu": self.mu}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mu": self.mu, "server_lr": self.server_lr}
