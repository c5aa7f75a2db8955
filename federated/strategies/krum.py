"""Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from federated.strategies import _checks
from federated.strategies.aggregate import (
    add_scaled_into,
    collect_updates,
    multi_krum_select,
    weighted_delta_sum,
)
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict

DEFAULT_NUM_BYZANTINE = 1


class MultiKrum(Strategy):
    """Scores each delta by the summed squared distance to its ``n - f - 2`` nearest others,
    keeps the ``num_selected`` best-scored (``m``; default ``n - f``; 1 is plain Krum) and
    returns ``base +`` their example-weighted mean. Needs ``n >= 2f + 3`` updates of
    positive weight, else ValueError. Holds every update.
    """

    name: ClassVar[str] = "multi-krum"
    streaming: ClassVar[bool] = False

    def __init__(
        self, *, num_byzantine: int = DEFAULT_NUM_BYZANTINE, num_selected: int | None = None
    ) -> None:
        self.num_byzantine = _checks.integer("num_byzantine", num_byzantine, low=0)
        self.num_selected = (
            None if num_selected is None else _checks.integer("num_selected", num_selected, low=1)
        )
        self.last_selected: list[int] = []
        """Indices (in arrival order, weight-0 updates excluded) chosen by the last round."""

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        kept = collect_updates(base, updates)
        n = len(kept)
        selected_count = n - self.num_byzantine if self.num_selected is None else self.num_selected
        selected = multi_krum_select(
            [u.delta for u in kept],
            num_byzantine=self.num_byzantine,
            num_selected=selected_count,
        )
        self.last_selected = selected
        total_delta, total_weight, _ = weighted_delta_sum(base, (kept[i] for i in selected))
        return add_scaled_into(base, total_delta, 1.0 / total_weight)

    def check_round_size(self, updates: int) -> None:
        needed = 2 * self.num_byzantine + 3
        if updates < needed:
            raise ValueError(
                f"multi-krum with num_byzantine = {self.num_byzantine} needs 2f + 3 = {needed} "
                f"updates per aggregation, but a round may aggregate {updates}"
            )
        if self.num_selected is not None and self.num_selected > updates - self.num_byzantine:
            raise ValueError(
                f"multi-krum keeps num_selected = {self.num_selected} updates, more than "
                f"the {updates - self.num_byzantine} it may trust in a round of {updates}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_byzantine": self.num_byzantine,
            "num_selected": self.num_selected,
        }
