"""NormBound: clipping, and wrapping another strategy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import FAST, constant_state, flat, random_state, seeds, update

from federated.strategies import FedAdam, FedAvg, Median, NormBound
from federated.strategies.aggregate import clip_delta
from federated.tensors import l2_norm


@FAST
@given(seed=seeds, scale=st.floats(0.01, 1000.0), bound=st.floats(0.1, 100.0))
def test_clip_delta_bounds_the_norm_and_keeps_the_direction(
    seed: int, scale: float, bound: float
) -> None:
    delta = random_state(torch.Generator().manual_seed(seed), scale=scale)
    clipped = clip_delta(delta, bound)
    norm = l2_norm(delta)
    assert l2_norm(clipped) == pytest.approx(min(norm, bound), rel=1e-5)
    if norm <= bound:
        assert clipped is delta
    else:
        cosine = float(torch.dot(flat(clipped), flat(delta))) / (l2_norm(clipped) * norm)
        assert cosine == pytest.approx(1.0, abs=1e-5)


def test_norm_bound_clips_before_the_inner_strategy() -> None:
    base = constant_state(0.0)
    big = constant_state(10.0)  # norm 10 * sqrt(16) = 40
    small = constant_state(0.01)  # norm 0.04, under the bound
    wrapped = NormBound(FedAvg(), max_norm=1.0)
    result = wrapped.aggregate(base, [update(big, 1), update(small, 1)])
    expected = (10.0 / 40.0 + 0.01) / 2
    assert torch.allclose(result["layer.bias"], torch.full((4,), expected))
    unwrapped = FedAvg().aggregate(base, [update(big, 1), update(small, 1)])
    assert unwrapped["layer.bias"][0] > 5.0


def test_norm_bound_is_a_wrapper() -> None:
    assert NormBound(FedAvg(), max_norm=1.0).streaming is True
    assert NormBound(Median(), max_norm=1.0).streaming is False
    inner = FedAdam()
    wrapped = NormBound(inner, max_norm=2.0)
    wrapped.aggregate(constant_state(0.0), [update(constant_state(1.0))])
    assert inner.step == 1
    assert wrapped.state_tensors().keys() == inner.state_tensors().keys()
    assert wrapped.describe() == {**inner.describe(), "norm_bound": 2.0}
