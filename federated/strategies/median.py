"""Coordinate-wise median (Yin et al. 2018): robust to fewer than half the updates being bad."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from federated.strategies.aggregate import add_scaled_into, collect_updates, coordinate_median
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict


class Median(Strategy):
    """``base + median_i(delta_i)`` per coordinate, unweighted (example counts are what an
    attacker would inflate); updates of weight 0 are left out. Holds every update."""

    name: ClassVar[str] = "median"
    streaming: ClassVar[bool] = False

    def __init__(self) -> None:
        pass

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        kept = collect_updates(base, updates)
        median = coordinate_median(base, [u.delta for u in kept])
        return add_scaled_into(base, median, 1.0)
