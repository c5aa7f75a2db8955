"""Multi-Krum: scaled sign-flip attackers are never selected."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import (
    FAST,
    SHAPES,
    constant_state,
    flat,
    mean_state,
    random_state,
    seeds,
    update,
)

from federated.strategies import MultiKrum
from federated.strategies.aggregate import multi_krum_select, pairwise_squared_distances


@FAST
@given(
    seed=seeds,
    num_byzantine=st.integers(0, 4),
    extra_honest=st.integers(0, 4),
    scale=st.floats(2.0, 100.0),
)
def test_multi_krum_excludes_scaled_sign_flip_attackers(
    seed: int, num_byzantine: int, extra_honest: int, scale: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    honest_count = num_byzantine + 3 + extra_honest  # n = honest + f >= 2f + 3
    direction = random_state(gen)
    honest = [
        {n: direction[n] + 0.1 * torch.randn(SHAPES[n], generator=gen) for n in SHAPES}
        for _ in range(honest_count)
    ]
    honest_mean = mean_state(honest)
    attackers = [{n: -scale * honest_mean[n] for n in SHAPES} for _ in range(num_byzantine)]
    deltas = attackers + honest  # attackers first, so index order cannot hide them
    selected = multi_krum_select(deltas, num_byzantine=num_byzantine, num_selected=honest_count)
    assert sorted(selected) == list(range(num_byzantine, len(deltas)))

    strategy = MultiKrum(num_byzantine=num_byzantine)
    base = constant_state(0.0)
    result = strategy.aggregate(base, [update(d) for d in deltas])
    assert set(strategy.last_selected).isdisjoint(range(num_byzantine))
    assert float(torch.dot(flat(result), flat(honest_mean))) > 0


def test_multi_krum_needs_2f_plus_3_updates() -> None:
    base = constant_state(0.0)
    with pytest.raises(ValueError, match="at least 7 updates"):
        MultiKrum(num_byzantine=2).aggregate(base, [update(constant_state(1.0))] * 6)
    with pytest.raises(ValueError, match="num_selected"):
        MultiKrum(num_byzantine=0, num_selected=4).aggregate(
            base, [update(constant_state(1.0))] * 3
        )


def test_pairwise_distances_are_exact_for_large_offsets() -> None:
    offset = {n: torch.full(s, 1e3) for n, s in SHAPES.items()}
    a = {n: offset[n] + 0.5 for n in SHAPES}
    distances = pairwise_squared_distances([offset, a])
    assert float(distances[0, 1]) == pytest.approx(16 * 0.25, rel=1e-9)
