"""FedAvg (McMahan et al. 2017): the example-weighted mean of the deltas, applied to the base."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from federated.strategies import _checks
from federated.strategies.aggregate import add_scaled_into, weighted_delta_sum
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict

DEFAULT_SERVER_LR = 1.0
"""Plain FedAvg: the next model is the weighted mean of the client models."""


class FedAvg(Strategy):
    """``base + server_lr * sum(w_i * delta_i) / sum(w_i)`` with ``w_i = ClientUpdate.weight``
    (examples capped at the task's ``max_examples``, times the staleness factor).

    Streams: one pass over ``updates`` holding one float32 accumulator, which becomes the
    result, so peak extra memory is one model plus the update being read.
    """

    name: ClassVar[str] = "fedavg"
    streaming: ClassVar[bool] = True

    def __init__(self, *, server_lr: float = DEFAULT_SERVER_LR) -> None:
        self.server_lr = _checks.number("server_lr", server_lr, low=0.0, low_open=True)

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        total_delta, total_weight, _ = weighted_delta_sum(base, updates)
        return add_scaled_into(base, total_delta, self.server_lr / total_weight)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "server_lr": self.server_lr}
