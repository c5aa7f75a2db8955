"""The contract every registered strategy keeps."""

from __future__ import annotations

import pytest
import torch
from strategy_helpers import constant_state, update

from federated.strategies import STRATEGIES, build_strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_rejects_no_updates(name: str) -> None:
    with pytest.raises(ValueError, match="no updates"):
        build_strategy(name).aggregate(constant_state(0.0), iter([]))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_rejects_a_delta_that_does_not_match_the_model(name: str) -> None:
    base = constant_state(0.0)
    good = [update(constant_state(1.0)) for _ in range(5)]
    wrong_shape = {**constant_state(1.0), "layer.bias": torch.ones(5)}
    with pytest.raises(ValueError, match=r"layer\.bias"):
        build_strategy(name).aggregate(base, [*good, update(wrong_shape, client_id="c7")])
    missing = {"layer.weight": torch.ones(3, 4)}
    with pytest.raises(ValueError, match="missing tensors"):
        build_strategy(name).aggregate(base, [*good, update(missing)])
