"""Median (and the hand examples it shares with the trimmed mean)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategy_helpers import (
    FAST,
    SHAPES,
    assert_within_honest_range,
    constant_state,
    honest_and_outliers,
    random_state,
    seeds,
    update,
)

from federated.strategies import Median, TrimmedMean
from federated.strategies.aggregate import coordinate_median


@FAST
@given(
    seed=seeds,
    total=st.integers(1, 15),
    outlier_share=st.floats(0, 1),
    magnitude=st.sampled_from([1e3, 1e8, 1e30]),
)
def test_median_ignores_fewer_than_half_outliers(
    seed: int, total: int, outlier_share: float, magnitude: float
) -> None:
    outlier_count = min(math.floor(outlier_share * total), (total - 1) // 2)  # k < n / 2
    honest, outliers = honest_and_outliers(seed, total - outlier_count, outlier_count, magnitude)
    base = random_state(torch.Generator().manual_seed(seed + 1))
    result = Median().aggregate(base, [update(d) for d in outliers + honest])
    assert_within_honest_range(result, base, honest)


def test_median_and_trimmed_mean_hand_examples() -> None:
    base = constant_state(0.0)
    values = [1.0, 2.0, 3.0, 100.0]
    updates = [update(constant_state(v)) for v in values]
    assert Median().aggregate(base, updates)["layer.bias"][0] == pytest.approx(2.5)
    assert TrimmedMean(beta=0.25).aggregate(base, updates)["layer.bias"][0] == pytest.approx(2.5)
    assert TrimmedMean(beta=0.0).aggregate(base, updates)["layer.bias"][0] == pytest.approx(26.5)
    odd = [update(constant_state(v)) for v in [5.0, -1.0, 3.0]]
    assert Median().aggregate(base, odd)["layer.bias"][0] == pytest.approx(3.0)


def test_median_matches_numpy_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import federated.strategies.aggregate as aggregate

    monkeypatch.setattr(aggregate, "ROBUST_CHUNK_ELEMENTS", 5)  # split every tensor in blocks
    gen = torch.Generator().manual_seed(3)
    deltas = [random_state(gen) for _ in range(6)]
    result = coordinate_median(constant_state(0.0), deltas)
    for name in SHAPES:
        expected = np.median(np.stack([d[name].numpy() for d in deltas]), axis=0)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-6)
