"""FedAvg: weighted means, the example cap, staleness weights, streaming."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import FAST, SHAPES, constant_state, random_state, seeds, update

from federated.strategies import FedAdam, FedAvg, NormBound, staleness_factor
from federated.tensors import ClientUpdate


@FAST
@given(seed=seeds, count=st.integers(1, 8), examples=st.lists(st.integers(1, 10_000), min_size=8))
def test_fedavg_of_identical_updates_is_that_update(
    seed: int, count: int, examples: list[int]
) -> None:
    gen = torch.Generator().manual_seed(seed)
    base, delta = random_state(gen), random_state(gen)
    result = FedAvg().aggregate(base, [update(delta, examples[i]) for i in range(count)])
    for name in SHAPES:
        torch.testing.assert_close(result[name], base[name] + delta[name])


def test_fedavg_respects_weights_and_server_lr() -> None:
    base = constant_state(1.0)
    updates = [update(constant_state(1.0), 1), update(constant_state(4.0), 3)]
    # (1 * 1 + 3 * 4) / 4 = 3.25, times server_lr 0.5, plus base 1.
    result = FedAvg(server_lr=0.5).aggregate(base, updates)
    for name in SHAPES:
        assert torch.allclose(result[name], torch.full(SHAPES[name], 1.0 + 0.5 * 3.25))


def test_fedavg_example_cap_stops_an_inflated_count_from_dominating() -> None:
    base = constant_state(0.0)
    honest = update(constant_state(1.0), 100, max_examples=100)
    inflated = update(constant_state(-1.0), 10**9, max_examples=100)
    result = FedAvg().aggregate(base, [honest, inflated])
    for name in SHAPES:
        assert torch.allclose(result[name], torch.zeros(SHAPES[name]), atol=1e-6)
    uncapped = update(constant_state(-1.0), 10**9)
    assert FedAvg().aggregate(base, [honest, uncapped])["layer.bias"][0] < -0.99


def test_fedavg_weights_by_staleness_factor() -> None:
    base = constant_state(0.0)
    fresh = update(constant_state(1.0), 10, staleness_factor=staleness_factor(0))
    stale = update(constant_state(0.0), 10, staleness_factor=staleness_factor(3))  # 1/2
    result = FedAvg().aggregate(base, [fresh, stale])
    assert torch.allclose(result["layer.bias"], torch.full((4,), 1.0 / 1.5))


def test_fedavg_skips_zero_weight_updates_and_rejects_all_zero() -> None:
    base = constant_state(0.0)
    result = FedAvg().aggregate(
        base, [update(constant_state(2.0), 5), update(constant_state(9.0), 0)]
    )
    assert torch.allclose(result["layer.bias"], torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="weight 0"):
        FedAvg().aggregate(base, [update(constant_state(1.0), 0), update(constant_state(1.0), 0)])


def test_fedavg_streams_without_holding_earlier_updates() -> None:
    """Each update must be collectable once the next one is requested."""
    base = constant_state(0.0)
    alive_when_next_requested: list[bool] = []
    previous: list[weakref.ref[torch.Tensor]] = []

    def stream() -> Iterator[ClientUpdate]:
        for i in range(6):
            gc.collect()
            if previous:
                alive_when_next_requested.append(previous[-1]() is not None)
            delta = constant_state(float(i))
            previous.append(weakref.ref(delta["layer.weight"]))
            yield update(delta)
            del delta

    for strategy in (FedAvg(), FedAdam(), NormBound(FedAvg(), max_norm=1.0)):
        alive_when_next_requested.clear()
        previous.clear()
        strategy.aggregate(base, stream())
        assert alive_when_next_requested == [False] * 5, type(strategy).__name__


def test_fedavg_does_not_modify_base_or_deltas() -> None:
    base = constant_state(1.0)
    delta = constant_state(2.0)
    FedAvg().aggregate(base, [update(delta)])
    assert torch.equal(base["layer.bias"], torch.ones(4))
    assert torch.equal(delta["layer.bias"], torch.full((4,), 2.0))
