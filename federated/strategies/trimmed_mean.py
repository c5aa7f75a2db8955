"""Coordinate-wise trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from federated.strategies import _checks
from federated.strategies.aggregate import (
    add_scaled_into,
    collect_updates,
    coordinate_trimmed_mean,
)
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict

DEFAULT_BETA = 0.1
"""Trim 10% each side: tolerates one bad update in ten on each side of every coordinate."""


class TrimmedMean(Strategy):
    """``base +`` the per-coordinate mean of the deltas after dropping the
    ``floor(beta * n)`` largest and smallest values; unweighted, weight-0 updates left out.
    ``beta`` in [0, 0.5). Holds every update."""

    name: ClassVar[str] = "trimmed-mean"
    streaming: ClassVar[bool] = False

    def __init__(self, *, beta: float = DEFAULT_BETA) -> None:
        self.beta = _checks.number("beta", beta, low=0.0, high=0.5, high_open=True)

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        kept = collect_updates(base, updates)
        mean = coordinate_trimmed_mean(base, [u.delta for u in kept], beta=self.beta)
        return add_scaled_into(base, mean, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta}
